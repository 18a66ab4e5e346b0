"""The ``lerplm`` command: a thin typer layer over the Python API.

User mistakes (LerpError) print one line and exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Annotated

import typer

from . import cli_common as o
from .cli_common import log, opt, user_errors
from .errors import LerpError
from .evaluate.cli import app as evaluate_app
from .mix import Mix

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Continuous, multi-attribute control of text generation by interpolating LoRA adapters.",
)
app.add_typer(evaluate_app)  # sweep, rescore, report, calibrate, eval-targets and the scorers group


@app.callback()
def _edge() -> None:
    """Library notices that are not the user's business stay off the terminal."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    for pattern in (r".*is_gradient_checkpointing.*", r".*pin_memory.*", r".*past_key_values.*"):
        warnings.filterwarnings("ignore", message=pattern)


def _mixes(anchors: Path, mix: list[str], weights: str | None, extrapolate: bool) -> list[Mix]:
    """Every mix parsed and checked against the anchor set before any model loads."""
    from .anchors import AnchorSet

    if not mix:
        raise LerpError('give at least one --mix, e.g. --mix "sentiment=0.8"')
    names = AnchorSet.load(anchors).names
    mixes = [Mix.from_spec(m, weights) for m in mix]
    for m in mixes:
        m.coefficients(names, extrapolate)
    return mixes


@app.command()
@user_errors
def train(
    config: o.Config,
    out: Annotated[Path, opt("--out", "-o", help="Anchor set directory to write (resumes if it exists).")],
    data_dir: o.DataDir = None,
    max_examples: Annotated[int | None, opt(min=1, help="Cap texts per endpoint.")] = None,
    max_steps: Annotated[int | None, opt(min=1, help="Cap optimizer steps per anchor.")] = None,
    together: Annotated[bool, opt("--together", help="Train all unfinished anchors in one run.")] = False,
    activation_checkpointing: Annotated[bool, opt(help="Recompute layers in backward: less memory.")] = False,
    only: o.Only = None,
    text_format: Annotated[str | None, opt(help="plain or chat (texts answer --chat-prompt).")] = None,
    chat_prompt: Annotated[str | None, opt(help="The user turn that chat-format texts answer.")] = None,
) -> None:
    """Train one LoRA anchor adapter per endpoint of every attribute in the config."""
    from .train import train_anchors

    overrides = dict(max_examples=max_examples, max_steps=max_steps, text_format=text_format, chat_prompt=chat_prompt)
    cfg = o.config_for(config, data_dir, only, **overrides)
    anchors = train_anchors(cfg, out, log, together=together, activation_checkpointing=activation_checkpointing)
    typer.echo(anchors.describe())


@app.command()
@user_errors
def info(anchors: Annotated[Path, typer.Argument(help="Anchor set directory.")]) -> None:
    """Describe an anchor set: base model, attributes, endpoints, training."""
    from .anchors import AnchorSet

    s = AnchorSet.load(anchors)
    typer.echo(s.describe())
    if warning := s.check_base():
        log(f"warning: {warning}")


