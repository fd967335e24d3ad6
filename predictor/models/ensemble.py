"""Ensemble: any registered models over the same features and vocabulary, fused by a weighted average of
their probabilities.

    config = {"feature_dim": D, "num_classes": C,
              "members": [{"name": "nextvlad", "config": {...}}, ...], "weights": [w_1, ...]}

probabilities = sum_i w_i p_i / sum_i w_i;  forward returns logit(probabilities) to keep the model contract.
ONNX: every member is exported on its own (its own `export_onnx_graph` if it has one, parity-checked), then the
member graphs are merged into one graph with prefixed names that averages their `probabilities` outputs, so an
ensemble directory is an ordinary predictor directory (one model.onnx).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from predictor.models.base import SequenceModel
from predictor.models.registry import create_model, register_model

_IO = ("features", "lengths")


def normalise_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """Validate ensemble weights (finite, >= 0, not all 0) and scale them to sum to 1."""
    if weights is None:
        weights = [1.0] * n
    weights = [float(w) for w in weights]
    if len(weights) != n:
        raise ValueError(f"ensemble: {n} members but {len(weights)} weights")
    if any(not (w >= 0.0 and w < float("inf")) for w in weights) or sum(weights) <= 0:
        raise ValueError(f"ensemble: weights must be finite, >= 0 and not all zero, got {weights}")
    total = sum(weights)
    return [w / total for w in weights]


@register_model
class Ensemble(SequenceModel):
    name = "ensemble"

    def __init__(
        self,
        feature_dim: int,
        num_classes: int,
        members: Sequence[dict[str, Any]],
        weights: Sequence[float] | None = None,
    ) -> None:
        if not members:
            raise ValueError("ensemble: needs at least one member")
        specs = []
        for i, m in enumerate(members):
            if not isinstance(m, dict) or "name" not in m:
                raise ValueError(f"ensemble: member {i} must be a dict with 'name' and 'config', got {m!r}")
            cfg = dict(m.get("config") or {})
            for key, want in (("feature_dim", feature_dim), ("num_classes", num_classes)):
                if key in cfg and int(cfg[key]) != int(want):
                    raise ValueError(f"ensemble: member {i} ({m['name']}) has {key}={cfg[key]}, ensemble has {want}")
                cfg.pop(key, None)
            specs.append({"name": str(m["name"]), "config": cfg})
        norm = normalise_weights(weights, len(specs))
        super().__init__(feature_dim, num_classes, members=specs, weights=list(weights or [1.0] * len(specs)))
        self.members = nn.ModuleList(
            create_model(s["name"], feature_dim=feature_dim, num_classes=num_classes, **s["config"]) for s in specs
        )
        self.register_buffer("fusion_weights", torch.tensor(norm, dtype=torch.float32), persistent=False)

    def probabilities(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """features [B, T, D], lengths [B] -> weighted mean of member probabilities [B, C]."""
        out = None
        for w, m in zip(self.fusion_weights, self.members, strict=True):
            p = m.probabilities(features, lengths) * w
            out = p if out is None else out + p
        return out

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """logit of the fused probabilities [B, C] (clamped so it stays finite)."""
        return torch.logit(self.probabilities(features, lengths), eps=1e-7)

    def output_layer_names(self) -> list[str]:
        return [f"members.{i}.{p}" for i, m in enumerate(self.members) for p in m.output_layer_names()]

    def export_onnx_graph(self, path: str | Path, opset: int) -> None:
        """Export each member (parity-checked) and merge them into one graph at `path`."""
        from predictor.export import export_onnx

        with tempfile.TemporaryDirectory(prefix="videotag-ensemble-") as tmp:
            paths = []
            for i, m in enumerate(self.members):
                p = Path(tmp) / f"member{i}.onnx"
                export_onnx(m, p, opset)
                paths.append(p)
            compose_onnx(paths, self.fusion_weights.tolist(), path)


def compose_onnx(member_paths: Sequence[str | Path], weights: Sequence[float], out_path: str | Path) -> None:
    """Merge member ONNX graphs (features[B,T,D], lengths[B] -> probabilities[B,C]) into one graph whose
    `probabilities` is the weighted average of theirs. Names are prefixed `m{i}/` so members never collide."""
    import onnx
    from onnx import TensorProto, compose, helper, numpy_helper

    weights = normalise_weights(weights, len(member_paths))
    models = [onnx.load(str(p)) for p in member_paths]
    first = models[0]
    for i, m in enumerate(models):
        names = [x.name for x in m.graph.input if x.name not in {init.name for init in m.graph.initializer}]
        if sorted(names) != sorted(_IO) or [o.name for o in m.graph.output] != ["probabilities"]:
            raise ValueError(
                f"ensemble member {member_paths[i]}: expected inputs {list(_IO)} and output ['probabilities'], "
                f"got {names} -> {[o.name for o in m.graph.output]}"
            )
        if m.functions:
            raise ValueError(f"ensemble member {member_paths[i]}: ONNX local functions are not supported")
    nodes, inits, vinfos, outs = [], [], [], []
    for i, m in enumerate(models):
        g = compose.add_prefix_graph(m.graph, f"m{i}/", rename_inputs=False)
        nodes.extend(g.node)
        inits.extend(g.initializer)
        vinfos.extend(g.value_info)
        outs.append(g.output[0].name)
    scaled = []
    for i, (name, w) in enumerate(zip(outs, weights, strict=True)):
        wname = f"ensemble/weight{i}"
        inits.append(numpy_helper.from_array(np.array(w, dtype=np.float32), wname))
        nodes.append(helper.make_node("Mul", [name, wname], [f"ensemble/scaled{i}"], name=f"ensemble/mul{i}"))
        scaled.append(f"ensemble/scaled{i}")
    nodes.append(helper.make_node("Sum", scaled, ["probabilities"], name="ensemble/sum"))
    out_vi = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", None])
    out_vi.type.tensor_type.shape.CopyFrom(first.graph.output[0].type.tensor_type.shape)
    inputs = [x for x in first.graph.input if x.name in _IO]
    graph = helper.make_graph(nodes, "videotag_ensemble", inputs, [out_vi], initializer=inits, value_info=vinfos)
    opsets: dict[str, int] = {}
    for m in models:
        for op in m.opset_import:
            opsets[op.domain] = max(opsets.get(op.domain, 0), op.version)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
        producer_name="videotag.ensemble",
    )
    model.ir_version = max(m.ir_version for m in models)
    onnx.save(model, str(out_path))
    onnx.checker.check_model(str(out_path))  # by path: also works for graphs over protobuf's 2 GiB
