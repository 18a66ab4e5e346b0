"""Would decoding through the int8 prefill graph pay? Its products after each norm are int8 x int8 with one
activation scale per token (``MatMulIntegerToFloat``), ~2-3x ``MatMulNBits``' rate at 16 rows alone
(``benchmarks/matmul.py``), but the graph first rounds each product's input per token in eight small operators.
Both graphs of one int8 step decode the same rows (random tokens and mixes at cache position 80) at 1, 4 and 16
rows, taking turns; median ms per step, mixed and bare (no adapters).

python benchmarks/decode_graphs.py --anchors anchors/quickstart
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics

import torch
from common import save, taking_turns

ROWS = (1, 4, 16)


def through_prefill_graph(step):
    """A copy of the int8 ``OrtDecoder`` ``step`` whose decode calls run its prefill graph."""
    other = copy.copy(step)
    other.session, other._bindings, other._owner = step.prefill_session, {}, None
    return other


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--anchors", required=True)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()

    import lerplm
    from lerplm.engine import ortstep
    from lerplm.engine.decoder import StepPlan
    from lerplm.generate import CALIBRATION_PROMPTS

    lm = lerplm.load(args.anchors)
    calibration = lm.prompt_ids(CALIBRATION_PROMPTS)
    steps = {}
    for kind, adapters in (("mix", lm.adapters), ("base", [])):
        step = ortstep.OrtDecoder(ortstep.FastDecoder(lm.model, adapters), "int8", calibration)
        steps[f"decode graph/{kind}"], steps[f"prefill graph/{kind}"] = step, through_prefill_graph(step)
    gen = torch.Generator().manual_seed(0)
    results: dict[str, dict[str, float]] = {key: {} for key in steps}
    for rows in ROWS:
        tokens = torch.randint(0, 1000, (rows,), generator=gen)
        coeffs = torch.rand(rows, len(lm.adapters), generator=gen)
        plans = {
            kind: StepPlan.decoding(tokens, torch.full((rows,), 80), list(range(rows)), c)
            for kind, c in (("mix", coeffs), ("base", None))
        }
        caches = {key: m.new_cache(16, 128) for key, m in steps.items()}
        calls = {key: functools.partial(m, plans[key.split("/")[1]], caches[key]) for key, m in steps.items()}
        for key, ms in taking_turns(calls, args.rounds, 10, 10).items():
            results[key][f"decode{rows}_ms"] = statistics.median(ms)
    for key, row in results.items():
        print(f"{key}: " + "  ".join(f"{k} {v:.2f}" for k, v in row.items()))
    print("wrote", save("decode_graphs", {"anchors": args.anchors, "step_ms": results}))


if __name__ == "__main__":
    main()
