"""``lerplm report RUN_DIR``: metrics as JSON, PNG plots, and a Markdown report embedding them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from .metrics import Z95, control_curves, control_summary, entanglement, fit_share
from .sweep import read_run


def _attributes(df: pd.DataFrame) -> list[str]:
    return [c[len("score_") :] for c in df.columns if c.startswith("score_")]


def _plot_curves(
    curves_by_label: dict[str, pd.DataFrame], attrs: list[str], path: Path, column: str = "mean", ylabel: str = "score"
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(attrs), figsize=(3.2 * len(attrs), 3.0), sharey=column == "mean", squeeze=False)
    for ax, a in zip(axes[0], attrs):
        for label, curves in curves_by_label.items():
            c = curves[curves["attribute"] == a] if len(curves) else curves
            if not len(c):
                continue
            ax.plot(c["level"], c[column], marker="o", ms=3, label=label)
            if column == "mean":
                ax.fill_between(c["level"], c["mean"] - c["ci95"], c["mean"] + c["ci95"], alpha=0.25)
        ax.set_title(a)
        ax.set_xlabel("level")
        if column == "mean":
            ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    if len(curves_by_label) > 1:
        axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_heatmap(matrix: pd.DataFrame, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 * len(matrix) + 2, 1.0 * len(matrix) + 1.5))
    im = ax.imshow(matrix.to_numpy(float), cmap="coolwarm", vmin=-1, vmax=1)
    ax.set_xticks(range(len(matrix.columns)), matrix.columns, rotation=30, ha="right")
    ax.set_yticks(range(len(matrix.index)), matrix.index)
    ax.set_xlabel("score of attribute j")
    ax.set_ylabel("level of attribute i varied")
    for (i, j), v in np.ndenumerate(matrix.to_numpy(float)):
        ax.text(j, i, "" if math.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_simplex(df: pd.DataFrame, attrs: list[str], path: Path) -> list[str]:
    """One ternary heat map per scored attribute over the simplex of weights."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wcols = [c for c in df.columns if c.startswith("meta_w_")]
    corners = [c[len("meta_w_") :] for c in wcols]
    g = df.groupby(wcols)[[f"score_{a}" for a in attrs]].mean().reset_index()
    w = g[wcols].to_numpy(float)
    xy = w @ np.array([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    fig, axes = plt.subplots(1, len(attrs), figsize=(3.0 * len(attrs), 3.0), squeeze=False)
    for ax, a in zip(axes[0], attrs):
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=g[f"score_{a}"], cmap="viridis", vmin=0, vmax=1, s=120)
        for (x, y), name in zip([(0, 0), (1, 0), (0.5, math.sqrt(3) / 2)], corners):
            ax.annotate(name, (x, y), ha="center", va="top" if y == 0 else "bottom", fontsize=7)
        ax.set_title(f"score: {a}", fontsize=9)
        ax.set_axis_off()
        ax.set_aspect("equal")
    fig.colorbar(sc, ax=axes[0].tolist(), shrink=0.7)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return corners


def _simplex_table(df: pd.DataFrame, corners: list[str]) -> list[str]:
    """Each corner attribute's mean score at each vertex (its weight 1) and the least-squares slope of its score
    over its own weight across all points, ± 95%: how far a weight moves its attribute with the others sharing."""
    from scipy.stats import linregress

    head = [f"score at {c} = 1" for c in corners]
    lines = ["| attribute | " + " | ".join(head) + " | slope over its weight ± 95% |", "|" + "---|" * (len(head) + 2)]
    for a in corners:
        if f"score_{a}" not in df:
            continue
        at = [df.loc[np.isclose(df[f"meta_w_{c}"], 1.0), f"score_{a}"].mean() for c in corners]
        fit = linregress(df[f"meta_w_{a}"].astype(float), df[f"score_{a}"].astype(float))
        cells = [f"{v:.3f}" for v in at] + [f"{fit.slope:.3f} ± {Z95 * fit.stderr:.3f}"]
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    return lines


def _table(df: pd.DataFrame, fmt: str = "{:.3f}") -> list[str]:
    cols = [""] + [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for idx, row in df.iterrows():
        cells = [
            fmt.format(v)
            if isinstance(v, (float, np.floating)) and not math.isnan(v)
            else ("" if isinstance(v, float) else str(v))
            for v in row
        ]
        lines.append(f"| {idx} | " + " | ".join(cells) + " |")
    return lines


def _scorer_gaps(settings: dict) -> dict[str, float]:
    """Each attribute's score gap on real held-out texts, from the manifest of the scorers that scored it
    (a rescored run names one per attribute in ``scored_by``)."""
    scored_by = settings.get("scored_by")
    gaps = {}
    for root in set(scored_by.values()) if scored_by else {settings.get("scorers")}:  # each manifest read once
        path = Path(root or "") / "scorers.json"
        if path.is_file():
            entries = json.loads(path.read_text()).get("attributes", {})
            gaps.update(
                {
                    a: e["score_gap"]
                    for a, e in entries.items()
                    if "score_gap" in e and (not scored_by or scored_by.get(a) == root)
                }
            )
    return gaps


GENERATIONS = "generations.csv.gz"  # committed beside a report: anyone can rescore them with their own judges


def write_generations(df: pd.DataFrame, prompts: list[str] | None, path: Path) -> None:
    """Prompt, mix, sample, text and scores of every generation, one row each (gzip-compressed CSV)."""
    out = df.copy()
    if prompts and "prompt_id" in out:
        out.insert(0, "prompt", out["prompt_id"].map(lambda i: prompts[int(i)]))
    keep = ["prompt", "point", "sample", "seed", "text"]
    keep += [c for c in out.columns if c.startswith(("level_", "weight_", "score_"))]
    keep += ["base_ppl", "prompt_fit", "words", "distinct2"]
    out[[c for c in keep if c in out.columns]].to_csv(path, index=False, compression="gzip")


def build_report(
    run_dir: str | Path, title: str = "lerplm control report", samples_per_level: int = 1, sample_prompts: int = 3
) -> Path:
    """Compute metrics from ``run_dir/results.csv``; write summary.json, PNGs and report.md there."""
    run = Path(run_dir)
    df, settings = read_run(run)
    attrs = _attributes(df)
    grids = set(df["meta_grid"].unique())
    base = df[df["meta_grid"] == "base"]
    summary: dict = {"n_rows": len(df), "grids": sorted(grids), "settings": settings}
    lines = [f"# {title}", "", f"Sweep `{run}`: {len(df)} generations, grids: {', '.join(sorted(grids))}.", ""]
    if settings:
        p = settings.get("params", {})
        scored_by = settings.get("scored_by")
        scorers = ", ".join(f"{a} `{r}`" for a, r in scored_by.items()) if scored_by else f"`{settings.get('scorers')}`"
        lines += [
            f"Anchors `{settings.get('anchors')}`, scorers {scorers}; {len(settings.get('prompts', []))} prompts x "
            f"{settings.get('n')} samples per grid point; {p.get('max_new_tokens')} new tokens, "
            f"temperature {p.get('temperature')}, "
            f"top-p {p.get('top_p')}, seed {p.get('seed')}.",
            "",
        ]

    gaps = _scorer_gaps(settings)
    if gaps:
        lines += [
            "The scorer's test gap is its mean score on the positive endpoint's held-out texts minus the negative's: "
            "about the widest range a sweep can show with that scorer.",
            "",
        ]
    designs = [("single", None)] if "single" in grids else []
    if "focus" in grids:
        designs += [("focus", float(b)) for b in sorted(df.loc[df["meta_grid"] == "focus", "meta_b"].unique())]
    curves_by = {}
    for grid, b in designs:
        label = "single attribute" if grid == "single" else f"focus grid, b={b:g}"
        curves = control_curves(df, attrs, grid, b)
        curves_by[label] = curves
        s = control_summary(curves, df, grid, b)
        slopes, ent = entanglement(df, attrs, grid, b)
        key = grid if b is None else f"focus_b{b:g}"
        summary[key] = {
            "control": s,
            "slopes": slopes.to_dict(),
            "entanglement": ent.to_dict(),
            "curves": curves.to_dict("records"),
        }
        lines += [
            f"## {label}",
            "",
            "| attribute | Spearman ρ (level means) | ρ (all generations) | score at 0 | score at 1 "
            "| range ± 95% (paired by prompt) | fitted range ± 95% |"
            + (" scorer's test gap | range / gap |" if gaps else ""),
            "|---|---|---|---|---|---|---|" + ("---|---|" if gaps else ""),
        ]
        for a, e in s.items():
            gap = gaps.get(a, math.nan)
            e["range_over_gap"] = e["score_range"] / gap if gap else math.nan
            cells = [f"{e[k]:.3f}" for k in ("spearman_rho", "spearman_rho_rows", "score_at_0", "score_at_1")]
            cells += [
                f"{e['score_range']:.3f} ± {e['range_ci95']:.3f}",
                f"{e['fitted_range']:.3f} ± {e['fitted_range_ci95']:.3f}",
            ]
            if gaps:
                cells += [f"{gap:.3f}", f"{e['range_over_gap']:.2f}"] if a in gaps else ["not recorded", ""]
            lines.append(f"| {a} | " + " | ".join(cells) + " |")
        png = f"entanglement_{key}.png"
        _plot_heatmap(ent, run / png, f"entanglement ({label})")
        lines += [
            "",
            f"Entanglement: slope of score j against level i, each row divided by its diagonal ({label}).",
            "",
            *_table(ent),
            "",
            f"![entanglement]({png})",
            "",
        ]
    if curves_by:
        _plot_curves(curves_by, attrs, run / "control_curves.png")
        _plot_curves(curves_by, attrs, run / "fluency_base_ppl.png", "base_ppl_median", "median ppl under base")
        lines += [
            "## Control curves",
            "",
            "Mean score of the varied attribute at each level, with 95% intervals.",
            "",
            "![control curves](control_curves.png)",
            "",
        ]
        first = next(iter(curves_by.values()))
        if len(base):  # the base model alone: the same measures as a curve's, plus its mean scores
            cols = [c for c in ("words", "distinct2", "heldout_ppl") if c in base]
            summary["base"] = {"base_ppl_median": float(base["base_ppl"].median()), **base[cols].mean().to_dict()}
            summary["base"]["prompt_fit"] = fit_share(base)
            summary["base"] |= {c: float(base[c].mean()) for c in base.columns if c.startswith("score_")}

        def by_level(column: str, fmt: str) -> list[str]:
            """A level x attribute table, with the base model alone as its last row when the sweep ran it."""
            t = first.pivot(index="level", columns="attribute", values=column)
            t.index = [f"{v:g}" for v in t.index]
            if "base" in summary:
                t.loc["base model"] = summary["base"].get(column, math.nan)
            return _table(t, fmt)

        lines += [
            "## Fluency",
            "",
            "Median perplexity of the generations under the base model (conditioned on the prompt), by level:",
            "",
            *by_level("base_ppl_median", "{:.1f}"),
            "",
            "![fluency](fluency_base_ppl.png)",
            "",
        ]
        if first["heldout_ppl"].notna().any():
            lines += [
                "The interpolated model's own perplexity on held-out corpus text (the paper's WikiText-2 check), "
                "by level:",
                "",
                *by_level("heldout_ppl", "{:.1f}"),
                "",
            ]
        lines += [
            "Distinct-2 (unique word bigrams per generation), by level:",
            "",
            *by_level("distinct2", "{:.3f}"),
            "",
        ]
        if first["words"].notna().any():
            lines += [
                "## Answers",
                "",
                "Words per generation, by level (the anchors should change the style, not the length):",
                "",
                *by_level("words", "{:.1f}"),
                "",
                "Prompt fit: the share of generations the base model finds more likely under their own prompt than "
                "under the next one (0.5: texts that ignore their prompts), by level:",
                "",
                *by_level("prompt_fit", "{:.2f}"),
                "",
            ]
    if "simplex" in grids:
        sx = df[df["meta_grid"] == "simplex"]
        corners = _plot_simplex(sx, attrs, run / "simplex.png")
        lines += [
            "## Simplex of weights",
            "",
            f"Weights over {', '.join(corners)} (levels fixed); colour = mean score.",
            "",
            "![simplex](simplex.png)",
            "",
            *_simplex_table(sx, corners),
            "",
        ]
    if "single" in grids:
        lines += ["## Sample generations", ""]
        single = df[df["meta_grid"] == "single"]
        prompts = settings.get("prompts", [])
        for a in attrs:
            for pid in range(sample_prompts):
                rows = single[
                    (single["meta_varied"] == a)
                    & single["meta_level"].isin([0.0, 0.5, 1.0])
                    & (single["prompt_id"] == pid)
                    & (single["sample"] < samples_per_level)
                ]
                if not len(rows):
                    continue
                prompt = prompts[pid] if pid < len(prompts) else "?"
                lines += [f"**{a}** (prompt: {prompt!r})", "", "| level | score | text |", "|---|---|---|"]
                ref = base[(base["prompt_id"] == pid) & (base["sample"] < samples_per_level)]
                for label, r in [("base model", r) for _, r in ref.iterrows()] + [
                    (f"{r['meta_level']:g}", r) for _, r in rows.sort_values("meta_level").iterrows()
                ]:
                    text = str(r["text"]).replace("|", "/").replace("\n", " ")
                    lines.append(f"| {label} | {r[f'score_{a}']:.2f} | {text} |")
                lines.append("")
    write_generations(df, settings.get("prompts"), run / GENERATIONS)
    (run / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    (run / "report.md").write_text("\n".join(lines) + "\n")
    return run / "report.md"
