"""Import Baidu VideoTag's released PaddlePaddle weights into an ONNX bundle that `videotag tag --model` runs.

VideoTag (PaddleVideo `applications/VideoTag`) ships `video_tag_tsn.tar` -> `tsn.pdparams` (TSN ResNet-101 frame
encoder), `video_tag_lstm.tar` -> `attention_lstm.pdparams` (Attention-LSTM over 300 frames) and `label_3396.txt`.
The `.pdparams` files are `fluid.save` pickles of {parameter name: numpy array}; they are read here with a
restricted unpickler (numpy arrays only, no code execution), so Paddle is not needed.

Bundle written to OUT:
    OUT/manifest.json, OUT/model.onnx, OUT/labels.txt   predictor (Attention-LSTM, sigmoid probabilities)
    OUT/backbone/manifest.json, OUT/backbone/model.onnx  TSN ResNet-101 (uint8 RGB crops -> 2048-d features)
with VideoTag's preprocessing preset ("videotag") and segment sampling recorded in the backbone manifest.
"""

from __future__ import annotations

import io
import pickle
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from extractor.backbones.resnet import ResNet, mismatch_report
from predictor.models.attention_lstm import LSTM_IMPLS, AttentionLSTM
from videotag.core.errors import ModelMismatchError
from videotag.core.hashing import sha256_file
from videotag.core.vocab import VIDEOTAG_LABELS, Vocabulary

BACKBONE_NAME = "videotag_tsn_resnet101"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# VideoTag's Attention-LSTM sizes (the class count comes from the output layer).
FEATURE_DIM, EMBEDDING, LSTM_SIZE, FC1, FC2 = 2048, 1024, 512, 8192, 4096
# Paddle >= 2.0 splits arrays over 1 GiB into slices and records how under this key; fluid.save never does.
_BIG_PARAMS_KEY = "UnpackBigParamInfor@@"
_IGNORED_KEYS = ("StructuredToParameterName@@",)


class PaddleWeightsError(ModelMismatchError):
    """A Paddle weights or label file is unreadable, of the wrong kind, or does not fit VideoTag's networks."""


# --------------------------------------------------------------------------------------------- reading


