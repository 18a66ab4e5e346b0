"""Where a sweep's time goes: one grid point (a mix over N held-out prompts) split into its phases, generation,
the base model's likelihood of the answers under their own prompts and under swapped ones (fluency and prompt fit),
and the mix's perplexity on held-out text. The likelihood passes run without the prefix cache (the baseline: each
prompt read again for every point) and with it (the first point fills it, later points hit it).

python benchmarks/sweep.py --anchors anchors/styles --attribute sentiment
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from common import save

import lerplm
from lerplm.engine import SamplingParams

PROMPTS = Path(__file__).resolve().parents[2] / "shared" / "data" / "styles" / "prompts" / "writing_prompts.txt"


def seconds(fn) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--anchors", required=True)
    ap.add_argument("--attribute", required=True, help="the point's mix: this attribute at level 0.5")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--skip", type=int, default=400, help="first prompt line (the single sweep's window)")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--heldout", type=int, default=50, help="held-out texts scored per point")
    args = ap.parse_args()
    lm = lerplm.load(args.anchors)
    lines = [p.strip() for p in PROMPTS.read_text().splitlines() if p.strip()]
    prompts = lines[args.skip : args.skip + args.prompts]
    mix = {args.attribute: 0.5}
    prefixes = lm.chat_prefixes(prompts)
    swapped = prefixes[1:] + prefixes[:1]
    t = {}
    t["generate"], texts = seconds(
        lambda: [x[0] for x in lm.generate(prompts, [mix] * len(prompts), n=1, params=SamplingParams(args.tokens))]
    )
    t["likelihood_no_cache"], plain = seconds(lambda: lm.nll(prefixes, texts, None) + lm.nll(swapped, texts, None))
    cache: dict = {}
    t["likelihood_cache_first_point"], _ = seconds(
        lambda: lm.nll(prefixes, texts, None, prefix_cache=cache) + lm.nll(swapped, texts, None, prefix_cache=cache)
    )
    t["likelihood_cache_later_points"], hit = seconds(
        lambda: lm.nll(prefixes, texts, None, prefix_cache=cache) + lm.nll(swapped, texts, None, prefix_cache=cache)
    )
    held = lines[: args.heldout]  # any text of prompt length; the sweep uses corpus texts
    coeffs = lm.coefficients([mix] * len(held))
    t["heldout_perplexity"], _ = seconds(lambda: lm.nll([""] * len(held), held, coeffs))
    diff = max(abs(a - b) for a, b in zip(plain, hit) if a == a)
    point = t["generate"] + t["heldout_perplexity"]
    payload = {
        "anchors": args.anchors,
        "mix": mix,
        "prompts": len(prompts),
        "new_tokens": args.tokens,
        "mean_words": statistics.fmean(len(x.split()) for x in texts),
        "seconds": {k: round(v, 3) for k, v in t.items()},
        "point_seconds_no_cache": round(point + t["likelihood_no_cache"], 3),
        "point_seconds_cached": round(point + t["likelihood_cache_later_points"], 3),
        "speedup_per_point": round(
            (point + t["likelihood_no_cache"]) / (point + t["likelihood_cache_later_points"]), 3
        ),
        "max_abs_nll_difference": diff,
    }
    print(payload)
    print("wrote", save("sweep", payload))


if __name__ == "__main__":
    main()
