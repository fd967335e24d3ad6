"""`videotag optimize`: a new model bundle at lower precision, written only when it agrees with the original.

    optimize_model(settings, "imagenet_framepool", "int8", clips)   -> weights/imagenet_framepool-int8/
    optimize_model(settings, "videotag", "fp16", clips, out="vt16") -> weights/vt16/

INT8 (for ONNX Runtime's CPU provider): the backbone is statically quantised (QDQ, per-channel int8 weights,
uint8 activations) with ranges calibrated on frames sampled from the given clips through the model's own
decoding, preprocessing and sampling rule. FP16 (for CUDA/TensorRT): weights and arithmetic in half precision.
The predictor is converted too only where it pays: when its measured share of the time per video is at least
`PREDICTOR_SHARE` (or when asked); otherwise it stays float32.

Agreement is measured on HELD-BACK data, never on calibration frames: every third clip (2, 5, 8, ...; at least
one) is held back, or the clips given as `holdout`; with a single clip its odd sampled frames are held back.
Per held-back video: cosine of each frame's features (optimised vs original), the overlap of the top-k tags and
the largest probability difference over all classes. The summary (mean/min cosine, mean/min top-k overlap, max
probability difference) is compared with a `Gate`; below it, `GateRefused` is raised and nothing is written.
For INT8 an exclusion ladder is tried (nothing, the first conv, the first and last conv kept in float) and the
first rung that passes is kept.

The result is a predictor bundle like an imported VideoTag one: OUT/model.onnx + manifest.json + labels, and
OUT/backbone/ with the optimised backbone, so `videotag tag --model OUT` uses both, and `videotag models` lists it.
The backbone is renamed `<architecture>-int8` / `-fp16`: its features are not the original's, so feature stores
(`features/<backbone>/...`) and the predictor's backbone check keep them apart. Manifests record the settings, the
agreement, the gate and where they were measured (`optimized`).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from extractor import quantize as q
from extractor.preprocess import Preprocess
from videotag.core.errors import ManifestError, VideoError, VideotagError
from videotag.core.manifest import MANIFEST_NAME, WEIGHTS_NAME, now_iso, read_manifest, staged_dir, write_manifest
from videotag.core.settings import Settings

log = logging.getLogger(__name__)

MODES = ("int8", "fp16")
PREDICTOR_CHOICES = ("auto", "keep", "convert")
PREDICTOR_SHARE = 0.10  # convert the predictor when it takes >= 10% of a video's model time (at settings.frames)
TARGET_PROVIDERS = {"int8": ["CPUExecutionProvider"], "fp16": ["TensorrtExecutionProvider", "CUDAExecutionProvider"]}


# ------------------------------------------------------------------------------------------------ the gate
@dataclass
class Gate:
    """Minimum agreement with the original model, on held-back data (see docs/optimize.md for why these values).

    cosine_mean / cosine_min: feature cosine over all held-back frames (mean, worst frame).
    topk_overlap: mean over held-back videos of |top-k(original) ∩ top-k(optimised)| / k, with k = `topk`.
    topk_overlap_min: the same for the worst video.
    max_prob_diff: the largest |p_original - p_optimised| over all classes and held-back videos.
    """

    cosine_mean: float = 0.97
    cosine_min: float = 0.90
    topk: int = 5
    topk_overlap: float = 0.70
    topk_overlap_min: float = 0.40
    max_prob_diff: float = 0.20

    @classmethod
    def parse(cls, items: list[str] | None) -> Gate:
        """`["cosine_mean=0.99", "max_prob_diff=0.05"]` -> a Gate with those values changed."""
        gate = cls()
        known = {f.name: f.type for f in fields(cls)}
        for item in items or []:
            key, sep, value = item.partition("=")
            key = key.strip().replace("-", "_")
            if not sep or key not in known:
                raise VideotagError(f"--gate {item!r}: expected KEY=VALUE with KEY one of {', '.join(known)}")
            try:
                v: float = int(value) if key == "topk" else float(value)
            except ValueError:
                raise VideotagError(f"--gate {item!r}: {value!r} is not a number") from None
            if key == "topk" and v < 1:
                raise VideotagError(f"--gate {item!r}: topk must be >= 1")
            if key != "topk" and not 0.0 <= v <= (2.0 if key == "max_prob_diff" else 1.0):
                raise VideotagError(f"--gate {item!r}: {key} must be between 0 and 1")
            setattr(gate, key, v)
        return gate

    def failures(self, agreement: dict[str, Any]) -> list[str]:
        """What falls short of the gate, one line each ([] = passes). Probability checks need a predictor."""
        bad = []

        def low(name: str, got: float | None, want: float) -> None:
            if got is not None and got < want:
                bad.append(f"{name} {got:.4f} < {want:g}")

        low("feature cosine mean", agreement["feature_cosine_mean"], self.cosine_mean)
        low("feature cosine min", agreement["feature_cosine_min"], self.cosine_min)
        low(f"top-{self.topk} overlap mean", agreement.get("topk_overlap_mean"), self.topk_overlap)
        low(f"top-{self.topk} overlap min", agreement.get("topk_overlap_min"), self.topk_overlap_min)
        diff = agreement.get("max_prob_diff")
        if diff is not None and diff > self.max_prob_diff:
            bad.append(f"max probability difference {diff:.4f} > {self.max_prob_diff:g}")
        return bad


class GateRefused(VideotagError):
    """The optimised model does not agree with the original well enough; nothing was written."""

    def __init__(self, message: str, attempts: list[dict[str, Any]], gate: Gate) -> None:
        super().__init__(message)
        self.attempts, self.gate = attempts, gate


@dataclass
class OptimizeReport:
    out: Path
    mode: str
    manifest: dict[str, Any]
    attempts: list[dict[str, Any]] = field(default_factory=list)

    @property
    def agreement(self) -> dict[str, Any]:
        return self.manifest["optimized"]["agreement"]


# ------------------------------------------------------------------------------------------------ helpers
def _fp16_round(x: np.ndarray) -> np.ndarray:
    """What the feature store does to features between stage 1 and stage 2 (`tag` and `predict` agree)."""
    return x.astype(np.float16).astype(np.float32)


def _predict_one(session, seq: np.ndarray) -> np.ndarray:
    feeds = {"features": seq[None].astype(np.float32), "lengths": np.array([len(seq)], dtype=np.int64)}
    return session.run(["probabilities"], feeds)[0][0]


def _topk(p: np.ndarray, k: int) -> set[int]:
    return set(np.argsort(-p, kind="stable")[:k].tolist())


def resolve_out(settings: Settings, src: Path, mode: str, out: str | None) -> Path:
    """`--out NAME` -> weights_dir/NAME; a path (with a separator) -> that directory; default NAME-int8|fp16."""
    if out is None:
        return settings.weights_dir / f"{src.name}-{mode}"
    p = Path(out).expanduser()
    bare = len(Path(out).parts) == 1 and not out.startswith((".", "~"))
    return settings.weights_dir / out if bare else p


@dataclass
class _Source:
    """The model to optimise: a predictor (with its backbone, bundled or configured) or a backbone alone."""

    dir: Path
    manifest: dict[str, Any]
    backbone_dir: Path
    backbone: dict[str, Any]
    predictor: bool

    @property
    def preprocess(self) -> Preprocess:
        pp = self.backbone["preprocessing"]
        return Preprocess(preset=pp["preset"], resize=pp["resize"], crop=pp["crop"])


def _load_source(settings: Settings, model: str) -> _Source:
    from videotag.pipeline import backbone_dir_for

    mdir = settings.resolve_model_dir(model)
    m = read_manifest(mdir)
    if m.get("optimized"):
        raise VideotagError(
            f"{mdir.name} is already an optimised bundle ({m['optimized'].get('mode')} of "
            f"{m['optimized'].get('from', {}).get('model')}); optimise the original model instead"
        )
    if m["kind"] == "backbone":
        return _Source(mdir, m, mdir, m, predictor=False)
    if m["kind"] != "predictor":
        raise ManifestError(f"{mdir}: cannot optimise a {m['kind']!r} model (a predictor or a backbone)")
    bdir = backbone_dir_for(settings, model)
    bm = read_manifest(bdir, kind="backbone")
    if bm.get("optimized"):
        raise VideotagError(f"the backbone of {mdir.name} ({bdir}) is already optimised; start from float32 models")
    want = m.get("backbone") or {}
    if want.get("sha256") and want["sha256"] != bm["sha256"]:
        raise ManifestError(
            f"{mdir.name} was trained on {want.get('name')} weights {want['sha256'][:12]}… but its backbone {bdir} "
            f"has {bm['sha256'][:12]}…; cannot measure agreement against a backbone it does not use"
        )
    return _Source(mdir, m, bdir, bm, predictor=True)


def _sample_all(
    clips: list[str], src: _Source, policy: str, frames: int, say: Callable[[str], None]
) -> list[q.ClipFrames]:
    out = []
    for c in clips:
        try:
            out.append(q.sample_clip(c, src.preprocess, frames, policy))
        except VideoError as e:
            raise VideotagError(f"clip {e}") from e
    say(f"decoded {sum(len(c.frames) for c in out)} frames from {len(out)} clip(s) ({frames} {policy} slots each, "
        f"{src.preprocess.preset} {src.preprocess.crop}px)")  # fmt: skip
    return out


# ------------------------------------------------------------------------------------------------ measuring
class _Evaluator:
    """The original model's outputs on the held-back clips, computed once; `measure` compares a candidate."""

    def __init__(self, src: _Source, held: list[q.ClipFrames], topk: int, threads: int, frames_per_video: int):
        self.src, self.held, self.topk, self.threads = src, held, topk, threads
        self.frames_per_video = frames_per_video
        bb = q.cpu_session(src.backbone_dir / src.backbone["weights"], threads)
        self.ref_feats, self.ref_backbone_s = [], 0.0
        for clip in held:
            f, s = q.run_backbone(bb, clip.frames)
            self.ref_feats.append(f)
            self.ref_backbone_s += s
        self.n_frames = sum(len(c.frames) for c in held)
        self.pred_session = None
        self.ref_probs: list[np.ndarray] = []
        if src.predictor:
            self.pred_session = q.cpu_session(src.dir / src.manifest["weights"], threads)
            self.ref_probs = [_predict_one(self.pred_session, _fp16_round(f[c.slots]))
                              for f, c in zip(self.ref_feats, held, strict=True)]  # fmt: skip

    @property
    def backbone_s_per_frame(self) -> float:
        return self.ref_backbone_s / max(self.n_frames, 1)

    def predictor_share(self) -> float | None:
        """Predictor time per video / (backbone time for settings.frames frames + predictor time), float32."""
        if self.pred_session is None:
            return None
        seq = _fp16_round(self.ref_feats[0][self.held[0].slots])
        seq = np.resize(seq, (self.frames_per_video, seq.shape[1]))  # a full-length video's sequence
        _predict_one(self.pred_session, seq)  # warm-up
        t = time.perf_counter()
        for _ in range(3):
            _predict_one(self.pred_session, seq)
        pred_s = (time.perf_counter() - t) / 3
        backbone_s = self.backbone_s_per_frame * self.frames_per_video
        return pred_s / (pred_s + backbone_s)

    def measure(self, backbone_path: Path, predictor_path: Path | None, providers: list[str]) -> dict[str, Any]:
        bb = q.cpu_session(backbone_path, self.threads, providers)
        pred = None
        if self.src.predictor:
            pred = self.pred_session if predictor_path is None else q.cpu_session(predictor_path, self.threads,
                                                                                  providers)  # fmt: skip
        per_video, all_cos, spent = [], [], 0.0
        for clip, ref_f, ref_p in zip(self.held, self.ref_feats, self.ref_probs or [None] * len(self.held),
                                      strict=True):  # fmt: skip
            f, s = q.run_backbone(bb, clip.frames)
            spent += s
            cos = q.cosine(ref_f, f)
            all_cos.append(cos)
            row: dict[str, Any] = {"video": clip.name, "frames": int(len(clip.frames)),
                                   "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())}  # fmt: skip
            if pred is not None:
                p = _predict_one(pred, _fp16_round(f[clip.slots]))
                k = min(self.topk, len(p))
                row["topk_overlap"] = len(_topk(ref_p, k) & _topk(p, k)) / k
                row["max_prob_diff"] = float(np.abs(p - ref_p).max())
                row["top1_same"] = bool(int(np.argmax(p)) == int(np.argmax(ref_p)))
            per_video.append(row)
        cos = np.concatenate(all_cos)
        out: dict[str, Any] = {
            "feature_cosine_mean": float(cos.mean()),
            "feature_cosine_min": float(cos.min()),
            "frames": int(len(cos)),
            "videos": len(per_video),
        }
        if pred is not None:
            ov = [r["topk_overlap"] for r in per_video]
            diffs = [r["max_prob_diff"] for r in per_video]
            out.update(
                topk=self.topk,
                topk_overlap_mean=float(np.mean(ov)),
                topk_overlap_min=float(np.min(ov)),
                max_prob_diff=float(np.max(diffs)),
                max_prob_diff_mean=float(np.mean(diffs)),
                top1_agreement=float(np.mean([r["top1_same"] for r in per_video])),
            )
        out["per_video"] = per_video
        out["throughput_while_measuring"] = {
            "note": "one pass each on this machine's CPU, not interleaved: see benchmarks/bench_optimize.py",
            "original_frames_per_s": round(self.n_frames / max(self.ref_backbone_s, 1e-9), 2),
            "optimized_frames_per_s": round(self.n_frames / max(spent, 1e-9), 2),
            "providers": bb.get_providers()[:1],
        }
        return out


# ------------------------------------------------------------------------------------------------ the command
def optimize_model(
    settings: Settings,
    model: str,
    mode: str,
    clips: list[str],
    out: str | None = None,
    *,
    holdout: list[str] | None = None,
    frames: int = 32,
    eval_frames: int | None = None,
    max_calibration_frames: int = 256,
    gate: Gate | None = None,
    exclude: str | list[str] = "auto",
    predictor: str = "auto",
    per_channel: bool = True,
    reduce_range: bool | None = None,
    calibration_method: str = "minmax",
    force: bool = False,
    say: Callable[[str], None] = log.info,
) -> OptimizeReport:
    """Write an INT8 or FP16 copy of `model` (see the module doc); GateRefused (nothing written) below `gate`."""
    if mode not in MODES:
        raise VideotagError(f"unknown mode {mode!r}; choose {' or '.join(MODES)}")
    if predictor not in PREDICTOR_CHOICES:
        raise VideotagError(f"--predictor {predictor!r}: choose one of {', '.join(PREDICTOR_CHOICES)}")
    if frames < 2 or (eval_frames is not None and eval_frames < 2):
        raise VideotagError("--frames and --eval-frames must be at least 2 (frames sampled per clip)")
    gate = gate or Gate()
    src = _load_source(settings, model)
    dest = resolve_out(settings, src.dir, mode, out)
    if dest.resolve() == src.dir.resolve():
        raise VideotagError(f"--out {dest} is the model being optimised; choose another name")
    if dest.exists() and not force:
        raise VideotagError(f"{dest} exists; choose another --out or pass --force to replace it")
    if not clips and not holdout:
        raise VideotagError("no calibration clips: give some with --calibrate (files or directories)")
    if not clips:
        raise VideotagError("--holdout clips are only for measuring; give calibration clips with --calibrate too")
    policy = settings.sampling or src.manifest.get("sampling") or src.backbone.get("sampling") or "uniform"
    t0 = time.perf_counter()

    # 1. frames: calibration vs held back (held-back clips sampled as `tag` samples them: eval_frames slots)
    eval_frames = eval_frames or settings.frames
    if holdout:
        cal_clips = _sample_all(clips, src, policy, frames, say)
        held = _sample_all(holdout, src, policy, eval_frames, say)
        held_by = "clips (given)"
    elif len(clips) >= 2:
        idx = set(q.split_holdout(len(clips)))
        cal_clips = _sample_all([c for i, c in enumerate(clips) if i not in idx], src, policy, frames, say)
        held = _sample_all([c for i, c in enumerate(clips) if i in idx], src, policy, eval_frames, say)
        held_by = "clips (every third)"
    else:
        cal_one, held_one = q.split_frames(_sample_all(clips, src, policy, max(frames, eval_frames), say)[0])
        cal_clips, held = [cal_one], [held_one]
        held_by = "frames (odd sampled frames of the only clip)"
    calibration = q.even_subsample(np.concatenate([c.frames for c in cal_clips]), max_calibration_frames)
    say(f"calibration: {len(calibration)} frames from {len(cal_clips)} clip(s); held back: "
        f"{sum(len(c.frames) for c in held)} frames of {len(held)} clip(s) [{held_by}]")  # fmt: skip

    # 2. the original's outputs on the held-back frames
    threads = settings.intra_op_threads
    ev = _Evaluator(src, held, gate.topk, threads, settings.frames)
    providers = ["CPUExecutionProvider"] if mode == "int8" else _fp16_providers(settings)
    share = ev.predictor_share()
    pays = (share or 0.0) >= PREDICTOR_SHARE
    convert_pred = src.predictor and (predictor == "convert" or (predictor == "auto" and pays))
    if src.predictor:
        say(f"predictor share of model time per video ({settings.frames} frames, float32): {share:.1%} -> "
            + ("convert it too" if convert_pred else "keep it float32"))  # fmt: skip

    attempts: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="videotag-optimize-") as tmp_s:
        tmp = Path(tmp_s)
        cand = tmp / "backbone.onnx"
        pred_path: Path | None = None
        pred_settings: dict[str, Any] | None = None
        if convert_pred:
            pred_path = tmp / "predictor.onnx"
            conv = q.quantize_predictor_int8 if mode == "int8" else q.convert_predictor_fp16
            pred_settings = conv(src.dir / src.manifest["weights"], pred_path)
        chosen: dict[str, Any] | None = None

        if mode == "int8":
            quant = q.Int8Quantizer(src.backbone_dir / src.backbone["weights"], tmp / "work", calibration,
                                    per_channel=per_channel, reduce_range=reduce_range,
                                    method=calibration_method)  # fmt: skip
            if exclude == "auto":
                ladder = quant.exclusion_ladder()
            else:
                names = [] if exclude in ("none", [], ["none"]) else quant.resolve_exclusions(list(exclude))
                ladder = [("as given" if names else "none", names)]
            for rung, names in ladder:
                settings_q = quant.quantize(cand, names)
                chosen = _attempt(ev, cand, pred_path, providers, gate, rung, settings_q, attempts, say)
                if chosen is None and pred_path is not None:  # the predictor may be what loses: try it float32
                    chosen = _attempt(ev, cand, None, providers, gate, rung + ", float32 predictor", settings_q,
                                      attempts, say)  # fmt: skip
                    if chosen is not None:
                        pred_path = None
                if chosen is not None:
                    break
            precision = {**quant.settings(chosen["settings"]["excluded_nodes"] if chosen else []),
                         "prepare_s": quant.seconds.get("prepare_s")}  # fmt: skip
        else:
            settings_h = q.convert_fp16(src.backbone_dir / src.backbone["weights"], cand)
            chosen = _attempt(ev, cand, pred_path, providers, gate, "fp16", settings_h, attempts, say)
            if chosen is None and pred_path is not None:
                chosen = _attempt(ev, cand, None, providers, gate, "fp16, float32 predictor", settings_h, attempts,
                                  say)  # fmt: skip
                pred_path = None if chosen is not None else pred_path
            precision = settings_h

        if chosen is None:
            best = max(attempts, key=lambda a: a["agreement"]["feature_cosine_mean"])
            lines = "\n".join(f"  {a['rung']}: " + "; ".join(a["failures"]) for a in attempts)
            raise GateRefused(
                f"{mode} {src.dir.name} does not agree with the original well enough on {best['agreement']['frames']}"
                f" held-back frames of {best['agreement']['videos']} video(s), so nothing was written:\n{lines}\n"
                f"  gate: {_gate_text(gate)} (override with --gate KEY=VALUE; see docs/optimize.md)",
                attempts,
                gate,
            )

        record = {
            "mode": mode,
            "from": {"model": src.dir.name, "dir": str(src.dir), "sha256": src.manifest["sha256"],
                     "backbone": src.backbone["architecture"], "backbone_sha256": src.backbone["sha256"]},
            "target_providers": TARGET_PROVIDERS[mode],
            "backbone_precision": precision,
            "predictor_precision": (pred_settings if pred_path is not None else "float32 (unchanged)")
            if src.predictor else None,
            "predictor_share_of_time": None if share is None else round(share, 4),
            "exclusion": chosen["rung"],
            "calibration": ({"clips": [c.name for c in cal_clips], "frames": int(len(calibration)),
                             "frames_per_clip": frames, "sampling": policy} if mode == "int8" else None),
            "held_back": {"by": held_by, "clips": [c.name for c in held], "slots_per_video": eval_frames,
                          "frames": int(sum(len(c.frames) for c in held))},
            "agreement": chosen["agreement"],
            "gate": asdict(gate),
            "measured_on": chosen["agreement"]["throughput_while_measuring"]["providers"],
            "attempts": [{"rung": a["rung"], "passed": not a["failures"], "failures": a["failures"]}
                         for a in attempts],
            "created": now_iso(),
            "seconds": round(time.perf_counter() - t0, 1),
        }  # fmt: skip
        manifest = _write_bundle(src, dest, mode, cand, pred_path, record)
    say(f"wrote {dest} ({chosen['rung']}) in {time.perf_counter() - t0:.0f}s")
    return OptimizeReport(dest, mode, manifest, attempts)