class _ArraysOnly(pickle.Unpickler):
    """Unpickler that resolves only what numpy arrays (and dicts of them) need: a .pdparams file cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("collections", "OrderedDict"),
        ("_codecs", "encode"),  # protocol-2 pickles written by Python 3 store bytes as encode(str, "latin1")
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"it references {module}.{name}, which a parameter file never needs")
        if module.startswith("numpy.core") and hasattr(np, "_core"):  # numpy 2 moved numpy.core -> numpy._core
            module = "numpy._core" + module[len("numpy.core") :]
        return super().find_class(module, name)


def _read_bytes(path: Path, what: str) -> bytes:
    """The .pdparams bytes; a VideoTag .tar is accepted too (its single *.pdparams member is used)."""
    if not path.is_file():
        raise PaddleWeightsError(f"{what}: {path} does not exist")
    if tarfile.is_tarfile(path):
        with tarfile.open(path) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".pdparams")]
            if len(members) != 1:
                names = ", ".join(m.name for m in members) or "none"
                raise PaddleWeightsError(
                    f"{what}: {path} is a tar archive with {len(members)} .pdparams files "
                    f"({names}); extract it and pass the .pdparams file"
                )
            f = tar.extractfile(members[0])
            assert f is not None
            return f.read()
    return path.read_bytes()


def load_pdparams(path: str | Path, what: str = "weights") -> dict[str, np.ndarray]:
    """Read a Paddle `.pdparams` pickle -> {name: float32 array}. Never executes code from the file."""
    path = Path(path)
    data = _read_bytes(path, what)
    obj, errors = None, []
    for encoding in ("ASCII", "latin1"):  # files pickled under Python 2 need latin1 for their byte strings
        try:
            obj = _ArraysOnly(io.BytesIO(data), encoding=encoding).load()
            break
        except UnicodeDecodeError as e:
            errors.append(str(e))
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
            raise PaddleWeightsError(f"{what}: {path} is not a Paddle .pdparams file ({e})") from e
    if obj is None:
        raise PaddleWeightsError(f"{what}: {path} could not be decoded ({'; '.join(errors)})")
    if not isinstance(obj, dict) or not obj:
        raise PaddleWeightsError(f"{what}: {path} holds a {type(obj).__name__}, not a dict of named parameters")
    obj = _join_big_params(obj, path, what)
    out: dict[str, np.ndarray] = {}
    for k, v in obj.items():
        if isinstance(k, bytes):
            k = k.decode("latin1")
        if k in _IGNORED_KEYS:
            continue
        if not isinstance(k, str) or not isinstance(v, np.ndarray) or v.dtype.kind not in "fiu":
            raise PaddleWeightsError(f"{what}: {path}: entry {k!r} is a {type(v).__name__}, not a numeric array")
        out[k] = np.ascontiguousarray(v, dtype=np.float32)
    return out


def _join_big_params(obj: dict, path: Path, what: str) -> dict:
    info = obj.get(_BIG_PARAMS_KEY)
    if info is None:
        return obj
    obj = {k: v for k, v in obj.items() if k != _BIG_PARAMS_KEY}
    for name, spec in info.items():
        try:
            parts = [obj.pop(s).reshape(-1) for s in spec["slices"]]
            obj[name] = np.concatenate(parts).reshape(spec["OriginShape"])
        except (KeyError, ValueError, TypeError) as e:
            raise PaddleWeightsError(f"{what}: {path}: split parameter {name!r} cannot be re-assembled ({e})") from e
    return obj


# --------------------------------------------------------------------------------------------- expected layouts


def tsn_block_names(depth: int = 101) -> list[tuple[str, int]]:
    """(Paddle block name, stage 0..3) in network order: res2a.., res3a.., res4a + res4b1..b22 (101), res5a.."""
    stages = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}[depth]
    out = []
    for stage, count in enumerate(stages):
        for i in range(count):
            if depth == 101 and stage == 2:
                out.append(("res4a" if i == 0 else f"res4b{i}", stage))
            else:
                out.append((f"res{stage + 2}{chr(97 + i)}", stage))
    return out


def _bn(prefix: str, tv: str, channels: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {
        f"{prefix}_scale": (f"{tv}.weight", (channels,)),
        f"{prefix}_offset": (f"{tv}.bias", (channels,)),
        f"{prefix}_mean": (f"{tv}.running_mean", (channels,)),
        f"{prefix}_variance": (f"{tv}.running_var", (channels,)),
    }


def tsn_resnet_layout(depth: int = 101) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Paddle TSN ResNet parameter name -> (torchvision state-dict key, shape). Conv weights OIHW."""
    layout = {"conv1_weights": ("conv1.weight", (64, 3, 7, 7)), **_bn("bn_conv1", "bn1", 64)}
    inplanes, index = 64, [0, 0, 0, 0]
    for name, stage in tsn_block_names(depth):
        planes = 64 * 2**stage
        tv = f"layer{stage + 1}.{index[stage]}"
        index[stage] += 1
        bn = "bn" + name[3:]
        layout[f"{name}_branch2a_weights"] = (f"{tv}.conv1.weight", (planes, inplanes, 1, 1))
        layout.update(_bn(f"{bn}_branch2a", f"{tv}.bn1", planes))
        layout[f"{name}_branch2b_weights"] = (f"{tv}.conv2.weight", (planes, planes, 3, 3))
        layout.update(_bn(f"{bn}_branch2b", f"{tv}.bn2", planes))
        layout[f"{name}_branch2c_weights"] = (f"{tv}.conv3.weight", (4 * planes, planes, 1, 1))
        layout.update(_bn(f"{bn}_branch2c", f"{tv}.bn3", 4 * planes))
        if index[stage] == 1:  # first block of a stage: projection shortcut
            layout[f"{name}_branch1_weights"] = (f"{tv}.downsample.0.weight", (4 * planes, inplanes, 1, 1))
            layout.update(_bn(f"{bn}_branch1", f"{tv}.downsample.1", 4 * planes))
        inplanes = 4 * planes
    return layout


