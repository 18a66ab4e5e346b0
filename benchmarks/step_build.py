"""What the quantised step's prefill graph costs before the first token: the time to build the int8 step
(`LerpModel.step_model`) and the process's memory after it, with and without the prefill graph, each in a fresh
process (memory is read per process), the two taking turns ``--repeat`` times.

python benchmarks/step_build.py --anchors anchors/quickstart
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import save


def rss_gb() -> float:
    """The process's resident memory now (Linux), in GB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 1e9


def one(anchors: str, scheme: str, integer_prefill: bool) -> dict:
    """Build the step once in this process; print its numbers as JSON."""
    import lerplm
    from lerplm.engine import ortstep

    if not integer_prefill:  # the step without its prefill graph: prefill through the decode graph
        ortstep.OrtDecoder.__init__ = functools.partialmethod(ortstep.OrtDecoder.__init__, integer_prefill=False)
    lm = lerplm.load(anchors, quantize=scheme)
    before = rss_gb()
    t = time.perf_counter()
    _ = lm.step_model  # built on first use
    return {
        "build_s": time.perf_counter() - t,
        "rss_before_gb": before,
        "rss_after_gb": rss_gb(),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--anchors", required=True)
    ap.add_argument("--scheme", default="int8", choices=["int8", "int4"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--one", choices=["with", "without"], help=argparse.SUPPRESS)  # a single build, in a child
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.anchors, args.scheme, args.one == "with")))
        return
    runs: dict[str, list[dict]] = {"with": [], "without": []}
    for _ in range(args.repeat):
        for variant in runs:
            cmd = [sys.executable, __file__, "--anchors", args.anchors, "--scheme", args.scheme, "--one", variant]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            runs[variant].append(json.loads(out.strip().splitlines()[-1]))
    summary = {v: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for v, rs in runs.items()}
    for variant, s in summary.items():
        print(
            f"{variant:7s} prefill graph: build {s['build_s']:.2f} s, memory {s['rss_before_gb']:.2f} -> "
            f"{s['rss_after_gb']:.2f} GB (peak {s['peak_rss_gb']:.2f})",
            flush=True,
        )
    print(
        "wrote", save("step_build", {"anchors": args.anchors, "scheme": args.scheme, "runs": runs, "median": summary})
    )


if __name__ == "__main__":
    main()
