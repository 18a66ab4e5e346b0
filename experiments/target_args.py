"""Print eval-targets' --target options for targets drawn from a calibration (target_sets), one per line:

    mapfile -t TARGETS < <(python experiments/target_args.py CALIB.json --levels 0.15 0.5 0.85 \
        --pair sentiment,formality)
    lerplm eval-targets ... "${TARGETS[@]}"

Used when the targets must come from another calibration than the one evaluated (to compare two calibrations
on the same targets), or with other levels than eval-targets' own.
"""

import argparse

from lerplm.calibrate import ResponseModel
from lerplm.evaluate.targets import parse_pairs, target_sets


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("calibration")
    ap.add_argument(
        "--levels", type=float, nargs="+", default=[0.1, 0.37, 0.63, 0.9], help="levels of one-attribute targets"
    )
    ap.add_argument("--pair", action="append", default=[], help="A,B: two-attribute targets at level corners 0.15/0.85")
    ap.add_argument("--no-singles", action="store_true", help="pairs only")
    args = ap.parse_args()
    m = ResponseModel.load(args.calibration)
    singles = [] if args.no_singles else m.scored
    targets, _ = target_sets(m, singles, parse_pairs(args.pair, m.scored), levels=tuple(args.levels))
    for t in targets:
        print("--target=" + ",".join(f"{a}={v:g}" for a, v in t.items()))


if __name__ == "__main__":
    main()