def attention_lstm_layout(num_classes: int) -> dict[str, tuple[int, ...]]:
    """VideoTag's Attention-LSTM parameter names and shapes (Paddle fc weights are [in, out])."""
    h4, h7 = 4 * LSTM_SIZE, 7 * LSTM_SIZE
    return {
        "rgb_fc.w_0": (FEATURE_DIM, EMBEDDING),
        "rgb_fc.b_0": (EMBEDDING,),
        "rgb_fc_forward.w_0": (EMBEDDING, h4),
        "rgb_fc_backward.w_0": (EMBEDDING, h4),
        "rgb_lstm_forward.w_0": (LSTM_SIZE, h4),
        "rgb_lstm_forward.b_0": (1, h7),
        "rgb_lstm_backward.w_0": (LSTM_SIZE, h4),
        "rgb_lstm_backward.b_0": (1, h7),
        "rgb_weight.w_0": (2 * LSTM_SIZE, 1),
        "fc1.w_0": (2 * LSTM_SIZE, FC1),
        "fc1.b_0": (FC1,),
        "fc2.w_0": (FC1, FC2),
        "fc2.b_0": (FC2,),
        "output.w_0": (FC2, num_classes),
        "output.b_0": (num_classes,),
    }


def _same_shape(have: tuple[int, ...], want: tuple[int, ...]) -> bool:
    # Bias vectors are [N] or [1, N] depending on the Paddle version that saved them.
    return have == want or (
        len(want) <= 2
        and int(np.prod(have)) == int(np.prod(want))
        and [d for d in have if d != 1] == [d for d in want if d != 1]
    )


def check_params(
    params: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]], what: str, path: Path, ignore=()
) -> None:
    """Raise PaddleWeightsError listing missing, unexpected and misshaped parameters."""
    missing = [k for k in expected if k not in params]
    unexpected = [k for k in params if k not in expected and not k.startswith(tuple(ignore))]
    misshaped = [
        f"{k} {list(params[k].shape)} (expected {list(v)})"
        for k, v in expected.items()
        if k in params and not _same_shape(tuple(params[k].shape), v)
    ]
    if missing or unexpected or misshaped:
        raise PaddleWeightsError(
            f"{what}: {path} does not match VideoTag's layout" + mismatch_report(missing, unexpected, misshaped)
        )


def _looks_like(params: dict[str, np.ndarray]) -> str:
    if "rgb_fc.w_0" in params or "rgb_lstm_forward.w_0" in params:
        return "lstm"
    if "conv1_weights" in params:
        return "tsn"
    return "unknown"


# --------------------------------------------------------------------------------------------- conversion


def resnet_from_paddle(params: dict[str, np.ndarray], path: Path = Path("tsn.pdparams")) -> ResNet:
    """TSN ResNet-101 (or -50) Paddle parameters -> torchvision-layout ResNet (features only), eval mode."""
    kind = _looks_like(params)
    if kind == "lstm":
        raise PaddleWeightsError(
            f"--tsn: {path} holds Attention-LSTM weights (rgb_fc, rgb_lstm_*); "
            "pass it as --lstm and give the TSN file (tsn.pdparams) as --tsn"
        )
    depth = 50 if "res4f_branch2a_weights" in params and "res4b1_branch2a_weights" not in params else 101
    layout = tsn_resnet_layout(depth)
    check_params(params, {k: s for k, (_, s) in layout.items()}, "--tsn", path, ignore=("fc_0.",))
    state = {tv: torch.from_numpy(params[name].reshape(shape)) for name, (tv, shape) in layout.items()}
    return ResNet(depth, num_classes=None).load_weights(state, str(path)).eval()


