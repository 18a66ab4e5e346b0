"""One matrix product of the embedded default's shapes on ONNX Runtime: int8 ``MatMulNBits`` (the quantised
step's kernel, activations quantised per block) in blocks of 32, 64 and 128 inputs against fp32 ``MatMul`` and
int8 ``DynamicQuantizeMatMul`` (activations quantised per tensor, weights per output: ONNX Runtime's int8 GEMM,
``int8/tensor``), at 1, 16, 64 and 256 rows (a decode step, a full batch, prefill chunks). Each product alone in an ONNX
Runtime session of two threads, the sessions of one shape taking turns, the fastest of three turns; the
smaller products' weights stay in cache, so one-row times here are lower than inside a step, which reads
~143 MB of weights.

python benchmarks/matmul.py
"""

from __future__ import annotations

import time

import numpy as np
import torch
from common import save

from lerplm.engine.ortstep import Graph, new_session

SHAPES = {  # (inputs, outputs): SmolLM2-135M's fused layers and head, and a four-anchor q/k/v adapter product
    "gate_up": (576, 3072),
    "down": (1536, 576),
    "qkv": (576, 960),
    "head": (576, 49152),
    "qkv+adapters": (960, 960),
}
ROWS = (1, 16, 64, 256)
BLOCKS = (32, 64, 128)


def session(w: torch.Tensor, block: int | str | None):
    """A session computing x wᵀ: int8 ``MatMulNBits`` in ``block``-input blocks as the quantised step builds it,
    fp32 ``MatMul`` (None) or ``DynamicQuantizeMatMul`` ("tensor")."""
    from onnx import TensorProto, helper

    out_f, in_f = w.shape
    g = Graph()
    if block is None:
        g.op("MatMul", ["x", g.const(w.T)])
    elif block == "tensor":
        scale = w.abs().amax(1) / 127
        q = torch.round(w / scale[:, None]).to(torch.int8)
        zero = np.zeros(out_f, np.int8)
        g.op("DynamicQuantizeMatMul", ["x", g.const(q.T), g.const(scale), g.const(zero)], domain="com.microsoft")
    else:
        g.matmul("x", w, 8, block)
    g.nodes[-1].output[0] = "y"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", in_f])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", out_f])
    return new_session(g.serialize("product", [x], [y]), 2)


def time_us(sessions: dict, x: np.ndarray, rounds: int = 3) -> dict[str, float]:
    """Fastest µs of one run of each session over ``rounds`` turns (the fastest: a burst of other work on the
    machine only slows a turn down); each turn runs ~50 ms untimed first, as the product that ran before leaves its
    worker threads spinning on the cores for a while, then ~30 ms timed."""
    best = dict.fromkeys(sessions, float("inf"))
    for _ in range(rounds):
        for label, sess in sessions.items():
            t = time.perf_counter()
            while time.perf_counter() - t < 0.05:
                sess.run(None, {"x": x})
            n, t = 0, time.perf_counter()
            while n < 3 or time.perf_counter() - t < 0.03:
                sess.run(None, {"x": x})
                n += 1
            best[label] = min(best[label], (time.perf_counter() - t) / n * 1e6)
    return best


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    results = {"rows": list(ROWS), "products": {}}
    for name, (in_f, out_f) in SHAPES.items():
        w = torch.randn(out_f, in_f, generator=gen) * 0.02
        sessions = {"fp32": session(w, None)} | {f"int8/{b}": session(w, b) for b in (*BLOCKS, "tensor")}
        table, error = {}, {}
        for m in ROWS:
            x = torch.randn(m, in_f, generator=gen).numpy()
            table[m] = time_us(sessions, x)
            want = x @ w.numpy().T  # the largest error over the largest output, on random weights and inputs
            error[m] = {
                k: float(np.abs(s.run(None, {"x": x})[0] - want).max() / np.abs(want).max())
                for k, s in sessions.items()
            }
            gflops = {label: 2 * m * in_f * out_f / us / 1e3 for label, us in table[m].items()}
            print(
                f"{name:13s} {in_f:5d}x{out_f:<6d} rows {m:3d}  "
                + "  ".join(f"{k} {v:8.1f} µs ({gflops[k]:4.0f} GFLOP/s)" for k, v in table[m].items()),
                flush=True,
            )
        results["products"][name] = {"inputs": in_f, "outputs": out_f, "us": table, "error": error}
    print("wrote", save("matmul", results))


if __name__ == "__main__":
    main()
