"""Independent NumPy (float64) reference of the Paddle 1.x operators VideoTag runs, written from Paddle's op
definitions, with Paddle's own parameter names. Used to check imported/exported models, never by the product.

Sequences are handled the Paddle way: a LoD batch = all sequences concatenated along time + offsets, and every
sequence op loops over its own [offset_i, offset_{i+1}) rows, so padding does not exist here at all.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# ----------------------------------------------------------------------------------------------- stage 2


def fc(x: np.ndarray, params: dict, name: str, bias: bool = True) -> np.ndarray:
    """fluid.layers.fc: x [N, in] @ `name.w_0` [in, out] (+ `name.b_0`)."""
    y = x @ params[f"{name}.w_0"].astype(np.float64)
    if bias:
        y = y + params[f"{name}.b_0"].astype(np.float64).reshape(-1)
    return y


def lstm_op(x: np.ndarray, offsets: list[int], weight: np.ndarray, bias: np.ndarray, is_reverse: bool) -> np.ndarray:
    """Paddle `lstm` op (dynamic_lstm) with peepholes, zero h0/c0, sigmoid gates, tanh cell/candidate.

    x [N, 4H] (already projected), weight [H, 4H] with gate blocks (c, i, f, o), bias [1, 7H] = gate biases
    (c, i, f, o) then peepholes (w_ic, w_fc, w_oc). Returns hidden [N, H] in the input's row order.
    """
    hsz = weight.shape[0]
    weight = weight.astype(np.float64)
    b = bias.astype(np.float64).reshape(-1)
    gate_bias, w_ic, w_fc, w_oc = b[: 4 * hsz], b[4 * hsz : 5 * hsz], b[5 * hsz : 6 * hsz], b[6 * hsz :]
    out = np.zeros((x.shape[0], hsz))
    for s in range(len(offsets) - 1):
        rows = list(range(offsets[s], offsets[s + 1]))
        if is_reverse:
            rows = rows[::-1]
        h_prev, c_prev = np.zeros(hsz), np.zeros(hsz)
        for r in rows:
            g = x[r] + gate_bias + h_prev @ weight
            g_c, g_i, g_f, g_o = (g[k * hsz : (k + 1) * hsz] for k in range(4))
            i = sigmoid(g_i + w_ic * c_prev)
            f = sigmoid(g_f + w_fc * c_prev)
            c = f * c_prev + i * np.tanh(g_c)
            o = sigmoid(g_o + w_oc * c)
            h = o * np.tanh(c)
            out[r] = h
            h_prev, c_prev = h, c
    return out


def sequence_softmax(x: np.ndarray, offsets: list[int]) -> np.ndarray:
    """Softmax of x [N, 1] within each sequence."""
    out = np.empty_like(x)
    for s in range(len(offsets) - 1):
        seg = x[offsets[s] : offsets[s + 1], 0]
        e = np.exp(seg - seg.max())
        out[offsets[s] : offsets[s + 1], 0] = e / e.sum()
    return out


def sequence_pool_sum(x: np.ndarray, offsets: list[int]) -> np.ndarray:
    return np.stack([x[offsets[s] : offsets[s + 1]].sum(0) for s in range(len(offsets) - 1)])


def attention_lstm(params: dict, sequences: list[np.ndarray], dropout: float = 0.5) -> np.ndarray:
    """VideoTag's AttentionLSTM at inference (is_test=True) on a list of [T_i, D] features -> probs [B, C]."""
    offsets = np.cumsum([0] + [len(s) for s in sequences]).tolist()
    x = np.concatenate(sequences).astype(np.float64)
    emb = np.tanh(fc(x, params, "rgb_fc"))
    fwd = lstm_op(
        fc(emb, params, "rgb_fc_forward", bias=False),
        offsets,
        params["rgb_lstm_forward.w_0"],
        params["rgb_lstm_forward.b_0"],
        is_reverse=False,
    )
    bwd = lstm_op(
        fc(emb, params, "rgb_fc_backward", bias=False),
        offsets,
        params["rgb_lstm_backward.w_0"],
        params["rgb_lstm_backward.b_0"],
        is_reverse=True,
    )
    hs = np.concatenate([fwd, bwd], axis=1)
    hs = hs * (1.0 - dropout)  # dropout, downgrade_in_infer, is_test
    weight = sequence_softmax(fc(hs, params, "rgb_weight", bias=False), offsets)
    pooled = sequence_pool_sum(hs * weight, offsets)
    y = np.maximum(fc(pooled, params, "fc1"), 0.0)
    y = np.tanh(fc(y, params, "fc2"))
    return sigmoid(fc(y, params, "output"))


