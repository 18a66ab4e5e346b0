"""Load test of `lerplm serve`: N concurrent clients with random mixes send a fixed number of
requests; reports throughput (generated tokens/s), p50/p95 latency and errors, for continuous
batching (max_batch=B) against serving the same requests one at a time (max_batch=1), in one run.

python benchmarks/load.py --anchors anchors/styles --requests 32 --clients 8 --max-tokens 32
"""

from __future__ import annotations

import argparse
import concurrent.futures
import random
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_serve import Server  # noqa: E402  (uvicorn in a thread on a loopback port)

import lerplm  # noqa: E402
from common import save  # noqa: E402
from lerplm.serve.app import create_app  # noqa: E402

PROMPTS = ["Write a short note to your neighbour.", "Describe your favourite restaurant.", "Tell me about the weather today.",
           "Explain why the city is building a bridge.", "Give me advice about learning to cook."]


def drive(url: str, names: list[str], requests: int, clients: int, max_tokens: int, seed: int) -> dict:
    rng = random.Random(seed)
    bodies = []
    for i in range(requests):
        attrs = rng.sample(names, rng.randint(1, min(3, len(names))))
        bodies.append({"model": "x", "prompt": rng.choice(PROMPTS), "max_tokens": max_tokens, "seed": i, "temperature": 0.8,
                       "mix": {"levels": {a: round(rng.random(), 2) for a in attrs}}})

    def one(body):
        t = time.perf_counter()
        r = httpx.post(url + "/v1/completions", json=body, timeout=600)
        return time.perf_counter() - t, r

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, bodies))
    wall = time.perf_counter() - start
    ok = [(lat, r.json()) for lat, r in results if r.status_code == 200]
    tokens = sum(j["usage"]["completion_tokens"] for _, j in ok)
    lats = sorted(lat for lat, _ in ok)
    return {"wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall, "errors": len(results) - len(ok),
            "p50_s": statistics.median(lats) if lats else None,
            "p95_s": lats[min(len(lats) - 1, int(0.95 * len(lats)))] if lats else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--anchors", default="anchors/styles")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    lm = lerplm.load(args.anchors)
    out = {"args": vars(args)}
    for label, max_batch in (("continuous batching", args.max_batch), ("one at a time", 1)):
        with Server(create_app(lm, max_batch=max_batch, max_queue=max(64, args.requests))) as s:
            out[label] = drive(s.url, lm.anchors.names, args.requests, args.clients, args.max_tokens, args.seed)
        r = out[label]
        print(f"{label:>20}: {r['tokens_per_s']:.1f} tok/s, p50 {r['p50_s']:.2f} s, p95 {r['p95_s']:.2f} s, "
              f"errors {r['errors']} ({r['tokens']} tokens in {r['wall_s']:.1f} s)", flush=True)
    ratio = out["continuous batching"]["tokens_per_s"] / out["one at a time"]["tokens_per_s"]
    out["throughput_ratio"] = ratio
    print(f"continuous batching / one at a time: {ratio:.2f}x throughput")
    print(f"wrote {save('load', out)}")


if __name__ == "__main__":
    main()
