"""What packing a call's tokens saves in the int8 step: prompts that start in the same step run as one call of the
prefill graph, against one call each (the way a chunk that continues a prompt still runs); decoding rows spread over
a slot range, whose slots between them are dummy rows that cost only their attention, against the same number of
adjacent rows and against as many adjacent rows as the range spans (what the call cost when every slot of the range
ran the products). Served prompts (the writing prompts in the chat template), a random two-attribute mix per row;
the plans take turns as in ``benchmarks/engine.py``'s step table, medians.

python benchmarks/packing.py --anchors anchors/quickstart
"""

from __future__ import annotations

import argparse
import statistics

import torch
from common import save, taking_turns
from peers import PROMPTS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--anchors", required=True)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()

    import lerplm
    from lerplm.engine import StepPlan

    lm = lerplm.load(args.anchors, quantize="int8")
    step = lm.step_model
    k = step.num_adapters
    gen = torch.Generator().manual_seed(0)
    prompts = lm.prompt_ids([p.strip() for p in PROMPTS.read_text().splitlines() if p.strip()][:8])
    mixes = torch.rand(len(prompts), k, generator=gen)
    cache = step.new_cache(16, 256)

    def prefill(rows: list[int], first_slot: int = 0) -> StepPlan:
        chunks = [(first_slot + j, 0, len(prompts[r])) for j, r in enumerate(rows)]
        coeffs = torch.cat([mixes[r].expand(len(prompts[r]), k) for r in rows])
        return StepPlan.prefilling(torch.tensor([t for r in rows for t in prompts[r]]), chunks, coeffs)

    def together(rows: list[int]):
        plan = prefill(rows)
        return lambda: step(plan, cache)

    def apart(rows: list[int]):
        plans = [prefill([r]) for r in rows]
        return lambda: [step(p, cache) for p in plans]

    calls, tokens = {}, {}
    for n in (2, 4, 8):
        rows = list(range(n))
        calls[f"prefill {n} prompts/one call"], calls[f"prefill {n} prompts/a call each"] = together(rows), apart(rows)
        tokens[n] = sum(len(prompts[r]) for r in rows)
    for slot in range(12):  # every slot of the decode range holds a prompt
        step(prefill([slot % len(prompts)], slot), cache)

    def decode(slots: list[int], idle: dict[int, int]):
        n = len(slots)
        plan = StepPlan.decoding(torch.full((n,), 42), torch.full((n,), 60), slots, torch.rand(n, k, generator=gen))
        plan.idle = idle
        return lambda: step(plan, cache)

    spread = [0, 4, 8, 11]
    calls["decode 4 rows over 12 slots"] = decode(spread, {s: 60 for s in range(12) if s not in spread})
    calls["decode 4 adjacent rows"] = decode([0, 1, 2, 3], {})
    calls["decode 12 adjacent rows"] = decode(list(range(12)), {})
    ms = {key: statistics.median(v) for key, v in taking_turns(calls, args.rounds, 1, 3).items()}
    for key, v in ms.items():
        print(f"{key:36s} {v:8.2f} ms")
    print("wrote", save("packing", {"anchors": args.anchors, "prompt_tokens": tokens, "step_ms": ms}))


if __name__ == "__main__":
    main()
