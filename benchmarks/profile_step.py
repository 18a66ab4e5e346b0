"""Where the int8 step's time goes, with the anchors attached and without: ONNX Runtime's own profiler over decode
steps of the engine's graph (the step ``--quantize int8`` runs; one row, or ``--rows`` rows each with its own mix, each
attending to ``--position`` + 1 cache positions) or, with ``--prefill N``, over N-token prompt chunks of its prefill
graph (one row, one mix), kernel time per operator type, beside the weight bytes each graph's matrix products read
per call and the unprofiled call time (the two graphs taking turns).

python benchmarks/profile_step.py --anchors anchors/quickstart
python benchmarks/profile_step.py --anchors anchors/quickstart --rows 16 --position 500
python benchmarks/profile_step.py --anchors anchors/quickstart --prefill 64
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
from common import save, taking_turns

STEPS = 300


WEIGHTS = {"MatMulNBits": (1, 2), "MatMulIntegerToFloat": (1, 3), "MatMul": (1,)}  # inputs that hold weights


def product_bytes(model: bytes) -> int:
    """Bytes of the weights and scales the graph's matrix products read: what a step reads besides the cache and
    one embedding row."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load_from_string(model).graph
    sizes = {t.name: numpy_helper.to_array(t).nbytes for t in graph.initializer}
    return sum(sizes.get(n.input[i], 0) for n in graph.node for i in WEIGHTS.get(n.op_type, ()))


def feeds(dec, adapters: int, rows: int, position: int, chunk: int = 1) -> dict[str, np.ndarray]:
    """``rows`` rows of ``chunk`` tokens each ending at ``position`` of a cache 48 positions longer, each row under
    its own random mix (the same for its tokens), the logits of each row's last token wanted."""
    length = position + 48
    rng = np.random.default_rng(0)
    ids = rng.integers(0, dec.embed.shape[0], (1, rows * chunk))  # packed: row after row
    f = {
        "embeds": dec.embed.numpy().take(ids, 0),
        "seqlens_k": np.full(rows, position, np.int32),
        "total_seq_len": np.array(length, np.int32),
        "logit_index": np.arange(rows, dtype=np.int64) * chunk + chunk - 1,
        "rows": np.arange(rows * chunk, dtype=np.int64).reshape(rows, chunk),
        "packed": np.arange(rows * chunk, dtype=np.int64),
    }
    if adapters:
        f["coeffs"] = np.repeat(rng.random((rows, adapters), np.float32), chunk, 0)[None]
    for i in range(dec.num_layers):
        for part in ("key", "value"):
            f[f"past_{part}_{i}"] = np.zeros((rows, dec.kv_heads, length, dec.head_dim), np.float32)
    return f


def bound(session, inputs: dict):
    """A call of ``session`` on ``inputs`` with each past state bound as its present state too, as the engine binds
    its cache (unbound, each call would copy the whole cache into new present buffers inside attention)."""
    io = session.io_binding()
    for name, value in inputs.items():
        if name.startswith("past_"):
            ptr = value.ctypes.data
            io.bind_input(name, "cpu", 0, np.float32, value.shape, ptr)
            io.bind_output(name.replace("past_", "present_"), "cpu", 0, np.float32, value.shape, ptr)
        else:
            io.bind_cpu_input(name, value)
    io.bind_output("logits", "cpu")
    return functools.partial(session.run_with_iobinding, io)


def profile(model: bytes, inputs: dict, threads: int) -> dict[str, dict[str, float]]:
    """Kernel ms per step and nodes per step of each operator type, from ONNX Runtime's profiler."""
    from lerplm.engine.ortstep import new_session

    with tempfile.TemporaryDirectory() as tmp:
        session = new_session(model, threads, os.path.join(tmp, "step"))
        step = bound(session, inputs)
        for _ in range(STEPS):
            step()
        events = json.loads(Path(session.end_profiling()).read_text())
    time_us, count = defaultdict(float), defaultdict(int)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            time_us[e["args"]["op_name"]] += e["dur"]
            count[e["args"]["op_name"]] += 1
    return {op: {"ms": time_us[op] / STEPS / 1e3, "nodes": count[op] // STEPS} for op in time_us}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--anchors", required=True)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--rows", type=int, default=1, help="decoding rows per step")
    ap.add_argument("--position", type=int, default=80, help="cache positions each row attends to, minus one")
    ap.add_argument("--prefill", type=int, default=0, help="N: profile N-token chunks of the prefill graph instead")
    args = ap.parse_args()
    if args.prefill:
        args.rows, args.position = 1, args.prefill - 1

    import torch

    import lerplm
    from lerplm.engine.decoder import FastDecoder
    from lerplm.engine.ortstep import build_graph, calibrate, new_session
    from lerplm.generate import CALIBRATION_PROMPTS

    lm = lerplm.load(args.anchors)
    threads = torch.get_num_threads()
    graphs, inputs, sessions = {}, {}, {}
    for name, adapters in (("base", []), ("mix", lm.adapters)):
        dec = FastDecoder(lm.model, adapters)
        prefill = calibrate(dec, lm.prompt_ids(CALIBRATION_PROMPTS)) if args.prefill else None
        graphs[name] = build_graph(dec, 8, prefill)
        inputs[name] = feeds(dec, len(adapters), args.rows, args.position, max(args.prefill, 1))
        sessions[name] = new_session(graphs[name], threads)
    runs = {name: bound(sessions[name], inputs[name]) for name in graphs}
    times = taking_turns(runs, args.rounds, 10, 30)  # unprofiled step times, the two graphs taking turns
    results = {
        "anchors": args.anchors,
        "rows": args.rows,
        "position": args.position,
        "prefill": args.prefill,
        "threads": threads,
        "steps_profiled": STEPS,
        "graphs": {},
    }
    for name, model in graphs.items():
        ops = profile(model, inputs[name], threads)
        results["graphs"][name] = {
            "step_ms": statistics.median(times[name]),
            "product_mb": product_bytes(model) / 1e6,
            "kernel_ms": sum(o["ms"] for o in ops.values()),
            "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1]["ms"])),
        }
    for name, row in results["graphs"].items():
        print(
            f"{name}: step {row['step_ms']:.2f} ms, products read {row['product_mb']:.1f} MB, kernels (profiled) "
            f"{row['kernel_ms']:.2f} ms"
        )
        for op, o in row["ops"].items():
            print(f"  {op:34s} {o['ms']:6.3f} ms  {o['nodes']:4d} nodes")
    print("wrote", save("profile_step", results))


if __name__ == "__main__":
    main()
