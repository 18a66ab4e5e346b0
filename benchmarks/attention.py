"""The quantised step's attention alone: ONNX Runtime's ``GroupQueryAttention`` (SmolLM2-135M's 9 query and 3
key/value heads of 64, rotary embedding, the cache bound in place as the engine binds it) for one decoding row at
1 and 16 rows, each row attending to 81, 501 or 1,001 positions of a 1,536-position cache (``lerplm serve``'s
default length), in fp32 (the engine's cache) and fp16 (half the bytes to read). Thirty layers' caches, one per
call in turn, so that each call reads its cache from memory as a step does. Also a dummy row (a slot inside the
decoding range that does not decode) attending to the whole cache against to 101 positions.

python benchmarks/attention.py
"""

from __future__ import annotations

import time

import numpy as np
from common import save

HEADS, KV_HEADS, HEAD_DIM, LAYERS, LENGTH = 9, 3, 64, 30, 1536
ROWS = (1, 16)
POSITIONS = (80, 500, 1000)


def session(dtype):
    from onnx import TensorProto, helper, numpy_helper

    from lerplm.engine.ortstep import new_session

    t = TensorProto.FLOAT if dtype == np.float32 else TensorProto.FLOAT16
    i32 = TensorProto.INT32
    inputs = [
        helper.make_tensor_value_info("qkv", t, ["B", 1, (HEADS + 2 * KV_HEADS) * HEAD_DIM]),
        helper.make_tensor_value_info("past_key", t, ["B", KV_HEADS, "T", HEAD_DIM]),
        helper.make_tensor_value_info("past_value", t, ["B", KV_HEADS, "T", HEAD_DIM]),
        helper.make_tensor_value_info("seqlens_k", i32, ["B"]),
        helper.make_tensor_value_info("total_seq_len", i32, []),
    ]
    outputs = [helper.make_tensor_value_info(n, t, None) for n in ("att", "present_key", "present_value")]
    rng = np.random.default_rng(0)
    cos, sin = (numpy_helper.from_array(rng.random((LENGTH, HEAD_DIM // 2)).astype(dtype), n) for n in ("cos", "sin"))
    node = helper.make_node(
        "GroupQueryAttention",
        ["qkv", "", "", "past_key", "past_value", "seqlens_k", "total_seq_len", "cos", "sin"],
        ["att", "present_key", "present_value"],
        domain="com.microsoft",
        num_heads=HEADS,
        kv_num_heads=KV_HEADS,
        do_rotary=1,
    )
    graph = helper.make_graph([node], "attention", inputs, outputs, [cos, sin])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return new_session(helper.make_model(graph, opset_imports=opsets, ir_version=10).SerializeToString(), 2)


def per_layer_us(sess, dtype, seqlens: np.ndarray, rounds: int = 10) -> float:
    """µs per layer of a step: ``LAYERS`` calls, one per layer's cache, taking turns ``rounds`` times."""
    rows = len(seqlens)
    rng = np.random.default_rng(1)
    bindings = []
    for _ in range(LAYERS):
        kv = [rng.standard_normal((rows, KV_HEADS, LENGTH, HEAD_DIM)).astype(dtype) for _ in range(2)]
        io = sess.io_binding()
        io.bind_cpu_input("qkv", rng.standard_normal((rows, 1, (HEADS + 2 * KV_HEADS) * HEAD_DIM)).astype(dtype))
        io.bind_cpu_input("seqlens_k", seqlens.astype(np.int32))
        io.bind_cpu_input("total_seq_len", np.array(LENGTH, np.int32))
        for part, buf in zip(("key", "value"), kv):
            io.bind_input(f"past_{part}", "cpu", 0, dtype, buf.shape, buf.ctypes.data)
            io.bind_output(f"present_{part}", "cpu", 0, dtype, buf.shape, buf.ctypes.data)
        io.bind_output("att")
        bindings.append((io, kv))
    for io, _ in bindings:  # warm up
        sess.run_with_iobinding(io)
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for io, _ in bindings:
            sess.run_with_iobinding(io)
        best = min(best, (time.perf_counter() - t) / LAYERS * 1e6)
    return best


def main() -> None:
    results: dict = {"layers": LAYERS, "cache_length": LENGTH, "us_per_layer": {}, "dummy_row": {}}
    for dtype in (np.float32, np.float16):
        sess, name = session(dtype), np.dtype(dtype).name
        table = results["us_per_layer"][name] = {}
        for rows in ROWS:
            for pos in POSITIONS:
                us = per_layer_us(sess, dtype, np.full(rows, pos))
                table[f"{rows} rows, {pos + 1} positions"] = us
                print(
                    f"{name:8s} {rows:2d} rows attending to {pos + 1:4d} positions: {us:7.1f} µs per layer", flush=True
                )
        if dtype == np.float32:  # 15 rows at 101 positions and one dummy row, at the last position or after 100
            for label, dummy in (("whole cache", LENGTH - 1), ("101 positions", 100)):
                us = per_layer_us(sess, dtype, np.array([100] * 7 + [dummy] + [100] * 8))
                results["dummy_row"][label] = us
                print(f"float32  16 rows, the dummy attending to the {label}: {us:7.1f} µs per layer", flush=True)
    print("wrote", save("attention", results))


if __name__ == "__main__":
    main()