@app.command()
@user_errors
def generate(
    anchors: o.Anchors,
    mix: o.Mixes = [],
    weights: o.Weights = None,
    prompt: Annotated[list[str], opt("--prompt", "-p", help="A prompt (repeatable).")] = [],
    prompts_file: Annotated[Path | None, opt(help="A file with one prompt per line.")] = None,
    n: Annotated[int, opt(min=1, help="Samples per prompt and mix.")] = 1,
    max_new_tokens: o.Tokens = 64,
    temperature: Annotated[float, opt(min=0.0, help="0 = greedy.")] = 0.8,
    top_p: Annotated[float, opt(min=0.0, max=1.0)] = 0.95,
    top_k: Annotated[int, opt(min=0, help="0 = off.")] = 0,
    presence_penalty: o.PresencePenalty = 0.0,
    frequency_penalty: o.FrequencyPenalty = 0.0,
    seed: int = 0,
    extrapolate: o.Extrapolate = False,
    target: Annotated[str | None, opt(help='Target scores instead of levels, e.g. "formality=0.8".')] = None,
    calibration: o.Calibration = None,
    free_weights: Annotated[bool, opt(help="With --target: the solver moves the weights too.")] = False,
    refine: Annotated[int, opt(min=0, help="With --target: closed-loop rounds scored by --scorers.")] = 0,
    scorers: Annotated[Path | None, opt("--scorers", "-s", help="Scorer directory for --refine.")] = None,
    as_json: Annotated[bool, opt("--json", help="One JSON object per line.")] = False,
    quantize: o.Quantize = "fp32",
    schedule: Annotated[list[str], opt(help='A mix over the new tokens: "0:sentiment=0; 64:sentiment=1".')] = [],
    interpolate: Annotated[str, opt(help="Between --schedule points: linear or step.")] = "linear",
    merge: Annotated[
        bool | None,
        opt(
            "--merge/--no-merge",
            help="Merge the run's one fixed mix into the weights first: the base model's speed. Default: merge when"
            " the run has one fixed mix and the step can take it (not int4).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Generate under one or more mixes, schedules or a --target; every (prompt, mix) pair shares one batch."""
    from .anchors import AnchorSet
    from .data import read_texts
    from .generate import LerpModel, SamplingParams
    from .mix import Schedule

    prompts = list(prompt) + (read_texts(prompts_file) if prompts_file else [])
    if not prompts:
        raise LerpError("give a --prompt or a --prompts-file")
    if sum(map(bool, (mix, schedule, target))) > 1:
        raise LerpError("give one of --mix, --schedule or --target")
    if merge and (schedule or refine):
        raise LerpError("--merge takes one fixed mix: not a --schedule or a --refine loop")
    params = SamplingParams(
        max_new_tokens,
        temperature,
        top_p,
        top_k,
        seed,
        presence_penalty=presence_penalty,
        frequency_penalty=frequency_penalty,
    )
    if refine:
        from .evaluate.targets import steer

        if not (target and scorers):
            raise LerpError("--refine needs a --target and the --scorers that measure it")
        sol, outs, lm = steer(
            anchors, scorers, prompts, target, refine, n, params, calibration, free_weights, extrapolate, quantize, log
        )
        mixes = [sol.mix]
    else:
        if target:
            mixes = [_solved(anchors, target, calibration, free_weights, extrapolate)]
        elif schedule:
            names = AnchorSet.load(anchors).names
            mixes = [Schedule.from_spec(spec, interpolate) for spec in schedule]
            for m in mixes:
                m.coefficient_fn(names, extrapolate)
        else:
            mixes = _mixes(anchors, mix, weights, extrapolate)
        lm = LerpModel.load(anchors, quantize=quantize)
        if merge and len(mixes) != 1:
            raise LerpError(f"--merge takes one mix; got {len(mixes)}")
        if merge is None:  # by default: one fixed mix runs merged wherever the step can take it
            merge = len(mixes) == 1 and not schedule and lm.merge_refusal() is None
        if merge:
            lm.merge(mixes[0], extrapolate)
        rows = [(p, m) for m in mixes for p in prompts]
        outs = lm.generate([p for p, _ in rows], [m for _, m in rows], n=n, params=params, extrapolate=extrapolate)
    for (p, m), texts in zip([(p, m) for m in mixes for p in prompts], outs):
        for j, text in enumerate(texts):
            rec = dict(prompt=p, mix=m.to_json(lm.anchors.names, extrapolate), sample=j, seed=seed, text=text)
            typer.echo(json.dumps(rec, ensure_ascii=False) if as_json else f"[{m.describe()}] {p}\n  -> {text}\n")


def _solved(anchors: Path, target: str, calibration: Path | None, free_weights: bool, extrapolate: bool) -> Mix:
    from .calibrate import solve_target

    sol, _ = solve_target(anchors, target, calibration, free_weights, extrapolate)
    for w in sol.warnings:
        log(f"warning: {w}")
    predicted = ", ".join(f"{a}={sol.predicted[a]:.2f}" for a in sol.targets)
    log(f"solved mix: {sol.mix.describe()} (predicted {predicted})")
    return sol.mix


@app.command()
@user_errors
def export(
    anchors: o.Anchors,
    out: o.NewOut,
    mix: o.Mixes = [],
    weights: o.Weights = None,
    grid: Annotated[list[str], opt("--grid", "-g", help="Every point of a grid (see 'sweep').")] = [],
    levels: Annotated[int, opt(min=2, help="Levels per varied attribute in --grid.")] = 11,
    fmt: Annotated[str, opt("--format", "-f", help="peft (exact LoRA), merged (full weights) or gguf.")] = "peft",
    rank: Annotated[int | None, opt(min=1, help="peft: best rank-R approximation; reports the error.")] = None,
    extrapolate: o.Extrapolate = False,
) -> None:
    """Write mixes as PEFT adapters or merged models, or the anchors as llama.cpp LoRA files (gguf)."""
    from .export import export_anchors

    mixes = [Mix.from_spec(m, weights) for m in mix]
    typer.echo(export_anchors(anchors, out, fmt, mixes, grid, levels, extrapolate, rank))


@app.command()
@user_errors
def serve(
    anchors: o.Anchors,
    host: Annotated[str, opt(help="Bind address (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, opt(min=1, max=65535, help="TCP port.")] = 8000,
    api_key: Annotated[str | None, opt(envvar="LERPLM_API_KEY", help="Require this bearer key.")] = None,
    max_batch: Annotated[int, opt(min=1, help="Rows in the running batch.")] = 16,
    max_queue: Annotated[int, opt(min=1, help="Waiting requests before 503.")] = 64,
    max_tokens: Annotated[int, opt(min=1, help="Per-request limit on max_tokens.")] = 512,
    max_prompt_tokens: Annotated[int, opt(min=1, help="Per-request limit on prompt length.")] = 1024,
    quantize: o.Quantize = "fp32",
    default_mix: Annotated[str, opt(help='Mix of requests without "mix": base or levels.')] = "base",
    preset: Annotated[list[str], opt(help="NAME=LEVELS, served as model id NAME. Repeatable.")] = [],
) -> None:
    """Serve an OpenAI-compatible API (a mix per request, continuous batching) and the slider page at /."""
    from .doctor import require

    require("serve", "serving")
    from .serve.server import serve as run

    limits = (max_batch, max_queue, max_tokens, max_prompt_tokens)
    run(anchors, host, port, api_key, *limits, quantize, default_mix, preset, log)


@app.command()
def doctor() -> None:
    """Check the environment (Python, torch, device, libraries, embedded model) and say how to fix gaps."""
    from .doctor import report

    text, ok = report()
    typer.echo(text)
    raise typer.Exit(0 if ok else 1)
