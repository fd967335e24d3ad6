"""Attention-LSTM, exactly as Baidu VideoTag's stage 2 (PaddlePaddle `dynamic_lstm` semantics).

    e   = tanh(x W_e + b_e)                                   x [B, T, D] -> e [B, T, E]
    u_d = e W_p,d + b_d        (per direction d, no fc bias)  [B, T, 4H], gate blocks (c, i, f, o)
    peephole LSTM per direction (zero initial state; the backward one runs over the reversed *valid* part)
        g = h_{t-1} W_h + u_t ;  i = σ(g_i + w_ic⊙c_{t-1}) ;  f = σ(g_f + w_fc⊙c_{t-1})
        c_t = f⊙c_{t-1} + i⊙tanh(g_c) ;  o = σ(g_o + w_oc⊙c_t) ;  h_t = o⊙tanh(c_t)
    Hs  = [h_fwd ; h_bwd] [B, T, 2H], then dropout (Paddle "downgrade_in_infer": ×(1-p) at inference,
          a plain Bernoulli keep-mask without rescaling while training)
    a   = softmax over valid t of (Hs w)   (w: 2H -> 1, no bias) ;  p = Σ_t a_t Hs_t
    relu(fc1 8192) -> tanh(fc2 4096) -> fc C (logits) -> sigmoid

Parameter layout follows Paddle (weights [in, out], LSTM gate blocks c, i, f, o, peepholes w_ic, w_fc, w_oc)
so VideoTag's released weights map onto it by transposing only the fully connected layers.

ONNX: torch's exporter would unroll the time loop with a fixed T, so `export_onnx_graph` writes the graph
by hand, in one of two forms:
- "scan" (default): the peephole cell as an ONNX `Scan` over elementwise ops. Runs on every provider.
- "onnx_lstm": the native ONNX `LSTM` op with peephole input P. ONNX Runtime's CPU kernel honours P, but its
  CUDA kernel is cuDNN-based and never reads P (cuDNN has no peepholes), so on CUDA it would silently compute
  a different (peephole-free) LSTM. Use it only for CPU deployments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from predictor.models.base import SequenceModel, length_mask
from predictor.models.registry import register_model

LSTM_IMPLS = ("scan", "onnx_lstm")
# Score given to padded steps before the softmax: finite (a row of it stays NaN-free), exp() of it is exactly 0.
_NEG = float(np.finfo(np.float32).min)


def reverse_index(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """[B] lengths -> [B, T] int64: position t of the reversed valid part (L-1-t), padding maps to itself.

    Applying it twice (with gather along time) is the identity, so it also un-reverses.
    """
    steps = torch.arange(max_len, device=lengths.device)[None, :]
    lens = lengths.clamp(0, max_len)[:, None]
    return torch.where(steps < lens, lens - 1 - steps, steps)


class PeepholeBiLSTM(nn.Module):
    """Bidirectional peephole LSTM with Paddle's parameter layout; both directions advance in one batched step.

    Parameters (d = direction, 0 forward / 1 backward; gate blocks c, i, f, o):
      weight_ih [2, E, 4H]  input projection u = e W_ih[d] (Paddle's rgb_fc_forward/backward.w_0)
      weight_hh [2, H, 4H]  recurrent weights (Paddle's rgb_lstm_*.w_0)
      bias      [2, 4H]     gate biases (first 4H of Paddle's rgb_lstm_*.b_0)
      peephole  [2, 3, H]   w_ic, w_fc, w_oc (last 3H of Paddle's rgb_lstm_*.b_0)
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        h4 = 4 * hidden_size
        self.weight_ih = nn.Parameter(torch.empty(2, input_size, h4))
        self.weight_hh = nn.Parameter(torch.empty(2, hidden_size, h4))
        self.bias = nn.Parameter(torch.zeros(2, h4))
        self.peephole = nn.Parameter(torch.empty(2, 3, hidden_size))
        k = hidden_size**-0.5
        for p in (self.weight_ih, self.weight_hh, self.peephole):
            nn.init.uniform_(p, -k, k)

    def forward(self, e: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """e [B, T, E], lengths [B] -> [B, T, 2H] = [h_fwd ; h_bwd], zeros at padded steps."""
        b, t, _ = e.shape
        h = self.hidden_size
        valid = length_mask(lengths.clamp(0, t), t)  # [B, T]
        rev = reverse_index(lengths, t)  # [B, T]
        # All input projections of both directions in one matmul: [B, T, 2, 4H].
        w_in = self.weight_ih.permute(1, 0, 2).reshape(self.input_size, 8 * h)
        u = (e @ w_in + self.bias.reshape(8 * h)).view(b, t, 2, 4 * h)
        u_fwd = u[:, :, 0]
        u_bwd = u[:, :, 1].gather(1, rev[:, :, None].expand(b, t, 4 * h))  # backward runs on the reversed valid part
        x = torch.stack((u_fwd, u_bwd), 0).permute(2, 0, 1, 3)  # [T, 2, B, 4H]
        # After reversal both directions have their valid steps first, so one mask serves both; steps past the
        # longest sequence are skipped entirely.
        steps = int(valid.sum(1).max()) if b else 0
        mask = valid.t().to(e.dtype)[:, None, :, None]  # [T, 1, B, 1]
        p_i, p_f, p_o = (self.peephole[:, k, None, :] for k in range(3))  # [2, 1, H]
        h_t = e.new_zeros(2, b, h)
        c_t = e.new_zeros(2, b, h)
        outs = []
        # unbind (not x[s]): its backward stacks the step gradients once, where indexing would allocate and
        # fill a full-size zero gradient of x at every step.
        for x_s, m_s in zip(x[:steps].unbind(0), mask[:steps].unbind(0), strict=True):
            g = torch.baddbmm(x_s, h_t, self.weight_hh)  # [2, B, 4H]
            g_c, g_i, g_f, g_o = g.chunk(4, dim=-1)
            i = torch.sigmoid(g_i + p_i * c_t)
            f = torch.sigmoid(g_f + p_f * c_t)
            c_t = f * c_t + i * torch.tanh(g_c)
            o = torch.sigmoid(g_o + p_o * c_t)
            # Padded steps come after every valid one (in both directions), so the state may run on past them:
            # only their outputs are zeroed.
            h_t = o * torch.tanh(c_t)
            outs.append(h_t * m_s)
        if steps < t:
            outs.extend([e.new_zeros(2, b, h)] * (t - steps))
        y = torch.stack(outs, 0)  # [T, 2, B, H]
        y_fwd = y[:, 0].transpose(0, 1)
        y_bwd = y[:, 1].transpose(0, 1).gather(1, rev[:, :, None].expand(b, t, h))
        return torch.cat((y_fwd, y_bwd), dim=-1)


@register_model
class AttentionLSTM(SequenceModel):
    """VideoTag's Attention-LSTM: forward(features [B, T, D], lengths [B]) -> logits [B, C]."""

    name = "attention_lstm"

    def __init__(
        self,
        feature_dim: int,
        num_classes: int,
        embedding_size: int = 1024,
        lstm_size: int = 512,
        dropout: float = 0.5,
        fc1_size: int = 8192,
        fc2_size: int = 4096,
        onnx_lstm_impl: str = "scan",
    ) -> None:
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"attention_lstm: dropout must be in [0, 1), got {dropout}")
        if onnx_lstm_impl not in LSTM_IMPLS:
            raise ValueError(f"attention_lstm: onnx_lstm_impl must be one of {LSTM_IMPLS}, got {onnx_lstm_impl!r}")
        super().__init__(
            feature_dim,
            num_classes,
            embedding_size=embedding_size,
            lstm_size=lstm_size,
            dropout=dropout,
            fc1_size=fc1_size,
            fc2_size=fc2_size,
            onnx_lstm_impl=onnx_lstm_impl,
        )
        self.dropout = float(dropout)
        self.onnx_lstm_impl = onnx_lstm_impl
        self.embed = nn.Linear(feature_dim, embedding_size)
        self.lstm = PeepholeBiLSTM(embedding_size, lstm_size)
        self.attention = nn.Linear(2 * lstm_size, 1, bias=False)
        self.fc1 = nn.Linear(2 * lstm_size, fc1_size)
        self.fc2 = nn.Linear(fc1_size, fc2_size)
        self.output = nn.Linear(fc2_size, num_classes)

    def _dropout(self, x: torch.Tensor) -> torch.Tensor:
        # Paddle's dropout_implementation="downgrade_in_infer": train keeps with prob 1-p, no 1/(1-p) upscaling;
        # inference multiplies by (1-p). The released weights expect exactly this.
        if self.dropout == 0.0:
            return x
        if self.training:
            return x * (torch.rand_like(x) >= self.dropout).to(x.dtype)
        return x * (1.0 - self.dropout)

    def pooled(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """features [B, T, D], lengths [B] -> attention-pooled LSTM output [B, 2H]."""
        mask = length_mask(lengths, features.shape[1])
        e = torch.tanh(self.embed(features))
        hs = self._dropout(self.lstm(e, lengths))
        scores = self.attention(hs).squeeze(-1).masked_fill(~mask, _NEG)
        a = torch.softmax(scores, dim=1)
        return torch.bmm(a[:, None, :], hs).squeeze(1)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """features [B, T, D], lengths [B] -> logits [B, C]."""
        x = torch.relu(self.fc1(self.pooled(features, lengths)))
        x = torch.tanh(self.fc2(x))
        return self.output(x)

    def output_layer_names(self) -> list[str]:
        return ["output."]

    def export_onnx_graph(self, path: str | Path, opset: int, lstm_impl: str | None = None) -> None:
        """Write features [B, T, D] f32, lengths [B] i64 -> probabilities [B, C] f32 (sigmoid) to `path`.

        lstm_impl: "scan" (any provider) or "onnx_lstm" (native LSTM op; CPU provider only, see module doc).
        """
        lstm_impl = lstm_impl or self.onnx_lstm_impl
        if lstm_impl not in LSTM_IMPLS:
            raise ValueError(f"lstm_impl must be one of {LSTM_IMPLS}, got {lstm_impl!r}")
        if opset < 13:
            raise ValueError(f"attention_lstm ONNX export needs opset >= 13, got {opset}")
        import onnx

        model = _build_onnx(self, opset, lstm_impl)
        onnx.checker.check_model(model)
        onnx.save_model(model, str(path))


# ---------------------------------------------------------------------------------------------------------------
# Hand-built ONNX graph


class _Graph:
    """Tiny helper around onnx.helper: every op returns its output name(s)."""

    def __init__(self, prefix: str = "") -> None:
        self.nodes: list = []
        self.inits: list = []
        self.prefix = prefix
        self._n = 0

    def _name(self, hint: str) -> str:
        self._n += 1
        return f"{self.prefix}{hint}_{self._n}"

    def const(self, hint: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self._name(hint)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def i64(self, *values: int) -> str:
        return self.const("i64", np.array(values, dtype=np.int64))

    def f32(self, value: float) -> str:
        return self.const("f32", np.array(value, dtype=np.float32))

    def op(self, op_type: str, *inputs: str, outputs: int | list[str] = 1, **attrs: Any):
        from onnx import helper

        names = outputs if isinstance(outputs, list) else [self._name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=self._name(op_type), **attrs))
        return names[0] if len(names) == 1 else names


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float32).numpy()


def _build_onnx(m: AttentionLSTM, opset: int, lstm_impl: str):
    from onnx import TensorProto, helper

    g = _Graph()
    feats, lengths = "features", "lengths"

    # Time mask and sizes, all dynamic.
    shape = g.op("Shape", feats)
    batch = g.op("Slice", shape, g.i64(0), g.i64(1))  # [1]
    t_len = g.op("Squeeze", g.op("Slice", shape, g.i64(1), g.i64(2)), g.i64(0))  # scalar
    steps = g.op("Range", g.const("zero", np.array(0, np.int64)), t_len, g.const("one", np.array(1, np.int64)))
    steps_row = g.op("Unsqueeze", steps, g.i64(0))  # [1, T]
    lens = g.op("Min", lengths, t_len)  # lengths beyond T mean "all of it", as in torch (clamp)
    lens_col = g.op("Unsqueeze", lens, g.i64(1))  # [B, 1]
    valid = g.op("Less", steps_row, lens_col)  # [B, T] bool
    valid_f = g.op("Cast", valid, to=TensorProto.FLOAT)

    # e = tanh(x W_e + b_e)
    e = g.op("MatMul", feats, g.const("embed_w", _np(m.embed.weight).T))
    e = g.op("Tanh", g.op("Add", e, g.const("embed_b", _np(m.embed.bias))))

    if lstm_impl == "onnx_lstm":
        hs = _onnx_lstm(g, m, e, lens)
    else:
        hs = _scan_lstm(g, m, e, batch, steps_row, lens_col, valid, valid_f)

    # Zero padded steps whatever the LSTM left there, then dropout's inference scale.
    hs = g.op("Mul", hs, g.op("Unsqueeze", valid_f, g.i64(2)))
    if m.dropout:
        hs = g.op("Mul", hs, g.f32(1.0 - m.dropout))

    # Attention over valid steps.
    scores = g.op("Squeeze", g.op("MatMul", hs, g.const("att_w", _np(m.attention.weight).T)), g.i64(2))  # [B, T]
    scores = g.op("Where", valid, scores, g.f32(_NEG))
    att = g.op("Softmax", scores, axis=1)
    pooled = g.op("Squeeze", g.op("MatMul", g.op("Unsqueeze", att, g.i64(1)), hs), g.i64(1))  # [B, 2H]

    def fc(x: str, layer: nn.Linear, hint: str) -> str:
        return g.op("Gemm", x, g.const(hint + "_w", _np(layer.weight).T), g.const(hint + "_b", _np(layer.bias)))

    x = g.op("Relu", fc(pooled, m.fc1, "fc1"))
    x = g.op("Tanh", fc(x, m.fc2, "fc2"))
    g.op("Sigmoid", fc(x, m.output, "output"), outputs=["probabilities"])

    graph = helper.make_graph(
        g.nodes,
        f"attention_lstm_{lstm_impl}",
        [
            helper.make_tensor_value_info(feats, TensorProto.FLOAT, ["batch", "time", m.feature_dim]),
            helper.make_tensor_value_info(lengths, TensorProto.INT64, ["batch"]),
        ],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", m.num_classes])],
        initializer=g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="videotag")
    model.ir_version = min(model.ir_version, 8)  # readable by older ONNX Runtime builds too
    return model


def _onnx_lstm(g: _Graph, m: AttentionLSTM, e: str, lengths: str) -> str:
    """Native ONNX LSTM: the per-direction projection W_p folds into the op's W. Returns [B, T, 2H]."""
    from onnx import TensorProto

    lstm = m.lstm
    h = lstm.hidden_size
    # Paddle gate blocks (c, i, f, o) -> ONNX (i, o, f, c).
    perm = np.concatenate([np.arange(k * h, (k + 1) * h) for k in (1, 3, 2, 0)])
    w_ih, w_hh, bias, peep = _np(lstm.weight_ih), _np(lstm.weight_hh), _np(lstm.bias), _np(lstm.peephole)
    w = np.stack([w_ih[d][:, perm].T for d in range(2)])  # [2, 4H, E]
    r = np.stack([w_hh[d][:, perm].T for d in range(2)])  # [2, 4H, H]
    b = np.stack([np.concatenate([bias[d][perm], np.zeros(4 * h, np.float32)]) for d in range(2)])  # [2, 8H]
    p = np.stack([np.concatenate([peep[d][0], peep[d][2], peep[d][1]]) for d in range(2)])  # [2, 3H]: i, o, f
    x = g.op("Transpose", e, perm=[1, 0, 2])  # [T, B, E]
    seq = g.op("Cast", lengths, to=TensorProto.INT32)
    y = g.op(
        "LSTM",
        x,
        g.const("lstm_W", w),
        g.const("lstm_R", r),
        g.const("lstm_B", b),
        seq,
        "",
        "",
        g.const("lstm_P", p),
        outputs=3,
        hidden_size=h,
        direction="bidirectional",
    )[0]  # Y [T, 2, B, H]; the reverse direction honours sequence_lens
    y = g.op("Transpose", y, perm=[2, 0, 1, 3])  # [B, T, 2, H]
    return g.op("Reshape", y, g.i64(0, 0, 2 * h))


def _scan_lstm(
    g: _Graph, m: AttentionLSTM, e: str, batch: str, steps_row: str, lens_col: str, valid: str, valid_f: str
) -> str:
    """Peephole cells as one ONNX Scan over time (both directions in the same body). Returns [B, T, 2H].

    Each direction keeps its own [B, H] state and 2-D MatMul with a weight that is an initializer of the body
    itself (so ONNX Runtime can pre-pack it once instead of re-packing a batched 3-D MatMul every step).
    """
    from onnx import TensorProto, helper

    lstm = m.lstm
    h = lstm.hidden_size
    w_ih, w_hh, bias, peep = _np(lstm.weight_ih), _np(lstm.weight_hh), _np(lstm.bias), _np(lstm.peephole)

    # Reverse index per sequence (valid part reversed, padding fixed): L-1-t where t < L, else t.
    rev = g.op("Where", valid, g.op("Sub", g.op("Sub", lens_col, g.i64(1)), steps_row), steps_row)  # [B, T]
    rev3 = g.op("Unsqueeze", rev, g.i64(2))  # [B, T, 1]
    e_rev = g.op("GatherElements", e, g.op("Expand", rev3, g.op("Shape", e)), axis=1)
    u_f = g.op("Add", g.op("MatMul", e, g.const("proj_fwd", w_ih[0])), g.const("bias_fwd", bias[0]))
    u_b = g.op("Add", g.op("MatMul", e_rev, g.const("proj_bwd", w_ih[1])), g.const("bias_bwd", bias[1]))
    x_f = g.op("Transpose", u_f, perm=[1, 0, 2])  # [T, B, 4H]
    x_b = g.op("Transpose", u_b, perm=[1, 0, 2])
    m_seq = g.op("Unsqueeze", g.op("Transpose", valid_f, perm=[1, 0]), g.i64(2))  # [T, B, 1]
    state_shape = g.op("Concat", batch, g.i64(h), axis=0)
    zero = helper.make_tensor("zero_f", TensorProto.FLOAT, [1], [0.0])
    h0 = g.op("ConstantOfShape", state_shape, value=zero)

    body = _Graph(prefix="cell_")
    f32 = TensorProto.FLOAT
    inputs, outputs = [], []
    for d, tag in enumerate(("fwd", "bwd")):
        hp, cp, xt = f"h_prev_{tag}", f"c_prev_{tag}", f"x_t_{tag}"
        split = body.i64(h, h, h, h)
        gates = body.op("Add", xt, body.op("MatMul", hp, body.const(f"R_{tag}", w_hh[d])))  # [B, 4H]
        gc, gi, gf, go = body.op("Split", gates, split, outputs=4, axis=1)
        p_i, p_f, p_o = (body.const(f"peep_{k}_{tag}", peep[d, j]) for j, k in enumerate("ifo"))  # [H]
        i = body.op("Sigmoid", body.op("Add", gi, body.op("Mul", p_i, cp)))
        f = body.op("Sigmoid", body.op("Add", gf, body.op("Mul", p_f, cp)))
        c = body.op("Add", body.op("Mul", f, cp), body.op("Mul", i, body.op("Tanh", gc)), outputs=[f"c_next_{tag}"])
        o = body.op("Sigmoid", body.op("Add", go, body.op("Mul", p_o, c)))
        body.op("Mul", o, body.op("Tanh", c), outputs=[f"h_next_{tag}"])
        body.op("Mul", f"h_next_{tag}", "m_t", outputs=[f"y_t_{tag}"])  # zero outputs at padded steps
        inputs += [(hp, ["B", h]), (cp, ["B", h])]
        outputs += [(f"h_next_{tag}", ["B", h]), (f"c_next_{tag}", ["B", h])]
    # Scan body signature: states (h_f, c_f, h_b, c_b), then scan inputs (x_f, x_b, m); outputs: states, then ys.
    body_inputs = inputs + [("x_t_fwd", ["B", 4 * h]), ("x_t_bwd", ["B", 4 * h]), ("m_t", ["B", 1])]
    body_outputs = outputs + [("y_t_fwd", ["B", h]), ("y_t_bwd", ["B", h])]
    body_graph = helper.make_graph(
        body.nodes,
        "peephole_cells",
        [helper.make_tensor_value_info(n, f32, s) for n, s in body_inputs],
        [helper.make_tensor_value_info(n, f32, s) for n, s in body_outputs],
        initializer=body.inits,
    )
    res = g.op("Scan", h0, h0, h0, h0, x_f, x_b, m_seq, outputs=6, body=body_graph, num_scan_inputs=3)
    y_f, y_b = res[4], res[5]  # [T, B, H] each; y_b in reversed-valid order
    y_f = g.op("Transpose", y_f, perm=[1, 0, 2])
    y_b = g.op("Transpose", y_b, perm=[1, 0, 2])
    y_b = g.op("GatherElements", y_b, g.op("Expand", rev3, g.op("Shape", y_b)), axis=1)  # back to original order
    return g.op("Concat", y_f, y_b, axis=2)
