"""Would decoding through the int8 prefill graph pay? Its products are int8 x int8 with one activation scale per
token (``MatMulIntegerToFloat``), 2-2.5x ``MatMulNBits``' rate at 16-64 rows alone
(``benchmarks/matmul.py``), but the graph first rounds each product's input per token in a few small operators, and
that kernel is slower than ``MatMulNBits`` at one row. Both graphs of one int8 step, mixed and bare (no adapters),
timed as ``benchmarks/engine.py`` times its steps (``step_times``: decode at 1 and 16 rows, taking turns; its
42-token prefill runs the prefill graph in both).

python benchmarks/decode_graphs.py --anchors anchors/quickstart
"""

from __future__ import annotations

import argparse
import copy

from common import save
from engine import step_times


def through_prefill_graph(step):
    """A copy of the int8 ``OrtDecoder`` ``step`` whose decode calls run its prefill graph."""
    other = copy.copy(step)
    other.session, other._bindings, other._owner = step.prefill_session, {}, None
    return other


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--anchors", required=True)
    args = ap.parse_args()

    import lerplm
    from lerplm.engine import ortstep
    from lerplm.generate import CALIBRATION_PROMPTS

    lm = lerplm.load(args.anchors)
    calibration = lm.prompt_ids(CALIBRATION_PROMPTS)
    mixed, bare = (
        ortstep.OrtDecoder(ortstep.FastDecoder(lm.model, adapters), "int8", calibration)
        for adapters in (lm.adapters, [])
    )
    graphs = {"decode graph": (mixed, bare), "prefill graph": tuple(map(through_prefill_graph, (mixed, bare)))}
    results = step_times(graphs, len(lm.adapters))  # (mixed, bare): no merged step
    for key, row in results.items():
        print(f"{key}: " + "  ".join(f"{k} {v:.2f}" for k, v in row.items()))
    print("wrote", save("decode_graphs", {"anchors": args.anchors, "step_ms": results}))


if __name__ == "__main__":
    main()
