"""The evaluation commands of ``lerplm``: scorers, sweeps, rescoring, reports, calibration, target checks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..cli_common import (
    Anchors,
    Calibration,
    Config,
    Count,
    DataDir,
    FrequencyPenalty,
    NewOut,
    Only,
    PresencePenalty,
    Prompts,
    Quantize,
    Rows,
    RunOut,
    Scorers,
    Skip,
    Tokens,
    config_for,
    opt,
    user_errors,
)

app = typer.Typer()
scorers_app = typer.Typer(no_args_is_help=True, help="Attribute scorers (classifiers giving P(positive endpoint)).")
app.add_typer(scorers_app, name="scorers")
RunDir = Annotated[Path, typer.Argument(help="A sweep's run directory.")]


def _require_eval() -> None:
    from ..doctor import require

    require("eval", "evaluation")


@scorers_app.command("train")
@user_errors
def scorers_train(
    config: Config,
    out: NewOut,
    data_dir: DataDir = None,
    max_train: Annotated[int | None, opt(min=1, help="Cap training texts per endpoint.")] = None,
    kind: Annotated[str, opt(help="tfidf (n-grams), hidden (pooled hidden states) or finetune.")] = "tfidf",
    model: Annotated[
        str, opt(help="hidden, finetune: 'default' (embedded base), a directory or a hub id.")
    ] = "default",
    layer: Annotated[int, opt(help="hidden: which hidden state (0 = embeddings, -1 = last layer).")] = -1,
    only: Only = None,
) -> None:
    """Train one scorer per attribute; report held-out accuracy, AUC and score gap."""
    _require_eval()
    from .scorers import train_scorers

    train_scorers(
        config_for(config, data_dir, only), out, max_train, log=typer.echo, kind=kind, model=model, layer=layer
    )
    typer.echo(f"wrote scorers to {out}")


@app.command()
@user_errors
def sweep(
    anchors: Anchors,
    scorers: Scorers,
    grid: Annotated[list[str], opt("--grid", "-g", help="single:ATTR,..|all, focus[:b=..], simplex:A,B,C[:steps].")],
    prompts: Prompts,
    out: RunOut,
    n: Annotated[int, opt(min=1, help="Samples per prompt and grid point.")] = 1,
    max_prompts: Count = None,
    skip_prompts: Skip = 0,
    levels: Annotated[int, opt(min=2, help="Levels per varied attribute.")] = 11,
    max_new_tokens: Tokens = 32,
    temperature: Annotated[float, opt(min=0.0)] = 0.8,
    top_p: Annotated[float, opt(min=0.0, max=1.0)] = 0.95,
    presence_penalty: PresencePenalty = 0.0,
    frequency_penalty: FrequencyPenalty = 0.0,
    seed: int = 0,
    batch_rows: Rows = 64,
    config: Annotated[Path | None, opt(help="Training config: its test files give held-out perplexity.")] = None,
    heldout_per_endpoint: Annotated[int, opt(min=0, help="Held-out texts per endpoint.")] = 10,
    quantize: Quantize = "fp32",
) -> None:
    """Generate over a grid of mixes, score every generation on every attribute, write tidy rows."""
    _require_eval()
    from ..data import read_prompts
    from ..generate import SamplingParams
    from .sweep import sweep as run

    params = SamplingParams(
        max_new_tokens,
        temperature,
        top_p,
        0,
        seed,
        presence_penalty=presence_penalty,
        frequency_penalty=frequency_penalty,
    )
    df, points = run(
        anchors,
        scorers,
        grid,
        read_prompts(prompts, skip_prompts, max_prompts),
        out,
        n,
        levels,
        params,
        batch_rows,
        config,
        heldout_per_endpoint,
        quantize,
    )
    typer.echo(f"wrote {len(df)} rows for {points} grid points to {out}; next: lerplm report {out}")


@app.command()
@user_errors
def rescore(run_dir: RunDir, scorers: Scorers, out: NewOut) -> None:
    """Score a sweep's generations again with other scorers (no generation); then lerplm report OUT."""
    _require_eval()
    from .scorers import ScorerSet
    from .sweep import rescore as run

    df = run(run_dir, ScorerSet.load(scorers), out)
    typer.echo(f"rescored {len(df)} generations into {out}; next: lerplm report {out}")


@app.command()
@user_errors
def report(run_dir: RunDir, title: str = "lerplm control report") -> None:
    """Metrics, PNG plots and a Markdown report for a sweep."""
    _require_eval()
    from .report import build_report

    typer.echo(f"wrote {build_report(run_dir, title)}")


@app.command()
@user_errors
def calibrate(
    run_dirs: Annotated[list[Path], typer.Argument(help="Sweep run directories (their results are pooled).")],
    out: Annotated[Path | None, opt("--out", "-o", help="Default: ANCHORS/calibration.json.")] = None,
) -> None:
    """Fit the response model (mix -> expected scores) from sweeps; report its cross-validated error."""
    _require_eval()
    from .targets import calibrate_runs

    model, path = calibrate_runs(run_dirs, out)
    for a, e in model.cv_mae.items():
        typer.echo(f"{a}: cross-validated MAE of grid-point mean scores {e:.3f}")
    typer.echo(f"wrote {path} ({model.n_points} grid points)")


@app.command("eval-targets")
@user_errors
def eval_targets(
    anchors: Anchors,
    scorers: Scorers,
    prompts: Prompts,
    out: RunOut,
    calibration: Calibration = None,
    skip_prompts: Skip = 0,
    max_prompts: Count = None,
    attribute: Annotated[list[str] | None, opt("--attribute", help="One-attribute targets for these.")] = None,
    pair: Annotated[list[str] | None, opt("--pair", help="Two-attribute targets, e.g. a,b. Repeatable.")] = None,
    target: Annotated[list[str] | None, opt("--target", "-t", help='Explicit targets, e.g. "a=0.4,b=0.7".')] = None,
    max_new_tokens: Tokens = 32,
    seed: int = 1,
    batch_rows: Rows = 64,
    refine: Annotated[bool, opt("--refine", help="Also refine each mix once by its measured scores.")] = False,
) -> None:
    """Calibrated target control against the naive mapping (level = target) on prompts not used for calibration."""
    _require_eval()
    from ..data import read_prompts
    from .targets import evaluate_targets

    summary = evaluate_targets(
        anchors,
        scorers,
        read_prompts(prompts, skip_prompts, max_prompts),
        out,
        calibration,
        attribute,
        pair or [],
        target or [],
        max_new_tokens,
        seed,
        batch_rows,
        refine,
        {"skip_prompts": skip_prompts},
    )
    for part in ("single", "pairs"):
        if f"{part}_overall" in summary:
            maes = summary[f"{part}_overall"].items()
            typer.echo(f"{part} targets: " + ", ".join(f"{m} MAE {e:.3f}" for m, e in maes))
    typer.echo(f"wrote {Path(out) / 'targets.md'}")
