"""Does target control hit its targets? Solved (calibrated) mixes against the naive mapping
(level = target score), generated on prompts the calibration never saw.

Targets are chosen inside what the response model says is reachable (a target nobody can reach
measures nothing but the reach): for one attribute, its predicted score at a few levels with weight 1;
for a pair, the predicted scores at level corners with equal weights. The naive mapping sets each
targeted attribute's level to its target score with equal weights, as a user would without a model.
With ``refine``, a third method closes the loop once: the calibrated mix's own measured mean scores on
these prompts shift the response model (calibrate.refine) and the solved mix is generated again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from ..calibrate import ResponseModel, Solution, refine, solve
from ..errors import LerpError
from .grids import GridPoint
from .metrics import ci95

SUMMARY = "targets.json"
METHODS = ("calibrated", "naive", "refined")
MIN_RANGE = 0.05  # an attribute whose predicted range is smaller gets no targets: the anchors do not move it


def target_sets(
    model: ResponseModel,
    singles: Sequence[str],
    pairs: Sequence[tuple[str, str]],
    levels: Sequence[float] = (0.1, 0.37, 0.63, 0.9),
    corners: Sequence[float] = (0.15, 0.85),
    min_range: float = MIN_RANGE,
) -> tuple[list[dict[str, float]], dict[str, float]]:
    """Reachable target dicts, and the predicted range of every single attribute (those under
    ``min_range`` are left out: no mapping can steer an attribute the anchors do not move)."""
    model.check_scored(singles)
    out, ranges = [], {}
    for a in singles:
        preds = [model.predict({a: lv}, {a: 1.0})[a] for lv in levels]
        ranges[a] = max(preds) - min(preds)
        if ranges[a] >= min_range:
            out += [{a: round(p, 3)} for p in preds]
    for a, b in pairs:
        for la in corners:
            for lb in corners:
                pred = model.predict({a: la, b: lb}, {a: 0.5, b: 0.5})
                out.append({a: round(pred[a], 3), b: round(pred[b], 3)})
    return out, ranges


def _slug(targets: dict[str, float]) -> str:
    return ",".join(f"{a}={t:g}" for a, t in targets.items())


def _point(method: str, t: dict[str, float], sol: Solution, levels: dict, weights: dict) -> GridPoint:
    meta = {
        "grid": "target",
        "targets": _slug(t),
        "n_targets": len(t),
        "reachable": int(not sol.warnings),
        "method": method,
        **{f"predicted_{a}": round(v, 4) for a, v in sol.predicted.items() if a in t},
    }
    return GridPoint(f"target-{method}-{_slug(t)}", dict(levels), dict(weights), meta)


def target_points(model: ResponseModel, targets: Sequence[dict[str, float]]) -> list[GridPoint]:
    """Two grid points per target: the solved mix and the naive one (levels = targets, equal weights)."""
    points = []
    for t in targets:
        sol = solve(model, t)
        points.append(_point("calibrated", t, sol, sol.mix.levels, sol.mix.weights))
        points.append(_point("naive", t, sol, t, {a: 1 / len(t) for a in t}))
    return points


def refined_points(model: ResponseModel, targets: Sequence[dict[str, float]], df: pd.DataFrame) -> list[GridPoint]:
    """One point per target: the calibrated solution refined with its own mean scores in ``df`` (the
    calibrated points' generations), to be generated on the same prompts."""
    points = []
    for t in targets:
        sol = solve(model, t)
        got = df[df["point"] == f"target-calibrated-{_slug(t)}"]
        if not len(got):
            raise LerpError(f"no generations of the calibrated point for {_slug(t)} to refine from")
        new, _ = refine(model, sol, {a: float(got[f"score_{a}"].mean()) for a in t})
        points.append(_point("refined", t, new, new.mix.levels, new.mix.weights))
    return points


def closed_loop(
    lm,
    scorers,
    model: ResponseModel,
    prompts: Sequence[str],
    targets: dict[str, float],
    rounds: int = 1,
    n: int = 1,
    params=None,
    free_weights: bool = False,
    extrapolate: bool = False,
    log: Callable[[str], None] = print,
) -> tuple[list[list[str]], Solution, dict[str, float]]:
    """Generate at the solved mix, measure the targeted attributes' mean scores over these prompts, refine
    the mix with them (calibrate.refine), and generate again, ``rounds`` times. Returns the last round's
    texts, its solution and its measured means: the batch the user asked for, steered by its own scores."""
    model.check_scored(targets)
    missing = [a for a in targets if a not in scorers.names]
    if missing:
        raise LerpError(f"the scorers have no {missing}; they score {', '.join(scorers.names)}")
    sol = solve(model, targets, free_weights=free_weights, extrapolate=extrapolate)
    for k in range(rounds + 1):
        texts = lm.generate(prompts, sol.mix, n=n, params=params, extrapolate=extrapolate)
        scores = scorers.score([t for ts in texts for t in ts])
        achieved = {a: float(scores[a].mean()) for a in targets}
        log(
            f"round {k}: {sol.mix.describe()} -> mean "
            + ", ".join(f"{a} {achieved[a]:.3f} (target {t:g})" for a, t in targets.items())
        )
        if k < rounds:
            sol, model = refine(model, sol, achieved, free_weights=free_weights, extrapolate=extrapolate)
    return texts, sol, achieved


def target_errors(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (grid point, targeted attribute): target, achieved mean score, its 95% half-width, |error|."""
    sel = df[df["meta_grid"] == "target"]
    if not len(sel):
        raise LerpError("no target points in these sweep results")
    recs = []
    for pid, g in sel.groupby("point", sort=False):
        for pair in str(g["meta_targets"].iloc[0]).split(","):
            a, _, t = pair.partition("=")
            s = g[f"score_{a}"].to_numpy(float)
            mean = float(s.mean())
            recs.append(
                {
                    "point": pid,
                    "method": g["meta_method"].iloc[0],
                    "targets": g["meta_targets"].iloc[0],
                    "n_targets": int(g["meta_n_targets"].iloc[0]),
                    "attribute": a,
                    "target": float(t),
                    "achieved": mean,
                    "reachable": bool(g["meta_reachable"].iloc[0]) if "meta_reachable" in g else True,
                    "ci95": ci95(s),
                    "abs_error": abs(mean - float(t)),
                    "n": len(s),
                }
            )
    out = pd.DataFrame(recs)
    # reachability belongs to the target (the solver's verdict), so both methods' rows take the calibrated one's
    verdict = out[out["method"] == "calibrated"].groupby("targets")["reachable"].all()
    out["reachable"] = out["targets"].map(verdict).fillna(True).astype(bool)
    return out


def _mae(errors: pd.DataFrame) -> dict[str, float]:
    return {
        m: float(errors[errors["method"] == m]["abs_error"].mean()) for m in METHODS if errors["method"].eq(m).any()
    }


def summarize(errors: pd.DataFrame) -> dict:
    """MAE per method: per attribute for one-attribute targets, and over two-attribute targets."""
    one, two = errors[errors["n_targets"] == 1], errors[errors["n_targets"] == 2]
    out: dict = {
        "single": {a: _mae(g) for a, g in one.groupby("attribute", sort=False)},
        "pairs": {
            key: _mae(g)
            for key, g in two.groupby(
                two["targets"].map(lambda s: "+".join(p.split("=")[0] for p in s.split(","))), sort=False
            )
        },
    }
    for part, sub in (("single", one), ("pairs", two)):
        if len(sub):
            out[f"{part}_overall"] = _mae(sub)
        reach = sub[sub["reachable"]]
        if 0 < len(reach) < len(sub):  # the solver warned for some targets: also report the ones it did not
            out[f"{part}_reachable"] = _mae(reach)
            out[f"{part}_unreachable_targets"] = sorted(set(sub[~sub["reachable"]]["targets"]))
    out["median_ci95"] = float(errors["ci95"].median())
    return out


def _plot(errors: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attrs = list(dict.fromkeys(errors["attribute"]))
    fig, axes = plt.subplots(1, len(attrs), figsize=(3.0 * len(attrs), 3.0), squeeze=False)
    for ax, a in zip(axes[0], attrs):
        g = errors[errors["attribute"] == a]
        for m, marker in zip(METHODS, "os^"):
            h = g[g["method"] == m]
            if not len(h):  # a method not run (refined without --refine) gets no legend entry
                continue
            ax.errorbar(h["target"], h["achieved"], yerr=h["ci95"], fmt=marker, ms=4, capsize=2, label=m, alpha=0.8)
        lo, hi = min(g["target"].min(), g["achieved"].min()) - 0.05, max(g["target"].max(), g["achieved"].max()) + 0.05
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
        ax.set_title(a)
        ax.set_xlabel("target score")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("achieved mean score")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(df: pd.DataFrame, out: str | Path, ranges: dict[str, float], meta: dict) -> dict:
    """targets.json, targets.csv (one row per target and attribute), targets.png and targets.md in ``out``."""
    out = Path(out)
    errors = target_errors(df)
    summary = summarize(errors) | {"predicted_ranges": ranges, **meta}
    refined = errors["method"].eq("refined").any()
    errors.to_csv(out / "targets.csv", index=False)
    (out / SUMMARY).write_text(json.dumps(summary, indent=2))
    _plot(errors, out / "targets.png")
    lines = [
        "# Target control: calibrated against naive",
        "",
        "Mean absolute error between target and achieved mean score "
        f"({meta.get('prompts', '?')} held-out prompts per point; "
        f"median 95% half-width of an achieved mean: {summary['median_ci95']:.3f}).",
        "",
        "| targets | attribute(s) | calibrated MAE | naive MAE | calibrated / naive |"
        + (" refined once (closed loop) MAE |" if refined else ""),
        "|---|---|---|---|---|" + ("---|" if refined else ""),
    ]

    def row(label: str, name: str, v: dict, bold: bool = False) -> str:
        b = "**" if bold else ""
        cells = [label, name, f"{b}{v['calibrated']:.3f}{b}", f"{b}{v['naive']:.3f}{b}", _ratio(v)]
        return "| " + " | ".join(cells + ([f"{b}{v['refined']:.3f}{b}"] if refined else [])) + " |"

    for part, label in (("single", "one attribute"), ("pairs", "two attributes")):
        for a, v in summary[part].items():
            lines.append(row(label, a, v))
        if f"{part}_overall" in summary:
            lines.append(row(label, "**all**", summary[f"{part}_overall"], bold=True))
        if f"{part}_reachable" in summary:
            lines.append(row(label, "**all the solver called reachable**", summary[f"{part}_reachable"], bold=True))
    skipped = [f"{a} ({r:.3f})" for a, r in ranges.items() if r < MIN_RANGE]
    if skipped:
        lines += [
            "",
            "Left out (predicted score range over levels 0.1-0.9 too small to set targets in): "
            + ", ".join(skipped)
            + ".",
        ]
    for part in ("single", "pairs"):
        if f"{part}_unreachable_targets" in summary:
            lines += [
                "",
                "The solver warned that these targets are out of reach under this calibration: "
                + "; ".join(summary[f"{part}_unreachable_targets"])
                + ".",
            ]
    lines += [
        "",
        "![target vs achieved](targets.png)",
        "",
        "| point | attribute | target | achieved | ±95% | solver: reachable |",
        "|---|---|---|---|---|---|",
    ]
    for r in errors.itertuples():
        cells = [r.point, r.attribute, f"{r.target:.3f}", f"{r.achieved:.3f}", f"{r.ci95:.3f}"]
        lines.append("| " + " | ".join(cells + ["yes" if r.reachable else "no"]) + " |")
    (out / "targets.md").write_text("\n".join(lines) + "\n")
    return summary


def _ratio(v: dict) -> str:
    return f"{v['calibrated'] / v['naive']:.2f}" if v["naive"] > 0 else "n/a"


def parse_pairs(specs: Sequence[str], attributes: Sequence[str]) -> list[tuple[str, str]]:
    pairs = []
    for s in specs:
        parts = [x.strip() for x in s.split(",")]
        if len(parts) != 2 or parts[0] == parts[1] or any(p not in attributes for p in parts):
            raise LerpError(f"--pair takes two different attributes as A,B (from {', '.join(attributes)}), got {s!r}")
        pairs.append((parts[0], parts[1]))
    return pairs


def evaluate_targets(
    anchors: str | Path,
    scorers: str | Path,
    prompts: Sequence[str],
    out: str | Path,
    calibration: str | Path | None = None,
    attributes: Sequence[str] | None = None,
    pairs: Sequence[str] = (),
    targets: Sequence[str] = (),
    max_new_tokens: int = 32,
    seed: int = 1,
    batch_rows: int = 64,
    closed: bool = False,
    meta: dict | None = None,
) -> dict:
    """Generate at the calibrated and the naive mix of each target (a grid inside the reachable range, or
    explicit ``targets`` such as "sentiment=0.4"), and with ``closed`` once more refined by the measured
    scores; score, and write the report and the generations into ``out`` (resumable). Returns the summary."""
    from ..anchors import AnchorSet
    from ..calibrate import CALIBRATION
    from ..generate import LerpModel, SamplingParams
    from ..mix import parse_assignments
    from .report import GENERATIONS, write_generations
    from .scorers import ScorerSet
    from .sweep import run_sweep

    anchor_set = AnchorSet.load(anchors)
    calibration = calibration or anchor_set.root / CALIBRATION
    model = ResponseModel.load_for(anchor_set, calibration)
    chosen, ranges = target_sets(model, attributes or list(model.scored), parse_pairs(pairs, model.scored))
    if targets:
        chosen = [parse_assignments(t, "target") for t in targets]
    if not chosen:
        raise LerpError("no reachable targets: the calibration predicts almost no control for these attributes")
    scorer_set = ScorerSet.load(scorers)
    lm = LerpModel.load(anchors)
    params = SamplingParams(max_new_tokens, 0.8, 0.95, 0, seed)
    points = target_points(model, chosen)
    df = run_sweep(lm, scorer_set, points, prompts, out, 1, params, batch_rows)
    if closed:
        df = run_sweep(lm, scorer_set, points + refined_points(model, chosen, df), prompts, out, 1, params, batch_rows)
    write_generations(df, list(prompts), Path(out) / GENERATIONS)
    return write_report(df, out, ranges, {"prompts": len(prompts), "calibration": str(calibration), **(meta or {})})


def steer(
    anchors: str | Path,
    scorers: str | Path,
    prompts: Sequence[str],
    target: str,
    rounds: int,
    n: int = 1,
    params=None,
    calibration: str | Path | None = None,
    free_weights: bool = False,
    extrapolate: bool = False,
    quantize: str = "fp32",
    log: Callable[[str], None] = print,
):
    """``generate --target --refine``: solve the target's mix, then ``rounds`` of closed-loop correction on these
    prompts (closed_loop). Returns the last round's solution, its texts and the loaded model."""
    from ..calibrate import solve_target
    from ..generate import LerpModel
    from ..mix import parse_assignments
    from .scorers import ScorerSet

    _, model = solve_target(anchors, target, calibration, free_weights, extrapolate)
    scorer_set = ScorerSet.load(scorers)
    lm = LerpModel.load(anchors, quantize=quantize)
    texts, sol, _ = closed_loop(
        lm,
        scorer_set,
        model,
        prompts,
        parse_assignments(target, "target"),
        rounds,
        n,
        params,
        free_weights,
        extrapolate,
        log=log,
    )
    return sol, texts, lm


def calibrate_runs(run_dirs: Sequence[str | Path], out: str | Path | None = None) -> tuple[ResponseModel, Path]:
    """Fit the response model on the pooled rows of sweeps of one anchor set and save it (default: inside the
    anchor set). Returns the model and where it was written."""
    import pandas as pd

    from ..anchors import AnchorSet
    from ..calibrate import CALIBRATION
    from .sweep import read_run

    frames, anchor_roots = [], set()
    for run in run_dirs:
        df, settings = read_run(run)
        if "anchors" not in settings:
            raise LerpError(
                f"{run} has no sweep.json naming its anchor set; calibrate from a run that 'lerplm sweep' wrote"
            )
        frames.append(df)
        anchor_roots.add(settings["anchors"])
    if len(anchor_roots) != 1:
        raise LerpError(f"the sweeps come from different anchor sets: {sorted(anchor_roots)}")
    anchor_set = AnchorSet.load(anchor_roots.pop())
    model = ResponseModel.fit(pd.concat(frames, ignore_index=True), anchor_set.names)
    path = Path(out) if out else anchor_set.root / CALIBRATION
    model.save(path, {"runs": [str(r) for r in run_dirs]})
    return model, path
