"""The engine's batched sampler on real logits: 16 rows of the embedded default (int8 step, a random sentiment
level per row) over the first decode steps of 16 writing prompts, drawn under several sampling settings:

- ``engine``: the engine's sampler (each row's nucleus sought among its tokens of probability >= FLOOR, one sort
  for the batch; rows whose nucleus reaches below the floor, and rows with a top-k, by top-k search);
- ``topk-search``: the baseline, every row by top-k search (its 512, then 4096 likeliest tokens, then all).

Both take the same softmax and the same random numbers and must draw the same tokens (checked on every step), up to
the order of tokens of exactly equal logits (this model has such tokens; both orders are exact draws). The two take
turns on one torch thread, as the engine samples after an ONNX Runtime step; median ms per batch.

python benchmarks/sampling.py --anchors anchors/quickstart
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import torch
from common import machine, save

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT.parent / "shared" / "data" / "styles" / "prompts" / "writing_prompts.txt"
SETTINGS = {  # name -> (temperature, top_p, top_k)
    "T 0.8, top-p 0.95 (served workloads)": (0.8, 0.95, 0),
    "T 1.0, top-p 0.9": (1.0, 0.9, 0),
    "T 0.8, top-k 40": (0.8, 1.0, 40),
    "T 1.2, top-k 20, top-p 0.8": (1.2, 0.8, 20),
    "T 1.5, top-p 0.99 (flat)": (1.5, 0.99, 0),
}


def captured_logits(anchors: str, rows: int, tokens: int) -> list[tuple[torch.Tensor, list[int]]]:
    """(logits, each row's token index) of every step at which all ``rows`` rows sampled."""
    import lerplm
    from lerplm.engine import SamplingParams, Sequence

    lm = lerplm.load(anchors, quantize="int8")
    names = [line.strip() for line in PROMPTS.read_text().splitlines() if line.strip()][:rows]
    rng = random.Random(0)
    coeffs = lm.coefficients([{"levels": {lm.anchors.attributes[0].name: rng.random()}} for _ in names]).tolist()
    engine = lm.engine(max_batch=rows, max_len=512)
    engine.eos = set()
    seen, sample = [], engine._sample

    def capture(logits, seqs):
        if len(seqs) == rows:
            seen.append((logits.clone(), [len(s.tokens) for s in seqs]))
        return sample(logits, seqs)

    engine._sample = capture
    ids = lm.prompt_ids(names)
    engine.run([Sequence(i, c, SamplingParams(tokens, 0.8, 0.95), n) for n, (i, c) in enumerate(zip(ids, coeffs))])
    return seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--anchors", required=True)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=24, help="decode steps captured")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    from lerplm.engine import sampling
    from lerplm.engine.sampling import BatchParams

    steps = captured_logits(args.anchors, args.rows, args.tokens)
    torch.set_num_threads(1)
    vocab = steps[0][0].shape[-1]

    def engine(logits, p):
        return sampling.sample(logits, p)

    def topk_search(logits, p):  # every row by top-k search, from the same softmax and random numbers
        temp = torch.where(p.temperature > 0, p.temperature, torch.ones_like(p.temperature))
        scaled = logits / temp[:, None]
        kmax = int(p.top_k.max())
        caps = [*(c for c in sampling.TOPK_CAPS if c > kmax), vocab]
        return sampling._filtered_draw(scaled, torch.softmax(scaled, -1), p, sampling.uniforms(p.seeds, p.steps), caps)

    results = {"anchors": args.anchors, "rows": args.rows, "steps": len(steps), "vocab": vocab, "settings": []}
    for name, (t, top_p, top_k) in SETTINGS.items():
        times = {"engine": [], "topk-search": []}
        same, tie_swaps = True, 0
        for r in range(args.rounds):
            for logits, index in steps:
                p = BatchParams.from_lists(
                    [t] * args.rows, [top_p] * args.rows, [top_k] * args.rows, list(range(args.rows)), index
                )
                drawn = {}
                for key, fn in (("engine", engine), ("topk-search", topk_search))[:: 1 if r % 2 else -1]:
                    start = time.perf_counter()
                    drawn[key] = fn(logits, p)
                    times[key].append((time.perf_counter() - start) * 1e3)
                differ = drawn["engine"] != drawn["topk-search"]
                if differ.any():  # allowed only between tokens of equal logits
                    rows = differ.nonzero()[:, 0]
                    same &= bool(
                        torch.equal(logits[rows, drawn["engine"][rows]], logits[rows, drawn["topk-search"][rows]])
                    )
                    tie_swaps += len(rows)
        row = {
            "setting": name,
            "engine_ms": statistics.median(times["engine"]),
            "topk_search_ms": statistics.median(times["topk-search"]),
            "same_draws": same,
            "tie_swaps": tie_swaps,
        }
        row["speedup"] = row["topk_search_ms"] / row["engine_ms"]
        results["settings"].append(row)
        print(
            f"{name:38s} engine {row['engine_ms']:6.2f} ms  top-k search {row['topk_search_ms']:6.2f} ms  "
            f"{row['speedup']:.2f}x  same draws: {same} ({tie_swaps} swaps of tied tokens)",
            flush=True,
        )
    results["machine"] = machine()
    print("wrote", save("sampling", results))


if __name__ == "__main__":
    main()