def attention_lstm_from_paddle(
    params: dict[str, np.ndarray], path: Path = Path("attention_lstm.pdparams"), lstm_impl: str = "scan"
) -> AttentionLSTM:
    """VideoTag Attention-LSTM Paddle parameters -> AttentionLSTM (eval mode)."""
    kind = _looks_like(params)
    if kind == "tsn":
        raise PaddleWeightsError(
            f"--lstm: {path} holds TSN ResNet weights (conv1_weights, res*); "
            "pass it as --tsn and give attention_lstm.pdparams as --lstm"
        )
    out_w = params.get("output.w_0")
    if out_w is None or out_w.ndim != 2:
        shape = "missing" if out_w is None else f"shape {list(out_w.shape)}"
        raise PaddleWeightsError(f"--lstm: {path}: output layer output.w_0 is {shape}; expected [4096, classes]")
    num_classes = int(out_w.shape[1])
    layout = attention_lstm_layout(num_classes)
    check_params(params, layout, "--lstm", path)
    p = {k: params[k].reshape(v) for k, v in layout.items()}
    m = AttentionLSTM(FEATURE_DIM, num_classes, EMBEDDING, LSTM_SIZE, 0.5, FC1, FC2, onnx_lstm_impl=lstm_impl)

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    h4 = 4 * LSTM_SIZE
    with torch.no_grad():
        m.embed.weight.copy_(t(p["rgb_fc.w_0"].T))
        m.embed.bias.copy_(t(p["rgb_fc.b_0"]))
        for d, name in enumerate(("forward", "backward")):
            # Same gate order (c, i, f, o) and [in, out] layout as Paddle: copied as they are.
            m.lstm.weight_ih[d].copy_(t(p[f"rgb_fc_{name}.w_0"]))
            m.lstm.weight_hh[d].copy_(t(p[f"rgb_lstm_{name}.w_0"]))
            b = p[f"rgb_lstm_{name}.b_0"].reshape(-1)
            m.lstm.bias[d].copy_(t(b[:h4]))
            m.lstm.peephole[d].copy_(t(b[h4:].reshape(3, LSTM_SIZE)))  # w_ic, w_fc, w_oc
        m.attention.weight.copy_(t(p["rgb_weight.w_0"].T))
        for layer, name in ((m.fc1, "fc1"), (m.fc2, "fc2"), (m.output, "output")):
            layer.weight.copy_(t(p[f"{name}.w_0"].T))
            layer.bias.copy_(t(p[f"{name}.b_0"]))
    return m.eval()


def load_labels(path: str | Path, num_classes: int) -> Vocabulary:
    """label_3396.txt -> Vocabulary (id = line number; duplicate names stay apart by id)."""
    path = Path(path)
    if not path.is_file():
        raise PaddleWeightsError(f"--labels: {path} does not exist")
    try:
        vocab = Vocabulary.load(path)
    except UnicodeDecodeError as e:
        raise PaddleWeightsError(f"--labels: {path} is not UTF-8 text ({e})") from e
    except ValueError as e:
        raise PaddleWeightsError(f"--labels: {e}") from e
    if len(vocab) != num_classes:
        raise PaddleWeightsError(
            f"--labels: {path} has {len(vocab)} names but the Attention-LSTM output layer has {num_classes} "
            "classes (VideoTag's label_3396.txt has 3396 lines)"
        )
    return vocab


def _shipped_translations(vocab: Vocabulary) -> dict[str, Vocabulary]:
    """Our translations of VideoTag's label list, when `vocab` is that list (matched by its label-set sha256)."""
    if not VIDEOTAG_LABELS["zh"].is_file() or Vocabulary.load(VIDEOTAG_LABELS["zh"]).sha256 != vocab.sha256:
        return {}
    return {lang: Vocabulary.load(p) for lang, p in VIDEOTAG_LABELS.items() if lang != "zh"}


# --------------------------------------------------------------------------------------------- the import


@dataclass
class ImportReport:
    out: Path
    num_classes: int
    duplicate_names: dict[str, list[int]]
    backbone_sha256: str
    backbone_parity: float
    predictor_parity: float
    lstm_impl: str
    sources: dict[str, dict[str, str]] = field(default_factory=dict)


