"""Where a sweep's time goes: one grid point (a mix over N held-out prompts) split into its phases, generation,
the base model's likelihood of the answers under their own prompts and under swapped ones (fluency and prompt fit),
and the mix's perplexity on held-out text. The likelihood passes run without the prefix cache (the baseline: each
prompt read again for every point) and with it (the first point fills it, later points hit it); generation runs
without prompt sharing (the baseline: every row computes its whole prompt) and with it (rows copy the start their
prompts share, the chat template's system turn).

python benchmarks/sweep.py --anchors anchors/styles --attribute sentiment
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time
from pathlib import Path

from common import save

import lerplm
from lerplm.engine import SamplingParams
from lerplm.generate import row_seed

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
    ap.add_argument("--repeat", type=int, default=3, help="timings per phase (medians reported)")
    args = ap.parse_args()
    lm = lerplm.load(args.anchors)
    lines = [p.strip() for p in PROMPTS.read_text().splitlines() if p.strip()]
    prompts = lines[args.skip : args.skip + args.prompts]
    mix = {args.attribute: 0.5}
    prefixes = lm.chat_prefixes(prompts)
    swapped = prefixes[1:] + prefixes[:1]
    params = SamplingParams(args.tokens)
    ids = lm.prompt_ids(prompts)

    def generate(share: bool) -> list[str]:  # what lm.generate does, on an engine with or without prompt sharing
        seqs = [lm.sequence(ids[i], mix, params, row_seed(params.seed, p, 0)) for i, p in enumerate(prompts)]
        eng = lm.engine(max_batch=len(seqs), max_len=max(map(len, ids)) + args.tokens, share_prompts=share)
        return [lm.text(s.tokens) for s in eng.run(seqs)]

    def likelihood(cache: dict | None) -> list[float]:  # the fluency and the prompt-swap passes
        return lm.nll(prefixes, texts, None, prefix_cache=cache) + lm.nll(swapped, texts, None, prefix_cache=cache)

    generate(True)  # builds the step once, outside the timings
    runs: dict[str, list[float]] = collections.defaultdict(list)
    for _ in range(args.repeat):  # alternated, so that the machine's drift falls on both sides alike
        dt, unshared = seconds(lambda: generate(False))
        runs["generate_no_prompt_sharing"].append(dt)
        dt, texts = seconds(lambda: generate(True))
        runs["generate"].append(dt)
        dt, plain = seconds(lambda: likelihood(None))
        runs["likelihood_no_cache"].append(dt)
        cache: dict = {}
        runs["likelihood_cache_first_point"].append(seconds(lambda: likelihood(cache))[0])
        dt, hit = seconds(lambda: likelihood(cache))
        runs["likelihood_cache_later_points"].append(dt)
    held = lines[: args.heldout]  # any text of prompt length; the sweep uses corpus texts
    coeffs = lm.coefficients([mix] * len(held))
    for _ in range(args.repeat):
        runs["heldout_perplexity"].append(seconds(lambda: lm.nll([""] * len(held), held, coeffs))[0])
    t = {k: statistics.median(v) for k, v in runs.items()}
    diff = max(abs(a - b) for a, b in zip(plain, hit) if a == a)
    baseline = t["generate_no_prompt_sharing"] + t["likelihood_no_cache"] + t["heldout_perplexity"]
    point = t["generate"] + t["likelihood_cache_later_points"] + t["heldout_perplexity"]
    payload = {
        "anchors": args.anchors,
        "mix": mix,
        "prompts": len(prompts),
        "new_tokens": args.tokens,
        "mean_words": statistics.fmean(len(x.split()) for x in texts),
        "seconds": {k: round(v, 3) for k, v in t.items()},  # medians
        "runs": {k: [round(x, 3) for x in v] for k, v in runs.items()},
        "point_seconds_baseline": round(baseline, 3),  # no prompt sharing, no prefix cache
        "point_seconds": round(point, 3),  # both, a point after the first
        "speedup_per_point": round(baseline / point, 3),
        "max_abs_nll_difference": diff,
        "same_texts_with_and_without_prompt_sharing": unshared == texts,
    }
    print(payload)
    print("wrote", save("sweep", payload))


if __name__ == "__main__":
    main()