# ----------------------------------------------------------------------------------------------- stage 1


def conv2d(x: np.ndarray, w: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """NCHW conv, OIHW weights, no bias, symmetric zero padding (im2col + matmul)."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    oh, ow = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    cols = np.empty((n, c, kh, kw, oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = xp[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride]
    cols = cols.reshape(n, c * kh * kw, oh * ow)
    y = np.einsum("ok,nkp->nop", w.reshape(o, -1).astype(x.dtype), cols, optimize=True)
    return y.reshape(n, o, oh, ow)


def batch_norm(x: np.ndarray, params: dict, name: str, eps: float = 1e-5) -> np.ndarray:
    """Paddle batch_norm, is_test: (x - mean) / sqrt(variance + eps) * scale + offset."""

    def v(k: str) -> np.ndarray:
        return params[f"{name}_{k}"].astype(x.dtype)[None, :, None, None]

    return (x - v("mean")) / np.sqrt(v("variance") + eps) * v("scale") + v("offset")


def max_pool_3x3_s2_p1(x: np.ndarray) -> np.ndarray:
    """pool2d(pool_size=3, stride=2, padding=1, max): padding never wins."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    oh, ow = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    out = np.full((n, c, oh, ow), -np.inf, dtype=x.dtype)
    for i in range(3):
        for j in range(3):
            out = np.maximum(out, xp[:, :, i : i + 2 * oh : 2, j : j + 2 * ow : 2])
    return out


def conv_bn(x: np.ndarray, params: dict, name: str, stride: int, act: bool) -> np.ndarray:
    """TSN's conv_bn_layer: `name_weights`, BN named bn_conv1 / bn + name[3:], padding (k-1)//2."""
    w = params[f"{name}_weights"]
    y = conv2d(x, w, stride, (w.shape[2] - 1) // 2)
    y = batch_norm(y, params, "bn_conv1" if name == "conv1" else "bn" + name[3:])
    return np.maximum(y, 0.0) if act else y


def resnet_block_names(depth: int = 101) -> list[tuple[str, int]]:
    """(Paddle block name, stage index) in order, as TSN's ResNet names them."""
    stages = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}[depth]
    out = []
    for stage, count in enumerate(stages):
        for i in range(count):
            if depth == 101 and stage == 2:
                name = "res4a" if i == 0 else f"res4b{i}"
            else:
                name = f"res{stage + 2}{chr(97 + i)}"
            out.append((name, stage))
    return out


def tsn_resnet_features(params: dict, x: np.ndarray, depth: int = 101) -> np.ndarray:
    """TSN ResNet on normalised NCHW input -> global-average-pooled features [N, 2048]."""
    y = conv_bn(x, params, "conv1", 2, act=True)
    y = max_pool_3x3_s2_p1(y)
    prev_stage = 0
    for name, stage in resnet_block_names(depth):
        stride = 2 if stage != prev_stage else 1
        prev_stage = stage
        a = conv_bn(y, params, name + "_branch2a", 1, act=True)
        b = conv_bn(a, params, name + "_branch2b", stride, act=True)
        c = conv_bn(b, params, name + "_branch2c", 1, act=False)
        short = conv_bn(y, params, name + "_branch1", stride, act=False) if name.endswith("a") else y
        y = np.maximum(short + c, 0.0)
    return y.mean(axis=(2, 3))


# ----------------------------------------------------------------------------------------------- input side


def videotag_crop(rgb: np.ndarray) -> np.ndarray:
    """VideoTag's frame transform on [H, W, 3] uint8 RGB -> [224, 224, 3] uint8.

    PIL bilinear resize to a fixed 341x256 (w >= h) or 256x341 (w < h) unless the short side is already 256,
    then a 224 centre crop at int(round((d - 224) / 2)).
    """
    img = Image.fromarray(rgb)
    w, h = img.size
    if not ((w <= h and w == 256) or (h <= w and h == 256)):
        img = img.resize((256, int(256 * 4.0 / 3.0)) if w < h else (int(256 * 4.0 / 3.0), 256), Image.BILINEAR)
    w, h = img.size
    x1, y1 = int(round((w - 224) / 2.0)), int(round((h - 224) / 2.0))
    return np.asarray(img.crop((x1, y1, x1 + 224, y1 + 224)))


def videotag_normalise(crops: np.ndarray) -> np.ndarray:
    """[N, 224, 224, 3] uint8 -> [N, 3, 224, 224] float64: /255, minus ImageNet mean, over std."""
    x = crops.astype(np.float64).transpose(0, 3, 1, 2) / 255.0
    return (x - np.array(IMAGENET_MEAN)[None, :, None, None]) / np.array(IMAGENET_STD)[None, :, None, None]


def videotag_sample(num_decoded: int, n: int = 300) -> list[int]:
    """VideoTag's frame choice: centre of each of n equal segments, cyclic repeat when there are < n frames."""
    avg = num_decoded // n
    if avg >= 1:
        return [(avg - 1) // 2 + i * avg for i in range(n)]
    return [i % num_decoded for i in range(n)]


# ----------------------------------------------------------------------------------------------- random weights


def random_tsn_params(depth: int = 101, seed: int = 0, with_fc: int | None = 400) -> dict[str, np.ndarray]:
    """TSN ResNet parameters with VideoTag's exact names and shapes, random but numerically tame.

    He-scaled convs and BN statistics near identity keep activations O(1); the last BN of every residual branch
    gets a small scale (and each projection shortcut a moderate one) so 33 stacked residual additions keep the
    features O(1) instead of O(100).
    """
    rng = np.random.default_rng(seed)
    p: dict[str, np.ndarray] = {}

    def conv(name: str, o: int, i: int, k: int) -> None:
        p[f"{name}_weights"] = rng.standard_normal((o, i, k, k), dtype=np.float32) * np.float32(
            np.sqrt(2.0 / (i * k * k))
        )

    def bn(name: str, c: int, scale: float) -> None:
        p[f"{name}_scale"] = (scale * rng.uniform(0.7, 1.3, c)).astype(np.float32)
        p[f"{name}_offset"] = rng.normal(0.0, 0.1, c).astype(np.float32)
        p[f"{name}_mean"] = rng.normal(0.0, 0.1, c).astype(np.float32)
        p[f"{name}_variance"] = rng.uniform(0.5, 1.5, c).astype(np.float32)

    conv("conv1", 64, 3, 7)
    bn("bn_conv1", 64, 1.0)
    inplanes, prev = 64, -1
    for name, stage in resnet_block_names(depth):
        planes = 64 * 2**stage
        conv(name + "_branch2a", planes, inplanes, 1)
        bn("bn" + name[3:] + "_branch2a", planes, 1.0)
        conv(name + "_branch2b", planes, planes, 3)
        bn("bn" + name[3:] + "_branch2b", planes, 1.0)
        conv(name + "_branch2c", 4 * planes, planes, 1)
        bn("bn" + name[3:] + "_branch2c", 4 * planes, 0.1)
        if stage != prev:
            conv(name + "_branch1", 4 * planes, inplanes, 1)
            bn("bn" + name[3:] + "_branch1", 4 * planes, 0.5)
        prev, inplanes = stage, 4 * planes
    if with_fc:
        p["fc_0.w_0"] = rng.normal(0, 0.01, (2048, with_fc)).astype(np.float32)
        p["fc_0.b_0"] = np.zeros(with_fc, np.float32)
    return p


def random_attention_lstm_params(
    num_classes: int = 3396,
    seed: int = 0,
    feature_dim: int = 2048,
    embedding: int = 1024,
    lstm: int = 512,
    fc1: int = 8192,
    fc2: int = 4096,
) -> dict[str, np.ndarray]:
    """VideoTag Attention-LSTM parameters (exact names; VideoTag's shapes by default), random, O(1) activations."""
    rng = np.random.default_rng(seed)

    def w(i: int, o: int, gain: float = 1.0) -> np.ndarray:
        return rng.standard_normal((i, o), dtype=np.float32) * np.float32(gain / np.sqrt(i))

    def b(n: int, s: float = 0.1) -> np.ndarray:
        return rng.normal(0.0, s, n).astype(np.float32)

    p = {"rgb_fc.w_0": w(feature_dim, embedding), "rgb_fc.b_0": b(embedding)}
    for d in ("forward", "backward"):
        p[f"rgb_fc_{d}.w_0"] = w(embedding, 4 * lstm)
        p[f"rgb_lstm_{d}.w_0"] = w(lstm, 4 * lstm)
        p[f"rgb_lstm_{d}.b_0"] = np.concatenate([b(4 * lstm), b(3 * lstm, 0.5)])[None, :]  # biases + peepholes
    p["rgb_weight.w_0"] = w(2 * lstm, 1, 4.0)  # peaky enough that attention matters
    p.update({"fc1.w_0": w(2 * lstm, fc1, 2.0), "fc1.b_0": b(fc1)})
    p.update({"fc2.w_0": w(fc1, fc2, 2.0), "fc2.b_0": b(fc2)})
    p.update({"output.w_0": w(fc2, num_classes, 2.0), "output.b_0": b(num_classes, 1.0)})
    return p
