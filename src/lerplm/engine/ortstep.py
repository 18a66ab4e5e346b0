"""The engine's step on ONNX Runtime: a weight-only quantised base (int8 or int4) on the CPU.

A batch-1 decode step reads every weight once, so its time is bytes per weight plus the fixed cost
of each operator. ONNX Runtime's ``MatMulNBits`` (int4 in GGUF's blocks of 32 inputs, int8 in blocks of
up to 128; activations quantised to int8 per block on the fly) reads int4 or int8 weights near memory
speed, and its graph runs the step's ~700 operators with far less overhead per operator than eager
torch: on this project's 2-core machine a SmolLM2-135M decode step with four stacked anchors takes
~8 ms in int8, against ~60 ms for the fp32 torch step and ~23 ms for torch's packed int4 kernels
(docs/performance.md).

The graph is the same computation as ``FastDecoder``: every token of a call is a row with its own
adapter coefficients, each fused layer adds its stacked adapters as t B_catᵀ with t = (x A_catᵀ) ⊙ c[seg]
(int8; over an int8 base as one product [x, t] [W, B_cat]ᵀ), and ``GroupQueryAttention`` applies the
rotary embedding and attends in place in the engine's slot cache: the cache tensors are bound as both
the past and the present state, so nothing is copied when rows join or leave. A call's tokens come
packed, one after another, and every product runs on them alone; only attention sees them laid out by
cache row. One call runs the decoding rows (one token each, over the slot range they span; a slot in that
range that is not decoding is a dummy row, which costs only its attention: it writes one cache position
no sequence needs, ``plan.idle``'s, and attends to the positions before it); one call runs the prompts
that start in a step (their cache written to a scratch buffer, then copied to their slots), and one call
each chunk that continues a prompt.

Prefill chunks run in a second graph of the same weights whose products are int8 x int8 (ONNX Runtime's
integer GEMM, 2-2.5x ``MatMulNBits``' rate at tens of rows): weights rounded per output, activations per
token, so a token's numbers do not depend on its chunk. Per-token rounding suffers from the few input channels
that run far above the rest, and a few calibration prompts say which: the products after each norm (q/k/v,
gate/up) take part of each channel's range into their weights (SmoothQuant: x Wᵀ = (x / s)(W s)ᵀ, 1 / s folded
into the norm's weights), and the attention output and down projections, which no norm precedes and whose
inputs run furthest apart, compute their widest input channels in fp32 beside the int8 product of the rest (as
LLM.int8() does). The cache the prefill graph writes has the same meaning as the decode graph's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import LerpError
from .decoder import GROUPS, FastDecoder

SCHEMES = ("fp32", "int8", "int4")
BITS = {"int8": 8, "int4": 4}
BLOCK = 32  # inputs per int4 quantisation block (the GGUF Q4_1 block size)
INT8_BLOCKS = (64, 32)  # int8 takes the largest that divides a layer's inputs (docs/performance.md)
SMOOTHING = 0.7  # SmoothQuant's alpha: the share of each input channel's range moved into the prefill's weights
OUTLIER_CHANNELS = 128  # widest input channels of the prefill's o and down products kept in fp32 (at most 1/8)
OUTLIER_SMOOTHING = 0.5  # alpha for the rest of o's and down's inputs
NORMED = ("qkv", "gate_up")  # the products that read a norm's output, which takes their smoothing


def block_size(in_f: int, bits: int) -> int:
    """Inputs per quantisation block: int4 keeps GGUF's 32; int8 takes 64 when it divides the inputs (fewer
    per-block scales to apply and to read than 32; benchmarks/matmul.py). Not 128: ``MatMulNBits`` sums a one-row
    product in 128-blocks in another order than several rows', so a row's numbers would depend on its batch."""
    if bits == 4:
        return BLOCK
    return next((b for b in INT8_BLOCKS if in_f % b == 0), INT8_BLOCKS[-1])


def quantize_blocks(w: torch.Tensor, bits: int, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``MatMulNBits`` weights for w (out, in): blocks of ``block`` inputs, each with a float scale, and the
    kernel's default zero point (128 for int8, 8 for int4), the one its fast path takes.

    int8 is symmetric. int4 keeps the asymmetric grid w = lo + q * scale of GGUF's Q4_1 (the embedded
    default's own weights, reproduced exactly) as (q - 8) * scale plus an offset lo + 8 * scale per
    block, which the graph adds as (block sums of x) · offsetᵀ. Returns (packed (out, blocks, bytes per
    block), scales (out * blocks), offsets (out, blocks) or None)."""
    out_f, in_f = w.shape
    blocks = -(-in_f // block)
    g = torch.zeros(out_f, blocks * block, dtype=torch.float64)
    g[:, :in_f] = w.detach().double().cpu()
    g = g.reshape(out_f, blocks, block)
    if bits == 8:
        scale = (g.abs().amax(-1) / 127).clamp(min=1e-12)
        q = (torch.round(g / scale[..., None]).clamp(-127, 127) + 128).to(torch.uint8)
        return q.numpy(), scale.reshape(-1).float().numpy(), None
    lo, hi = g.amin(-1), g.amax(-1)
    scale = ((hi - lo) / 15).clamp(min=1e-12)
    q = torch.round((g - lo[..., None]) / scale[..., None]).clamp(0, 15).to(torch.uint8)
    packed = q[..., 0::2] | (q[..., 1::2] << 4)
    return packed.numpy(), scale.reshape(-1).float().numpy(), (lo + 8 * scale).float().numpy()


def dequantize_blocks(packed: np.ndarray, scale: np.ndarray, offset: np.ndarray | None, in_f: int) -> torch.Tensor:
    """The weights ``quantize_blocks`` stands for, (out, in) float32: for tests and error bounds."""
    q = torch.from_numpy(packed.astype(np.int64))
    out_f, blocks = q.shape[:2]
    s = torch.from_numpy(scale).double().reshape(out_f, blocks, 1)
    if offset is None:
        w = (q - 128).double() * s
    else:
        q = torch.stack([q & 15, q >> 4], -1).reshape(out_f, blocks, -1)
        w = (q - 8).double() * s + torch.from_numpy(offset).double()[..., None]
    return w.reshape(out_f, -1)[:, :in_f].float()


class Graph:
    """A small ONNX graph builder: nodes, initialisers and fresh names."""

    def __init__(self, packed: dict | None = None) -> None:
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes: list = []
        self.inits: list = []
        self.count = 0
        self.per_token: dict[str, tuple[str, str]] = {}  # input -> its int8 rows and their scales
        self.packed = {} if packed is None else packed  # (key, bits, block) -> quantize_blocks' arrays

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"

    def const(self, value, prefix: str = "c") -> str:
        """An initialiser from a numpy array or a torch tensor (copied out in its own dtype)."""
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        name = self.name(prefix)
        self.inits.append(self.numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, kind: str, inputs: list[str], outputs: int | list[str] = 1, domain: str = "", **attrs):
        names = [self.name(kind) for _ in range(outputs)] if isinstance(outputs, int) else outputs
        self.nodes.append(self.helper.make_node(kind, inputs, names, domain=domain, **attrs))
        return names[0] if len(names) == 1 else names

    def serialize(self, name: str, inputs: list, outputs: list) -> bytes:
        """The model of these nodes (opset 17 and ONNX Runtime's contrib operators), serialised."""
        graph = self.helper.make_graph(self.nodes, name, inputs, outputs, self.inits)
        opsets = [self.helper.make_opsetid("", 17), self.helper.make_opsetid("com.microsoft", 1)]
        return self.helper.make_model(graph, opset_imports=opsets, ir_version=10).SerializeToString()

    def matmul(self, x: str, w: torch.Tensor, bits: int, block: int | None = None, key=None) -> str:
        """x wᵀ in ``MatMulNBits``; ``key`` names w for ``packed``, whose quantised arrays another graph of the same
        weights reuses (quantising takes a third of building a graph)."""
        out_f, in_f = w.shape
        if bits == 4 and in_f % BLOCK:
            bits = 8  # the block offsets need whole blocks; such layers are rare
        block = block or block_size(in_f, bits)
        name = None if key is None else (key, bits, block)
        arrays = self.packed.get(name) if name else None
        if arrays is None:
            arrays = quantize_blocks(w, bits, block)
            if name:
                self.packed[name] = arrays
        packed, scale, offset = arrays
        # accuracy_level 4: int8 activations, the kernels that read int4/int8 weights at memory speed
        attrs = dict(K=in_f, N=out_f, bits=bits, block_size=block, accuracy_level=4)
        y = self.op(
            "MatMulNBits", [x, self.const(packed, "w"), self.const(scale, "s")], domain="com.microsoft", **attrs
        )
        if offset is None:
            return y
        blocks = self.op("Reshape", [x, self.const(np.array([-1, in_f // BLOCK, BLOCK], np.int64))])
        sums = self.op("ReduceSum", [blocks, self.const(np.array([-1], np.int64))], keepdims=0)
        return self.op("Add", [y, self.op("MatMul", [sums, self.const(offset.T, "offset")])])

    def integer_matmul(
        self, x: str, w: torch.Tensor, outliers: torch.Tensor | None = None, smooth: torch.Tensor | None = None
    ) -> str:
        """x wᵀ as int8 x int8 (``MatMulIntegerToFloat``): w symmetric per output, x per token, quantised once per
        input whatever reads it; the input channels ``outliers`` (the same for every product of x) apart, in fp32,
        so that they do not set the tokens' int8 steps, and the rest divided by ``smooth`` (w's inputs multiplied
        by it) in the same pass that leaves the outliers out."""
        if x not in self.per_token:
            wide = None
            if outliers is not None:
                wide = self.op("Gather", [x, self.const(outliers.long(), "wide")], axis=-1)
                keep = torch.ones(w.shape[1]) if smooth is None else 1 / smooth.float()
                keep[outliers] = 0
                x_int = self.op("Mul", [x, self.const(keep, "keep")])
            else:
                x_int = x
            amax = self.op("ReduceMax", [self.op("Abs", [x_int])], axes=[-1], keepdims=1)
            scale = self.op(
                "Mul", [self.op("Max", [amax, self.const(np.float32(1e-12))]), self.const(np.float32(1 / 127))]
            )
            # QuantizeLinear per token (axis 0 of the tokens as rows): one pass, where Div, Round, Add, Cast took four
            per_row = self.op("Reshape", [scale, self.const(np.array([-1], np.int64))])
            zero = self.op("Expand", [self.const(np.uint8(128)), self.op("Shape", [per_row])])
            width = self.const(np.array([-1, w.shape[1]], np.int64))
            q = self.op("QuantizeLinear", [self.op("Reshape", [x_int, width]), per_row, zero], axis=0)
            self.per_token[x] = self.op("Reshape", [q, self.op("Shape", [x])]), scale, wide
        q, scale, wide = self.per_token[x]
        if outliers is not None:
            w, w_wide = w * (1 if smooth is None else smooth), w[:, outliers]
            w[:, outliers] = 0  # nor the weights' int8 steps
        w_scale = (w.abs().amax(1) / 127).clamp(min=1e-12)
        wq = torch.round(w / w_scale[:, None]).clamp(-127, 127).to(torch.int8).T
        inputs = [
            q,
            self.const(wq, "wq"),
            self.const(np.float32(1)),
            self.const(w_scale.float(), "ws"),
            self.const(np.uint8(128)),
        ]
        y = self.op("Mul", [self.op("MatMulIntegerToFloat", inputs, domain="com.microsoft"), scale])
        if outliers is None:
            return y
        return self.op("Add", [y, self.op("MatMul", [wide, self.const(w_wide.T.float().contiguous(), "w_wide")])])


@dataclass
class Calibration:
    """What the prefill graph takes from a few calibration prompts, per (layer, group): ``smooth``, the factors s
    that a product divides its input by and multiplies its weights' inputs by; ``outliers``, the input channels of
    the o and down products computed in fp32 (without them those products stay in blocks, unsmoothed)."""

    smooth: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)
    outliers: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)


def _adapter_layers(dec) -> list:
    """The fused layers of ``dec`` that carry stacked adapters."""
    return [getattr(block, group) for block in dec.layers for group in GROUPS if getattr(block, group).seg is not None]


def build_graph(dec, bits: int, prefill: Calibration | None = None, packed: dict | None = None) -> bytes:
    """The serialised step graph for ``dec``'s weights (a ``FastDecoder`` in fp32) with ``bits``-bit base
    weights, int8 adapters and an int8 output head; ``prefill``: the prefill graph, its products in int8 x int8
    per token instead, as that calibration says (see ``calibrate``). ``packed``: quantised weights shared by the
    builds of one step's graphs.

    A call's N tokens come packed, one after another, whichever cache rows they belong to (B rows of S positions
    each: a prompt's chunk, or a decoding row's one token), so every product runs on the N tokens alone and a
    token's numbers do not depend on the rows beside it; only attention lays them out by row.

    Inputs: embeds (1, N, hidden) the tokens' input embeddings, coeffs (1, N, K) per token (only with adapters),
    rows (B, S) the packed token at each position of each row (a row with fewer tokens repeats one of its own, a
    dummy row another row's: attention writes their keys and values where no sequence reads them), packed (N,) each
    token's place in those B x S, seqlens_k (B,) = last position written per row, total_seq_len (the cache length),
    logit_index (M,) the tokens that need logits, past_key_i / past_value_i (B, kv_heads, length, head_dim).
    Outputs: logits (M, vocab) and present_key_i / present_value_i, bound to the past buffers."""
    from onnx import TensorProto, helper

    g = Graph(packed)
    integer = prefill is not None
    smooth, outliers = (prefill.smooth, prefill.outliers) if integer else ({}, {})
    hq, hkv, d, eps = dec.heads, dec.kv_heads, dec.head_dim, float(dec.eps)
    hidden = dec.embed.shape[1]
    has_adapters = bool(_adapter_layers(dec))
    f32, i32, i64 = TensorProto.FLOAT, TensorProto.INT32, TensorProto.INT64
    kv_shape = ["B", hkv, "T", d]
    # the embedding table stays out of the graph (the caller gathers each call's rows): each session would copy it
    inputs = [helper.make_tensor_value_info("embeds", f32, [1, "N", hidden])]  # packed tokens (docstring)
    if has_adapters:
        inputs.append(helper.make_tensor_value_info("coeffs", f32, [1, "N", "K"]))
    inputs += [
        helper.make_tensor_value_info("seqlens_k", i32, ["B"]),
        helper.make_tensor_value_info("total_seq_len", i32, []),
        helper.make_tensor_value_info("logit_index", i64, ["M"]),
        helper.make_tensor_value_info("rows", i64, ["B", "S"]),
        helper.make_tensor_value_info("packed", i64, ["N"]),
    ]
    outputs = [helper.make_tensor_value_info("logits", f32, ["M", dec.lm_head.weight.shape[0]])]
    per_rank: dict[int, str] = {}  # one (N, R) coefficient tensor per rank layout, shared by the layers

    def linear(x: str, layer, key: tuple[int, str]) -> str:
        """x through ``layer`` (``key``: its layer and group); in the prefill graph in int8 x int8 products (ONNX
        Runtime's integer GEMM) as the calibration says: after a norm with x divided by the smoothing factors (in
        the norm's weights) and the weights' inputs multiplied by them; o and down with their outlier channels
        apart (without them: in blocks)."""
        w, a, b = layer.base.weight, layer.a, layer.b
        normed = key[1] in NORMED
        smooth_by, wide = smooth.get(key), outliers.get(key)
        in_integer = integer and (normed or wide is not None)
        rescaled = normed and smooth_by is not None  # these weights are not the decode graph's: no sharing
        if rescaled:
            w, a = w * smooth_by, None if a is None else a * smooth_by

        def matmul(x: str, w: torch.Tensor, wbits: int, role: str) -> str:
            if in_integer and role == "b":  # t = (x Aᵀ) ⊙ c: no outliers known, nothing to smooth
                return g.integer_matmul(x, w)
            if in_integer:
                return g.integer_matmul(x, w, wide, None if normed else smooth_by)
            return g.matmul(x, w, wbits, key=None if rescaled else (id(layer), role))

        if layer.seg is None:
            y = matmul(x, w, bits, "w")
        else:
            seg = id(layer.seg)
            if seg not in per_rank:
                per_rank[seg] = g.op("Gather", [coeffs, g.const(layer.seg, "seg")], axis=-1)
            t = g.op("Mul", [matmul(x, a, 8, "a"), per_rank[seg]])
            block = block_size(w.shape[1], 8)
            if bits == 8 and w.shape[1] % block == 0 and not in_integer:
                # [x, t] [W, B]ᵀ: the second product and its sum ride in the base's own int8 product (in blocks
                # that divide x's width, so B's blocks are its own: the same numbers as apart), one operator
                # and one pass fewer
                y = g.matmul(g.op("Concat", [x, t], axis=-1), torch.cat([w, b], 1), 8, block, (id(layer), "wb"))
            else:
                y = g.op("Add", [matmul(x, w, bits, "w"), matmul(t, b, 8, "b")])
        if layer.base.bias is not None:
            y = g.op("Add", [y, g.const(layer.base.bias, "bias")])
        return y

    # one (N, ·) stream of packed tokens
    x = g.op("Flatten", ["embeds"], axis=2)
    coeffs = g.op("Flatten", ["coeffs"], axis=2) if has_adapters else None
    cos = g.const(dec.cos[:, : d // 2], "cos")
    sin = g.const(dec.sin[:, : d // 2], "sin")
    residual = None
    for i, block in enumerate(dec.layers):
        s_qkv, s_gate_up = smooth.get((i, "qkv")), smooth.get((i, "gate_up"))
        ln1 = g.const(block.ln1 if s_qkv is None else block.ln1 / s_qkv, "ln1")
        if residual is None:
            y = g.op("SimplifiedLayerNormalization", [x, ln1], epsilon=eps, axis=-1)
        else:  # x + residual and its norm in one operator
            y, _, _, x = g.op("SkipSimplifiedLayerNormalization", [x, residual, ln1], 4, "com.microsoft", epsilon=eps)
        qkv = linear(y, block.qkv, (i, "qkv"))
        qkv = g.op("Gather", [qkv, "rows"], axis=0)  # (N, ·) -> (B, S, ·): each row's positions
        past, present = [f"past_key_{i}", f"past_value_{i}"], [f"present_key_{i}", f"present_value_{i}"]
        inputs += [helper.make_tensor_value_info(n, f32, kv_shape) for n in past]
        outputs += [helper.make_tensor_value_info(n, f32, kv_shape) for n in present]
        att = g.op(
            "GroupQueryAttention",
            [qkv, "", "", *past, "seqlens_k", "total_seq_len", cos, sin],
            [g.name("att"), *present],
            "com.microsoft",
            num_heads=hq,
            kv_num_heads=hkv,
            do_rotary=1,
        )[0]
        att = g.op("Gather", [g.op("Reshape", [att, g.const(np.array([-1, hidden], np.int64))]), "packed"], axis=0)
        ln2 = g.const(block.ln2 if s_gate_up is None else block.ln2 / s_gate_up, "ln2")
        out = linear(att, block.o, (i, "o"))
        y, _, _, x = g.op("SkipSimplifiedLayerNormalization", [x, out, ln2], 4, "com.microsoft", epsilon=eps)
        inter = block.down.base.weight.shape[1]
        gate_up = linear(y, block.gate_up, (i, "gate_up"))
        gate, up = g.op("Split", [gate_up, g.const(np.array([inter, inter], np.int64))], 2, axis=-1)
        residual = linear(g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), up]), block.down, (i, "down"))
    x = g.op("Add", [x, residual])
    rows = g.op("Gather", [g.op("Reshape", [x, g.const(np.array([-1, hidden], np.int64))]), "logit_index"], axis=0)
    y = g.op("SimplifiedLayerNormalization", [rows, g.const(dec.norm, "norm")], epsilon=eps)
    g.matmul(y, dec.lm_head.weight, 8, key=(id(dec.lm_head), "w"))
    g.nodes[-1].output[0] = "logits"  # the head's product is the graph's output
    return g.serialize("lerplm_step", inputs, outputs)


@torch.inference_mode()
def calibrate(
    dec, calibration: Sequence[Sequence[int]], alpha: float = SMOOTHING, channels: int = OUTLIER_CHANNELS
) -> Calibration:
    """The prefill graph's calibration from each product's input ranges, max|x| per input channel over the tokens of
    the ``calibration`` prompts run through ``dec`` (exact, without adapters): smoothing factors s = max|x|^alpha /
    max|w|^(1 - alpha) per input channel (o and down: ``OUTLIER_SMOOTHING``), and for o and down the ``channels``
    widest inputs (at most an eighth of them). Empty without a non-empty prompt (then nothing is smoothed and o
    and down stay in blocks)."""
    from .decoder import StepPlan

    prompts = [list(ids) for ids in calibration if len(ids)]
    if not prompts:
        return Calibration()
    ranges: dict[tuple[int, str], torch.Tensor] = {}
    hooks = []
    for i, block in enumerate(dec.layers):
        for group in GROUPS:

            def record(_mod, args, _out, key=(i, group)):
                x = args[0].reshape(-1, args[0].shape[-1]).abs().amax(0).float()
                ranges[key] = x if key not in ranges else torch.maximum(ranges[key], x)

            hooks.append(getattr(block, group).register_forward_hook(record))
    try:  # every prompt in one step, each in its own slot
        chunks = [(slot, 0, len(ids)) for slot, ids in enumerate(prompts)]
        tokens = torch.tensor([t for ids in prompts for t in ids])
        dec(StepPlan.prefilling(tokens, chunks), dec.new_cache(len(chunks), max(map(len, prompts))))
    finally:
        for h in hooks:
            h.remove()
    out = Calibration()
    for (i, group), x in ranges.items():
        w = getattr(dec.layers[i], group).base.weight
        a = alpha if group in NORMED else OUTLIER_SMOOTHING
        out.smooth[i, group] = x.clamp(min=1e-5) ** a / w.abs().amax(0).clamp(min=1e-5) ** (1 - a)
        if group not in NORMED:
            out.outliers[i, group] = x.topk(min(channels, len(x) // 8)).indices.sort().values
    return out


_SHARED_POOL: list[bool] = []  # [whether this process's sessions share ONNX Runtime's global thread pool]


def new_session(model: bytes, threads: int, profile_prefix: str | None = None):
    """An ONNX Runtime CPU session of ``model`` on ``threads`` intra-op threads, quiet on the terminal; with
    ``profile_prefix``, ONNX Runtime's profiler on (its file: ``session.end_profiling()``).

    Sessions share one global pool of threads (sized by the first session): a session's workers spin for a while
    after its call, and another session's call right after it (the prefill graph after the decode graph, every
    busy step) waited for the cores they held."""
    import onnxruntime as ort

    if not _SHARED_POOL:
        try:
            from onnxruntime.capi import _pybind_state

            _pybind_state.set_global_thread_pool_sizes(threads, 1)
            _SHARED_POOL.append(True)
        except Exception:  # an ONNX Runtime without it, or whose global pools another library set first
            _SHARED_POOL.append(False)
    options = ort.SessionOptions()
    if _SHARED_POOL[0]:
        options.use_per_session_threads = False
    else:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3  # no optimiser notices on the terminal
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def fast_step(model, adapters, scheme: str = "fp32", calibration: Sequence[Sequence[int]] = ()):
    """The engine's fast step for ``scheme``: the exact torch ``FastDecoder`` (fp32), or it on ONNX Runtime (its
    prefill smoothed on the ``calibration`` prompts' token ids)."""
    fast = FastDecoder(model, adapters)
    return fast if scheme == "fp32" else OrtDecoder(fast, scheme, calibration)


class OrtDecoder:
    """The engine's model step (``plan, cache -> logits``) on ONNX Runtime, from a fp32 ``FastDecoder``'s
    weights; the same cache layout, so the engine cannot tell the two apart. Decode rows run the decode graph,
    prefill chunks the prefill graph, smoothed on the ``calibration`` prompts' token ids (none: not smoothed);
    ``integer_prefill=False`` prefills through the decode graph instead."""

    def __init__(
        self, dec, scheme: str, calibration: Sequence[Sequence[int]] = (), integer_prefill: bool = True
    ) -> None:
        if scheme not in BITS:
            raise LerpError(f"ONNX Runtime steps take a quantised scheme ({', '.join(BITS)}), not {scheme!r}")
        if dec.device.type != "cpu" or dec.dtype != torch.float32:
            raise LerpError(f"{scheme} weights run on the CPU in float32 only")
        try:
            import onnxruntime  # noqa: F401  (new_session imports it; a missing one is reported here)
        except ImportError as e:  # a declared dependency; only a broken install lacks it
            raise LerpError(f"quantize={scheme} needs onnxruntime: pip install onnxruntime ({e})") from e
        self.scheme = scheme
        self.device = dec.device
        self.kv_heads, self.head_dim, self.num_layers = dec.kv_heads, dec.head_dim, dec.num_layers
        self.vocab = dec.lm_head.weight.shape[0]
        # Right after a run ONNX Runtime's workers spin on the other cores; torch ops that fan out to them wait
        # (sampling 16 rows: 17 ms a step on two threads, 13 on one; one row: 3.2 against 0.9 ms alone).
        self.sampling_threads = 1
        # Activations are rounded to int8 (per block; per token in the prefill graph): a prompt's last token computed
        # on its own after a start shared from another slot differs from the same token inside its prompt's chunk by
        # a rounding step (logits by about int8's own error), so engines over this step compute every prompt whole
        # unless told otherwise.
        self.shares_prompts = False
        layers = _adapter_layers(dec)
        self.num_adapters = len(layers[0].offsets) - 1 if layers else 0
        # the model's embedding table, gathered in numpy on this thread (a torch op may fan out to threads that wait
        # for the cores ONNX Runtime's workers spin on after a call)
        self._new_cache, self._embed = dec.new_cache, dec.embed.numpy()
        threads, packed = torch.get_num_threads(), {}
        self.session = new_session(build_graph(dec, BITS[scheme], packed=packed), threads)
        self.prefill_session = self.session
        if integer_prefill:  # False: prefill through the decode graph (the baseline in benchmarks/engine.py)
            prefill = calibrate(dec, calibration)
            self.prefill_session = new_session(build_graph(dec, BITS[scheme], prefill, packed), threads)
        self._owner: tuple | None = None  # the cache the kept bindings point into
        self._bindings: dict[tuple[int, int, int], object] = {}  # (session, first slot, batch) -> binding

    def new_cache(self, slots: int, length: int) -> list[torch.Tensor]:
        return self._new_cache(slots, length)

    copy_prefix = staticmethod(FastDecoder.copy_prefix)  # the same cache layout

    def __call__(self, plan, cache: list[torch.Tensor]) -> torch.Tensor:
        """Next-token logits (M, vocab) for ``plan.logit_index``, as ``FastDecoder.forward``; each session call
        writes its rows straight into the result."""
        nd = len(plan.decode_slots)
        coeffs = plan.coeffs
        if coeffs is None:
            coeffs = torch.zeros(plan.tokens.shape[0], self.num_adapters)
        tokens, positions = plan.tokens.cpu().numpy(), plan.positions.cpu().numpy()
        wanted = plan.logit_index.tolist()
        out = torch.empty(len(wanted), self.vocab)
        where = {flat: j for j, flat in enumerate(wanted)}  # flat token index -> its row of out
        call = (tokens, coeffs, where, out)
        if nd:  # the slot range the decoding rows span; a slot between them runs a dummy row
            lo, hi = min(plan.decode_slots), max(plan.decode_slots) + 1
            last = cache[0].shape[3] - 1  # dummy rows write where plan.idle says (attending to that many positions)
            seqlens = np.array([min(plan.idle.get(slot, last), last) for slot in range(lo, hi)], np.int32)
            at = np.array(plan.decode_slots) - lo
            seqlens[at] = positions[:nd]
            rows = np.zeros((hi - lo, 1), np.int64)  # a dummy row takes the first row's token: only its attention
            rows[at, 0] = np.arange(nd)  # runs for it
            io = self._binding(self.session, cache, lo, hi - lo)
            self._run(self.session, io, last + 1, np.arange(nd), rows, at, seqlens, *call)
        chunks, offset = [], nd
        for slot, start, n in plan.prefill:
            chunks.append((slot, start, offset, n))
            offset += n
        fresh = [c for c in chunks if c[1] == 0]
        if len(fresh) > 1:  # prompts that start here: one call
            self._prefill_together(cache, fresh, call)
            chunks = [c for c in chunks if c[1] != 0]
        for slot, start, offset, n in chunks:
            io = self._binding(self.prefill_session, cache, slot, 1)
            seqlens = np.array([start + n - 1], np.int32)
            layout = (np.arange(n)[None], np.arange(n))
            self._run(
                self.prefill_session, io, cache[0].shape[3], np.arange(offset, offset + n), *layout, seqlens, *call
            )
        for j, flat in enumerate(wanted):  # a token asked for twice: its later row was written
            if where[flat] != j:
                out[j] = out[where[flat]]
        return out

    def _prefill_together(self, cache, chunks, call: tuple) -> None:
        """The prompts ``chunks`` ((slot, 0, offset, n) each: prompts that start at position 0; a chunk that
        continues another prompt may lie between them in the plan) in one call of the prefill graph: each prompt's
        keys and values go to its own row of a scratch cache as long as the longest prompt, then to its slot (the
        positions after a shorter prompt's end hold what its repeated last token wrote there, which no sequence
        reads before writing it again)."""
        width = max(n for *_, n in chunks)
        starts = np.cumsum([0] + [n for *_, n in chunks])
        rows = np.stack([s + np.minimum(np.arange(width), n - 1) for s, (*_, n) in zip(starts, chunks)])
        packed = np.concatenate([b * width + np.arange(n) for b, (*_, n) in enumerate(chunks)])
        scratch = [torch.empty(2, len(chunks), self.kv_heads, width, self.head_dim) for _ in range(self.num_layers)]
        io = self.prefill_session.io_binding()
        self._bind_cache(io, scratch, 0, len(chunks))
        seqlens = np.full(len(chunks), width - 1, np.int32)
        index = np.concatenate([np.arange(offset, offset + n) for _, _, offset, n in chunks])
        self._run(self.prefill_session, io, width, index, rows, packed, seqlens, *call)
        slots = torch.tensor([slot for slot, *_ in chunks])
        for kv, part in zip(cache, scratch):
            kv[:, slots, :, :width] = part

    def _run(
        self, session, io, length: int, index: np.ndarray, rows, packed, seqlens, tokens, coeffs, where: dict, out
    ) -> None:
        """One call of ``session`` on the plan's tokens ``index`` (in that order), laid out in the cache rows
        that ``io`` binds (``length`` positions each) as ``rows`` and ``packed`` say (``build_graph``); the logits
        the plan wants of them go to their rows of ``out`` (``where``), straight when those are consecutive (the
        scheduler's order), else through a buffer."""
        local = [j for j, i in enumerate(index.tolist()) if i in where] or [len(index) - 1]  # at least one row
        to = [where.get(int(index[j]), -1) for j in local]
        io.bind_cpu_input("embeds", self._embed.take(tokens[None, index], 0))
        if self.num_adapters:
            io.bind_cpu_input("coeffs", coeffs.float().numpy()[index][None])
        io.bind_cpu_input("rows", rows)
        io.bind_cpu_input("packed", packed)
        io.bind_cpu_input("seqlens_k", seqlens)
        io.bind_cpu_input("total_seq_len", np.array(length, np.int32))
        io.bind_cpu_input("logit_index", np.array(local, np.int64))
        straight = to[0] >= 0 and to == list(range(to[0], to[0] + len(to)))
        dest = out[to[0] : to[0] + len(to)] if straight else torch.empty(len(to), self.vocab)
        io.bind_output("logits", "cpu", 0, np.float32, tuple(dest.shape), dest.data_ptr())
        session.run_with_iobinding(io)
        if not straight:
            keep = [i for i, j in enumerate(to) if j >= 0]
            out[[to[i] for i in keep]] = dest[keep]

    def _binding(self, session, cache, lo: int, batch: int):
        """``session``'s binding of the cache slots [lo, lo + batch) as past and present state, kept per
        slot range of the last cache used (binding 2 x layers buffers costs ~0.4 ms a call)."""
        owner = (tuple(kv.data_ptr() for kv in cache), cache[0].shape)
        if owner != self._owner:
            self._owner, self._bindings = owner, {}
        io = self._bindings.get((id(session), lo, batch))
        if io is None:
            io = self._bindings[id(session), lo, batch] = session.io_binding()
            self._bind_cache(io, cache, lo, batch)
        return io

    def _bind_cache(self, io, cache, lo: int, batch: int) -> None:
        """The cache slots [lo, lo + batch) as both the past and the present state of ``io``."""
        shape = (batch, self.kv_heads, cache[0].shape[3], self.head_dim)
        for i, kv in enumerate(cache):
            for j, part in enumerate(("key", "value")):
                ptr = kv[j, lo].data_ptr()
                io.bind_input(f"past_{part}_{i}", "cpu", 0, np.float32, shape, ptr)
                io.bind_output(f"present_{part}_{i}", "cpu", 0, np.float32, shape, ptr)