def _fp16_providers(settings: Settings) -> list[str]:
    """Where to measure an FP16 model: the GPU providers the settings allow when usable, else the CPU."""
    from videotag.core.onnx_sessions import choose_providers

    return choose_providers(settings.onnx_providers)


def _attempt(
    ev: _Evaluator,
    backbone: Path,
    predictor: Path | None,
    providers: list[str],
    gate: Gate,
    rung: str,
    settings_q: dict[str, Any],
    attempts: list[dict[str, Any]],
    say: Callable[[str], None],
) -> dict[str, Any] | None:
    agreement = ev.measure(backbone, predictor, providers)
    failures = gate.failures(agreement)
    attempt = {"rung": rung, "settings": settings_q, "agreement": agreement, "failures": failures}
    attempts.append(attempt)
    say(f"{rung}: {_agreement_text(agreement)} -> " + ("passes the gate" if not failures else "; ".join(failures)))
    return None if failures else attempt


def _gate_text(g: Gate) -> str:
    return (f"cosine mean >= {g.cosine_mean:g}, min >= {g.cosine_min:g}; top-{g.topk} overlap mean >= "
            f"{g.topk_overlap:g}, min >= {g.topk_overlap_min:g}; max prob diff <= {g.max_prob_diff:g}")  # fmt: skip