def import_videotag(
    tsn: str | Path,
    lstm: str | Path,
    labels: str | Path,
    out: str | Path,
    *,
    lstm_impl: str = "scan",
    overwrite: bool = False,
    log: Callable[[str], None] = lambda _msg: None,
    downloads: list[dict[str, Any]] | None = None,
) -> ImportReport:
    """Convert VideoTag's tsn.pdparams + attention_lstm.pdparams + label_3396.txt into the bundle `out`.

    Every input is validated (kind, names, shapes, label count) before anything is written; `out` appears
    only when both ONNX models have passed their parity checks against the torch models. When the labels are
    VideoTag's released list, the bundle also gets the shipped English names (`labels_en.txt`, the default
    language). `downloads` ({url, file, size, sha256} of the archives fetched) is recorded in the manifest.
    """
    from extractor.backbone import export_backbone
    from extractor.preprocess import Preprocess
    from predictor.export import export_predictor
    from videotag.core.manifest import add_vocabularies, publish_dir, read_manifest

    tsn, lstm, labels, out = Path(tsn), Path(lstm), Path(labels), Path(out)
    if lstm_impl not in LSTM_IMPLS:
        raise ValueError(f"lstm_impl must be one of {LSTM_IMPLS}, got {lstm_impl!r}")
    for flag, path in (("--tsn", tsn), ("--lstm", lstm), ("--labels", labels)):
        if not path.is_file():
            raise PaddleWeightsError(
                f"{flag}: {path} does not exist" if not path.exists() else f"{flag}: {path} is not a file"
            )
    if out.exists() and not out.is_dir():
        raise PaddleWeightsError(f"--out: {out} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise PaddleWeightsError(f"--out: {out} exists and is not empty (use --force to replace it)")

    log(f"reading {lstm}")
    lstm_params = load_pdparams(lstm, "--lstm")
    model = attention_lstm_from_paddle(lstm_params, lstm, lstm_impl)
    del lstm_params
    vocab = load_labels(labels, model.num_classes)
    log(f"reading {tsn}")
    tsn_params = load_pdparams(tsn, "--tsn")
    resnet = resnet_from_paddle(tsn_params, tsn)
    del tsn_params

    sources = {
        "tsn": {"file": tsn.name, "sha256": sha256_file(tsn)},
        "lstm": {"file": lstm.name, "sha256": sha256_file(lstm)},
        "labels": {"file": labels.name, "sha256": sha256_file(labels)},
    }
    stage = out.with_name(out.name + ".importing")
    shutil.rmtree(stage, ignore_errors=True)
    stage_backbone = out.with_name(out.name + ".importing-backbone")
    try:
        log(f"exporting TSN ResNet-{resnet.depth} to ONNX")
        export_backbone(
            resnet,
            stage_backbone,
            architecture=BACKBONE_NAME if resnet.depth == 101 else f"videotag_tsn_resnet{resnet.depth}",
            feature_dim=2048,
            preprocess=Preprocess("videotag"),
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            source={"package": "Baidu VideoTag (PaddleVideo)", "version": "tsn.pdparams", **sources["tsn"]},
            sampling="segment",
            extra={"imported_from": "paddle"},
        )
        bman = read_manifest(stage_backbone, kind="backbone")
        log(f"exporting Attention-LSTM ({model.num_classes} classes, lstm_impl={lstm_impl}) to ONNX")
        export_predictor(
            model,
            stage,
            vocab,
            backbone={"name": bman["architecture"], "sha256": bman["sha256"], "feature_dim": 2048},
            extra={
                "source": {"package": "Baidu VideoTag (PaddleVideo)", **sources},
                "preset": "videotag",
                "postprocess": {"topk": 20, "threshold": None},
                "lstm_impl": lstm_impl,
                "sampling": "segment",  # VideoTag's rule, bit-exact; features sampled otherwise are refused
                **({"downloads": downloads} if downloads else {}),
            },
        )
        translations = _shipped_translations(vocab)
        add_vocabularies(stage, "zh", translations, "en" if "en" in translations else "zh")
        shutil.move(str(stage_backbone), str(stage / "backbone"))
        publish_dir(stage, out)
    finally:  # the exporters clean their own staging dirs; leave none of ours behind on failure
        for d in (stage, stage_backbone):
            shutil.rmtree(d, ignore_errors=True)
    pman = read_manifest(out, kind="predictor")
    ids: dict[str, list[int]] = {}
    for i, name in enumerate(vocab.names):
        ids.setdefault(name, []).append(i)
    dups = {n: v for n, v in ids.items() if len(v) > 1}
    return ImportReport(
        out=out,
        num_classes=model.num_classes,
        duplicate_names=dups,
        backbone_sha256=bman["sha256"],
        backbone_parity=float(bman.get("onnx_parity_max_abs_diff", float("nan"))),
        predictor_parity=float(pman.get("onnx_parity_max_abs_diff", float("nan"))),
        lstm_impl=lstm_impl,
        sources=sources,
    )
