"""Reuse finished sweep points in a run on another anchor set, after checking they generate alike there.

An adapter at coefficient 0 adds exact zeros, so a grid point generates the same texts on any set that holds
the same adapters for the attributes the point weights. `check` shows it for given points (texts
byte-identical between a check run on the new set and the source run); `compose` starts a run on the new set
from source runs' points (same prompts, seed and settings), and `lerplm sweep` then generates only what is
missing.

python experiments/reuse_points.py check runs/set360_check_pol runs/pol360 single-politeness-0 single-politeness-1
python experiments/reuse_points.py compose runs/mixed360 anchors/chat_mixed360 \
    'runs/mixed64:single-humor-*' 'runs/pol360:single-politeness-*'
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import pandas as pd


def check(new: Path, source: Path, points: list[str]) -> bool:
    ok = True
    for point in points:
        files = [r / "points" / f"{point}.csv" for r in (source, new)]
        if missing := [str(f) for f in files if not f.is_file()]:
            print(f"{point}: missing {', '.join(missing)}")
            ok = False
            continue
        a, b = (pd.read_csv(f, keep_default_na=False) for f in files)
        same = int((a["text"] == b["text"]).sum()) if len(a) == len(b) else 0
        print(f"{point}: {same}/{len(a)} texts of {new} identical to {source}")
        ok &= same == len(a)
    return ok


def compose(out: Path, anchors: str, sources: list[str]) -> None:
    pairs = [s.split(":", 1) for s in sources]
    settings = [
        {k: v for k, v in json.loads((Path(r) / "sweep.json").read_text()).items() if k != "anchors"} for r, _ in pairs
    ]
    if any(s != settings[0] for s in settings[1:]):
        sys.exit("the source runs were generated with different settings; their points cannot share a run")
    (out / "points").mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps({"anchors": anchors, **settings[0]}, indent=2))
    for run, pattern in pairs:
        files = sorted((Path(run) / "points").glob(f"{pattern}.csv"))
        if not files:
            sys.exit(f"no points {pattern} in {run}")
        for f in files:
            if not (out / "points" / f.name).exists():
                shutil.copy2(f, out / "points" / f.name)
        print(f"{len(files)} points {pattern} from {run}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="are the points' texts byte-identical in NEW and SOURCE?")
    c.add_argument("new", type=Path)
    c.add_argument("source", type=Path)
    c.add_argument("points", nargs="+")
    m = sub.add_parser("compose", help="start run OUT on ANCHORS from RUN:POINT-GLOB sources")
    m.add_argument("out", type=Path)
    m.add_argument("anchors")
    m.add_argument("sources", nargs="+")
    args = ap.parse_args()
    if args.command == "check":
        sys.exit(0 if check(args.new, args.source, args.points) else 1)
    compose(args.out, args.anchors, args.sources)


if __name__ == "__main__":
    main()