def _agreement_text(a: dict[str, Any]) -> str:
    s = f"cosine mean {a['feature_cosine_mean']:.4f} min {a['feature_cosine_min']:.4f}"
    if "topk_overlap_mean" in a:
        s += (f", top-{a['topk']} overlap mean {a['topk_overlap_mean']:.2f} min {a['topk_overlap_min']:.2f}, "
              f"max prob diff {a['max_prob_diff']:.4f}")  # fmt: skip
    return s


def _write_bundle(
    src: _Source, dest: Path, mode: str, backbone: Path, predictor: Path | None, record: dict[str, Any]
) -> dict[str, Any]:
    """OUT/{model.onnx, manifest.json, labels...} + OUT/backbone/ (or OUT = the backbone, for a backbone alone)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    bman = dict(src.backbone)
    for k in ("sha256", "created", "weights"):
        bman.pop(k, None)
    arch = src.backbone["architecture"]
    bman["architecture"] = f"{arch}-{mode}"
    bman["base_architecture"] = arch
    bman["precision"] = mode
    if "onnx_parity_max_abs_diff" in bman:  # the float32 export's parity, not this graph's
        record["from"]["backbone_onnx_parity_max_abs_diff"] = bman.pop("onnx_parity_max_abs_diff")
    bman["optimized"] = record
    with staged_dir(dest) as stage:
        bdir = stage / "backbone" if src.predictor else stage
        bdir.mkdir(exist_ok=True)
        shutil.copyfile(backbone, bdir / WEIGHTS_NAME)
        write_manifest(bdir, bman)
        if not src.predictor:
            return json.loads((bdir / MANIFEST_NAME).read_text(encoding="utf-8"))
        new_b = read_manifest(bdir, kind="backbone")
        for item in src.dir.iterdir():  # labels, translations, anything else the bundle carries
            if item.name in (MANIFEST_NAME, src.manifest["weights"], "backbone") or item.name.startswith("."):
                continue
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, stage / item.name)
        shutil.copyfile(predictor or (src.dir / src.manifest["weights"]), stage / WEIGHTS_NAME)
        pman = dict(src.manifest)
        for k in ("sha256", "created", "weights"):
            pman.pop(k, None)
        pman["backbone"] = {"name": new_b["architecture"], "sha256": new_b["sha256"],
                            "feature_dim": new_b["feature_dim"]}  # fmt: skip
        if predictor is not None and "onnx_parity_max_abs_diff" in pman:  # the float32 export's, not this graph's
            parity = pman.pop("onnx_parity_max_abs_diff")
            record = {**record, "from": {**record["from"], "predictor_onnx_parity_max_abs_diff": parity}}
        pman["precision"] = mode if predictor is not None else "float32"
        pman["optimized"] = record
        base = pman.get("description") or src.dir.name
        pman["description"] = f"{base} [{mode} backbone" + (" and predictor" if predictor is not None else "") + "]"
        write_manifest(stage, pman)
        return json.loads((stage / MANIFEST_NAME).read_text(encoding="utf-8"))
