"""The ``lerplm`` command: a thin typer layer over the Python API.

User mistakes (LerpError) print one line and exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import threading
from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import LerpError
from .mix import Mix

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Continuous, multi-attribute control of text generation by interpolating LoRA adapters.")

AnchorsOpt = Annotated[Path, typer.Option("--anchors", "-a", help="Anchor set directory (holds anchors.json).")]
MixOpt = Annotated[list[str], typer.Option("--mix", "-m", help='Levels, e.g. "sentiment=0.9,formality=0.3". Repeat for several mixes.')]
WeightsOpt = Annotated[Optional[str], typer.Option("--weights", "-w", help='Weights, e.g. "sentiment=2,formality=1" (default: equal).')]
ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Training config (TOML), e.g. examples/styles.toml.")]
OnlyOpt = Annotated[Optional[list[str]], typer.Option("--only", help="Only these attributes of the config. Repeatable.")]
DataDirOpt = Annotated[Optional[str], typer.Option(help="Override the config's data_dir.")]
ExtrapolateOpt = Annotated[bool, typer.Option("--extrapolate", help="Allow levels in [-1, 2] (outside the anchors' hull).")]
QuantizeOpt = Annotated[str, typer.Option(help="Base weights of the generation step: fp32 (exact), int8 or int4 (weight-only, CPU; faster).")]


def user_errors(fn):
    """Turn LerpError into 'error: ...' on stderr with exit code 2, and Ctrl-C into a short note."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LerpError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted; finished work is kept (run the same command again to resume)", err=True)
            raise typer.Exit(130) from None

    return wrapper


def _quiet_transformers() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def _solve_target(anchors: Path, target: str, calibration: Path | None, free_weights: bool, extrapolate: bool):
    from .anchors import AnchorSet
    from .calibrate import ResponseModel, solve
    from .mix import parse_assignments

    model = ResponseModel.load_for(AnchorSet.load(anchors), calibration)
    sol = solve(model, parse_assignments(target, "target"), free_weights=free_weights, extrapolate=extrapolate)
    for w in sol.warnings:
        typer.echo(f"warning: {w}", err=True)
    predicted = ", ".join(f"{a}={sol.predicted[a]:.2f}" for a in sol.targets)
    typer.echo(f"solved mix: {sol.mix.describe()} (predicted {predicted})", err=True)
    return sol.mix


def _closed_loop(anchors: Path, scorers: Path, calibration: Path | None, prompts: list[str], target: str, rounds: int,
                 n: int, params, free_weights: bool, extrapolate: bool):
    """generate --target --refine: the last round's mix, texts and model (evaluate.targets.closed_loop)."""
    _require_eval()
    from .anchors import AnchorSet
    from .calibrate import ResponseModel
    from .evaluate.scorers import ScorerSet
    from .evaluate.targets import closed_loop
    from .generate import LerpModel
    from .mix import parse_assignments

    model = ResponseModel.load_for(AnchorSet.load(anchors), calibration)
    targets = parse_assignments(target, "target")
    model.check_scored(targets)
    scorer_set = ScorerSet.load(scorers)
    _quiet_transformers()
    lm = LerpModel.load(anchors)
    texts, sol, _ = closed_loop(lm, scorer_set, model, prompts, targets, rounds, n, params, free_weights, extrapolate,
                                log=lambda s: typer.echo(s, err=True))
    for w in sol.warnings:
        typer.echo(f"warning: {w}", err=True)
    return [sol.mix], texts, lm


def _checked_schedule(anchors: Path, spec: str, interpolate: str, extrapolate: bool):
    from .anchors import AnchorSet
    from .mix import Schedule

    sched = Schedule.from_spec(spec, interpolate)
    sched.coefficient_fn(AnchorSet.load(anchors).names, extrapolate)
    return sched


def _checked_mixes(anchors: Path, mix: list[str], weights: str | None, extrapolate: bool):
    """Parse and validate every mix against the anchor set before any model is loaded."""
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
    config: ConfigOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Anchor set directory to write (resumes if it exists).")],
    data_dir: DataDirOpt = None,
    max_examples: Annotated[Optional[int], typer.Option(min=1, help="Cap texts per endpoint.")] = None,
    max_steps: Annotated[Optional[int], typer.Option(min=1, help="Cap optimizer steps per anchor.")] = None,
    together: Annotated[bool, typer.Option("--together", help="Train all unfinished anchors in one run (every batch carries rows of each; see docs/performance.md).")] = False,
    activation_checkpointing: Annotated[bool, typer.Option("--activation-checkpointing", help="Recompute each decoder layer in backward: much less activation memory (needed for --together with many anchors), one more forward per step.")] = False,
    only: OnlyOpt = None,
    text_format: Annotated[Optional[str], typer.Option(help="plain (texts end to end) or chat (each text as the answer to --chat-prompt in the chat template). Overrides the config.")] = None,
    chat_prompt: Annotated[Optional[str], typer.Option(help="User turn that the texts answer when text_format is chat.")] = None,
) -> None:
    """Train one LoRA anchor adapter per endpoint of every attribute in the config."""
    from .config import load_config
    from .train import train_anchors

    cfg = load_config(config, data_dir, {"max_examples": max_examples, "max_steps": max_steps,
                                         "text_format": text_format, "chat_prompt": chat_prompt})
    anchors = train_anchors(_only(cfg, only), out, log=lambda s: typer.echo(s, err=True), together=together,
                            activation_checkpointing=activation_checkpointing)
    typer.echo(anchors.describe())


def _only(cfg, only: list[str] | None):
    """The config restricted to the attributes named by --only (all when none are named)."""
    if only:
        unknown = sorted(set(only) - {a.name for a in cfg.attributes})
        if unknown:
            raise LerpError(f"--only names {unknown}, not in the config ({', '.join(a.name for a in cfg.attributes)})")
        cfg.attributes = [a for a in cfg.attributes if a.name in only]
    return cfg


@app.command()
@user_errors
def info(anchors: Annotated[Path, typer.Argument(help="Anchor set directory.")]) -> None:
    """Describe an anchor set: base model, attributes, endpoints, training."""
    from .anchors import AnchorSet

    s = AnchorSet.load(anchors)
    typer.echo(s.describe())
    warning = s.check_base()
    if warning:
        typer.echo(f"warning: {warning}", err=True)


@app.command()
@user_errors
def generate(
    anchors: AnchorsOpt,
    mix: MixOpt = [],
    weights: WeightsOpt = None,
    prompt: Annotated[list[str], typer.Option("--prompt", "-p", help="A prompt (repeatable).")] = [],
    prompts_file: Annotated[Optional[Path], typer.Option(help="A file with one prompt per line.")] = None,
    n: Annotated[int, typer.Option(min=1, help="Samples per prompt and mix.")] = 1,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 64,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 = greedy.")] = 0.8,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.95,
    top_k: Annotated[int, typer.Option(min=0, help="0 = off.")] = 0,
    seed: int = 0,
    extrapolate: ExtrapolateOpt = False,
    target: Annotated[Optional[str], typer.Option(help='Target scores instead of levels, e.g. "formality=0.8,sentiment=0.3" (needs a calibration).')] = None,
    calibration: Annotated[Optional[Path], typer.Option(help="Calibration file (default: ANCHORS/calibration.json).")] = None,
    free_weights: Annotated[bool, typer.Option(help="With --target: let the solver move the weights too.")] = False,
    refine: Annotated[int, typer.Option(min=0, help="With --target: closed-loop rounds; each scores this batch (--scorers), corrects the mix and generates again.")] = 0,
    scorers: Annotated[Optional[Path], typer.Option("--scorers", "-s", help="Scorer directory for --refine.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    quantize: QuantizeOpt = "fp32",
    schedule: Annotated[list[str], typer.Option(help='A mix that changes over the new tokens, e.g. "0:sentiment=0; 64:sentiment=1" (instead of --mix; repeatable).')] = [],
    interpolate: Annotated[str, typer.Option(help="Between --schedule points: linear (coefficients blend token by token) or step (each segment re-reads the text so far under its mix).")] = "linear",
) -> None:
    """Generate under one or more mixes (or the mix solved for --target); every (prompt, mix) pair shares one batch."""
    from .generate import LerpModel, SamplingParams

    prompts = list(prompt)
    if prompts_file:
        from .data import read_texts

        prompts += read_texts(prompts_file)
    if not prompts:
        raise LerpError("give a --prompt or a --prompts-file")
    params = SamplingParams(max_new_tokens, temperature, top_p, top_k, seed)
    if refine:
        if not (target and scorers):
            raise LerpError("--refine needs a --target and the --scorers that measure it")
        mixes, outs, lm = _closed_loop(anchors, scorers, calibration, prompts, target, refine, n, params, free_weights, extrapolate)
    else:
        if target:
            mixes = [_solve_target(anchors, target, calibration, free_weights, extrapolate)]
        elif schedule:
            if mix:
                raise LerpError("give --mix or --schedule, not both")
            mixes = [_checked_schedule(anchors, spec, interpolate, extrapolate) for spec in schedule]
        else:
            mixes = _checked_mixes(anchors, mix, weights, extrapolate)
        _quiet_transformers()
        lm = LerpModel.load(anchors, quantize=quantize)
        outs = lm.generate([p for _ in mixes for p in prompts], [m for m in mixes for _ in prompts], n=n, params=params,
                           extrapolate=extrapolate)
    pairs = [(m, p) for m in mixes for p in prompts]
    for (m, p), texts in zip(pairs, outs):
        for j, text in enumerate(texts):
            if as_json:
                rec = {"prompt": p, "mix": m.to_json(lm.anchors.names, extrapolate),
                       "sample": j, "seed": seed, "text": text}
                typer.echo(json.dumps(rec, ensure_ascii=False))
            else:
                typer.echo(f"[{m.describe()}] {p}\n  -> {text}\n")


@app.command()
@user_errors
def export(
    anchors: AnchorsOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write (must not exist).")],
    mix: MixOpt = [],
    weights: WeightsOpt = None,
    grid: Annotated[list[str], typer.Option("--grid", "-g", help="Export every point of a grid (see 'sweep'), e.g. single:sentiment.")] = [],
    levels: Annotated[int, typer.Option(min=2, help="Levels per varied attribute in --grid.")] = 11,
    fmt: Annotated[str, typer.Option("--format", "-f", help="peft (one exact LoRA adapter), merged (full weights) or gguf (every anchor as a llama.cpp LoRA; --mix prints its per-request scales).")] = "peft",
    rank: Annotated[Optional[int], typer.Option(min=1, help="peft only: best rank-R approximation (SVD of the exact ΔW); reports the error.")] = None,
    extrapolate: ExtrapolateOpt = False,
) -> None:
    """Write a mix as a standard PEFT adapter or merged model; several mixes (or a grid) as a set of adapters."""
    from .anchors import AnchorSet
    from .evaluate.grids import parse_grid
    from .export import export as run_export
    from .export import export_grid, export_peft
    from .generate import LerpModel

    if fmt not in ("peft", "merged", "gguf"):
        raise LerpError(f"unknown --format {fmt!r}; choose from: peft, merged, gguf")
    if fmt == "gguf":
        if grid or rank is not None:
            raise LerpError("--format gguf writes the anchors themselves; a mix is a request's scales (--mix), not a file")
        _export_gguf(anchors, out, _checked_mixes(anchors, mix, weights, extrapolate) if mix else [], extrapolate)
        return
    if rank is not None and fmt != "peft":
        raise LerpError("--rank applies to --format peft only")
    names = AnchorSet.load(anchors).names
    named = {p.id: p.mix for g in grid for p in parse_grid(g, names, levels)}
    if mix or not grid:
        named |= {m.slug(): m for m in _checked_mixes(anchors, mix, weights, extrapolate)}
    for m in named.values():
        m.coefficients(names, extrapolate)
    if len(named) > 1 and fmt != "peft":
        raise LerpError("several mixes export as PEFT adapters only (--format peft)")
    _quiet_transformers()
    lm = LerpModel.load(anchors, device="cpu")
    if len(named) > 1:
        manifest = export_grid(lm, named, out, extrapolate, rank)
        typer.echo(f"wrote {len(named)} PEFT adapters and exports.json to {out} (max rank {manifest['max_rank']}: "
                   "set your engine's max LoRA rank at least this high)")
        return
    (name, only), = named.items()
    if fmt == "peft":
        info = export_peft(lm, only, out, extrapolate, rank)
        err = f"; relative error max {info['relative_error']['max']:.2e}, mean {info['relative_error']['mean']:.2e}" if rank else ""
        typer.echo(f"wrote PEFT adapter of rank {info['rank']} for [{only.describe()}] to {out}{err}")
    else:
        run_export(lm, only, out, fmt, extrapolate)
        typer.echo(f"wrote merged model for [{only.describe()}] to {out}")


def _export_gguf(anchors: Path, out: Path, mixes: list, extrapolate: bool) -> None:
    from .export import export_gguf, llama_lora_field, llama_server_command
    from .generate import LerpModel

    _quiet_transformers()
    lm = LerpModel.load(anchors, device="cpu")
    manifest = export_gguf(lm, out)
    typer.echo(f"wrote {len(manifest['adapters'])} llama.cpp LoRA adapters to {out}; serve them with:")
    typer.echo(f"  {llama_server_command(manifest, out)}")
    if not manifest["base_gguf"]:
        typer.echo("  (BASE.gguf: the base model converted with llama.cpp's convert_hf_to_gguf.py)")
    for m in mixes:
        typer.echo(f"[{m.describe()}] request field: \"lora\": {json.dumps(llama_lora_field(lm, m, extrapolate))}")


@app.command()
@user_errors
def serve(
    anchors: AnchorsOpt,
    host: Annotated[str, typer.Option(help="Bind address (loopback by default).")] = "127.0.0.1",
    port: int = 8000,
    api_key: Annotated[Optional[str], typer.Option(envvar="LERPLM_API_KEY", help="Require 'Authorization: Bearer KEY' on /v1/ routes.")] = None,
    max_batch: Annotated[int, typer.Option(min=1, help="Rows in the running batch.")] = 16,
    max_queue: Annotated[int, typer.Option(min=1, help="Waiting requests before 503.")] = 64,
    max_tokens: Annotated[int, typer.Option(min=1, help="Per-request limit on max_tokens.")] = 512,
    max_prompt_tokens: Annotated[int, typer.Option(min=1, help="Per-request limit on prompt length.")] = 1024,
    quantize: QuantizeOpt = "fp32",
    default_mix: Annotated[str, typer.Option(help='The mix of requests that send no "mix": "base" (the base model alone) or levels, e.g. "sentiment=0.5".')] = "base",
    preset: Annotated[list[str], typer.Option(help='NAME=LEVELS, e.g. "formal-cheerful=formality=1,sentiment=0.9": served as model id NAME. Repeatable.')] = [],
) -> None:
    """Serve an OpenAI-compatible API (a mix per request, continuous batching) and the slider page at /."""
    missing = [m for m in ("fastapi", "uvicorn", "prometheus_client") if importlib.util.find_spec(m) is None]
    if missing:
        raise LerpError(f"serving needs {', '.join(missing)}: pip install 'lerplm[serve]'")
    import uvicorn

    from .anchors import AnchorSet
    from .generate import LerpModel
    from .serve.app import create_app

    names = AnchorSet.load(anchors).names
    base = None if default_mix.strip().lower() == "base" else Mix.from_spec(default_mix)
    presets = {}
    for p in preset:
        name, sep, spec = p.partition("=")
        if not sep or not name.strip() or not spec:
            raise LerpError(f"bad --preset {p!r}: write NAME=LEVELS, e.g. formal=formality=1")
        presets[name.strip()] = Mix.from_spec(spec)
    for m in [base, *presets.values()]:
        if m is not None:
            m.coefficients(names)  # unknown attributes and bad levels fail here, before the model loads
    _quiet_transformers()
    app_ = create_app(LerpModel.load(anchors, quantize=quantize), api_key, max_batch, max_queue, max_tokens,
                      max_prompt_tokens, engine_thread=False, default_mix=base, presets=presets)
    server = uvicorn.Server(uvicorn.Config(app_, host=host, port=port, log_level="warning"))
    http = threading.Thread(target=server.run, name="lerplm-http", daemon=True)
    http.start()
    typer.echo(f"serving {anchors} on http://{host}:{port}/ (API at /v1, page at /){' with an API key' if api_key else ''}", err=True)
    engine = app_.state.engine
    threading.Thread(target=lambda: (http.join(), engine.stop()), daemon=True).start()  # HTTP failed to start or ended
    try:
        engine.loop()  # the model runs on the main thread, where torch's kernels are fastest
    except KeyboardInterrupt:
        pass
    finally:
        server.should_exit = True
        http.join(timeout=10)


@app.command()
@user_errors
def calibrate(
    run_dirs: Annotated[list[Path], typer.Argument(help="Sweep run directories (their results.csv are pooled).")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Calibration file (default: ANCHORS/calibration.json).")] = None,
) -> None:
    """Fit the response model (mix -> expected scores) from sweeps; report its cross-validated error."""
    _require_eval()
    import pandas as pd

    from .anchors import AnchorSet
    from .calibrate import CALIBRATION, ResponseModel
    from .evaluate.sweep import read_run

    frames, anchor_roots = [], set()
    for run in run_dirs:
        df, settings = read_run(run)
        if "anchors" not in settings:
            raise LerpError(f"{run} has no sweep.json naming its anchor set; calibrate from a run that 'lerplm sweep' wrote")
        frames.append(df)
        anchor_roots.add(settings["anchors"])
    if len(anchor_roots) != 1:
        raise LerpError(f"the sweeps come from different anchor sets: {sorted(anchor_roots)}")
    anchor_set = AnchorSet.load(anchor_roots.pop())
    model = ResponseModel.fit(pd.concat(frames, ignore_index=True), anchor_set.names)
    path = out or anchor_set.root / CALIBRATION
    model.save(path, {"runs": [str(r) for r in run_dirs]})
    for a, e in model.cv_mae.items():
        typer.echo(f"{a}: cross-validated MAE of grid-point mean scores {e:.3f}")
    typer.echo(f"wrote {path} ({model.n_points} grid points)")


@app.command()
def doctor() -> None:
    """Check the environment (Python, torch, device, libraries, embedded model) and say how to fix gaps."""
    from .doctor import report

    text, ok = report()
    typer.echo(text)
    raise typer.Exit(0 if ok else 1)


def _require_eval() -> None:
    missing = [m for m in ("sklearn", "scipy", "pandas", "matplotlib") if importlib.util.find_spec(m) is None]
    if missing:
        raise LerpError(f"evaluation needs {', '.join(missing)}: pip install 'lerplm[eval]'")


scorers_app = typer.Typer(no_args_is_help=True, help="Attribute scorers (classifiers giving P(positive endpoint)).")
app.add_typer(scorers_app, name="scorers")


@scorers_app.command("train")
@user_errors
def scorers_train(
    config: ConfigOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Scorer directory to write (must not exist).")],
    data_dir: DataDirOpt = None,
    max_train: Annotated[Optional[int], typer.Option(min=1, help="Cap training texts per endpoint.")] = None,
    kind: Annotated[str, typer.Option(help="tfidf (word + char n-grams), hidden (pooled hidden states of --model) or finetune (--model fine-tuned as a classifier).")] = "tfidf",
    model: Annotated[str, typer.Option(help="hidden, finetune: the model ('default' = the embedded base, a directory, a hub id).")] = "default",
    layer: Annotated[int, typer.Option(help="hidden: which hidden state (0 = embeddings, -1 = last layer).")] = -1,
    only: OnlyOpt = None,
) -> None:
    """Train one scorer per attribute; report held-out accuracy, AUC and score gap."""
    _require_eval()
    from .config import load_config
    from .evaluate.scorers import train_scorers

    train_scorers(_only(load_config(config, data_dir), only), out, max_train, log=typer.echo, kind=kind, model=model, layer=layer)
    typer.echo(f"wrote scorers to {out}")


@app.command()
@user_errors
def sweep(
    anchors: AnchorsOpt,
    scorers: Annotated[Path, typer.Option("--scorers", "-s", help="Scorer directory (lerplm scorers train).")],
    grid: Annotated[list[str], typer.Option("--grid", "-g", help="single:ATTR[,..]|all, five[:b=0.05,0.15,0.2], simplex:A,B,C[:steps]. Repeatable.")],
    prompts: Annotated[Path, typer.Option("--prompts", help="One prompt per line.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory (resumes if it exists).")],
    n: Annotated[int, typer.Option(min=1, help="Samples per prompt and grid point.")] = 1,
    max_prompts: Annotated[Optional[int], typer.Option(min=1, help="Use N prompts (after --skip-prompts).")] = None,
    skip_prompts: Annotated[int, typer.Option(min=0, help="Skip the first N prompts (e.g. to keep them for evaluation).")] = 0,
    levels: Annotated[int, typer.Option(min=2, help="Levels per varied attribute.")] = 11,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 32,
    temperature: Annotated[float, typer.Option(min=0.0)] = 0.8,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.95,
    seed: int = 0,
    batch_rows: Annotated[int, typer.Option(min=1, help="Generations per batch (many mixes per batch).")] = 64,
    config: Annotated[Optional[Path], typer.Option(help="Training config: its test files give the held-out perplexity.")] = None,
    heldout_per_endpoint: Annotated[int, typer.Option(min=0, help="Held-out texts per endpoint for perplexity.")] = 10,
) -> None:
    """Generate over a grid of mixes, score every generation on every attribute, write tidy rows."""
    _require_eval()
    from .anchors import AnchorSet
    from .evaluate.grids import parse_grid
    from .evaluate.scorers import ScorerSet
    from .evaluate.sweep import run_sweep
    from .generate import LerpModel, SamplingParams

    names = AnchorSet.load(anchors).names
    points = [p for g in grid for p in parse_grid(g, names, levels)]
    prompt_list = _prompt_slice(prompts, skip_prompts, max_prompts)
    scorer_set = ScorerSet.load(scorers)
    heldout = _heldout_texts(config, heldout_per_endpoint) if config else []
    _quiet_transformers()
    lm = LerpModel.load(anchors)
    params = SamplingParams(max_new_tokens, temperature, top_p, 0, seed)
    df = run_sweep(lm, scorer_set, points, prompt_list, out, n, params, batch_rows, heldout)
    typer.echo(f"wrote {len(df)} rows for {len(points)} grid points to {out}; next: lerplm report {out}")


@app.command()
@user_errors
def rescore(
    run_dir: Annotated[Path, typer.Argument(help="A finished sweep's run directory.")],
    scorers: Annotated[Path, typer.Option("--scorers", "-s", help="Scorer directory to score with instead.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="New run directory (must not exist).")],
) -> None:
    """Score a sweep's generations again with other scorers (no generation); then lerplm report OUT."""
    _require_eval()
    from .evaluate.scorers import ScorerSet
    from .evaluate.sweep import rescore as rescore_run

    scorer_set = ScorerSet.load(scorers)
    _quiet_transformers()
    df = rescore_run(run_dir, scorer_set, out)
    typer.echo(f"rescored {len(df)} generations into {out}; next: lerplm report {out}")


@app.command("eval-targets")
@user_errors
def eval_targets(
    anchors: AnchorsOpt,
    scorers: Annotated[Path, typer.Option("--scorers", "-s", help="Scorer directory (lerplm scorers train).")],
    prompts: Annotated[Path, typer.Option("--prompts", help="One prompt per line.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory (resumes if it exists).")],
    calibration: Annotated[Optional[Path], typer.Option(help="Calibration file (default: ANCHORS/calibration.json).")] = None,
    skip_prompts: Annotated[int, typer.Option(min=0, help="Skip the first N prompts (those used for calibration).")] = 0,
    max_prompts: Annotated[Optional[int], typer.Option(min=1, help="Then use N prompts.")] = None,
    attribute: Annotated[Optional[list[str]], typer.Option("--attribute", help="One-attribute targets for these (default: all calibrated).")] = None,
    pair: Annotated[Optional[list[str]], typer.Option("--pair", help="Two-attribute targets, e.g. sentiment,formality. Repeatable.")] = None,
    target: Annotated[Optional[list[str]], typer.Option("--target", "-t", help='Explicit targets instead of the grid, e.g. "sentiment=0.4,formality=0.7". Repeatable.')] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 32,
    seed: int = 1,
    batch_rows: Annotated[int, typer.Option(min=1, help="Generations per batch.")] = 64,
    refine: Annotated[bool, typer.Option("--refine", help="Also a closed loop: refine each calibrated mix once with its own measured scores on these prompts, and generate again.")] = False,
) -> None:
    """Calibrated target control against the naive mapping (level = target) on prompts not used for calibration."""
    _require_eval()
    from .anchors import AnchorSet
    from .calibrate import CALIBRATION, ResponseModel
    from .evaluate.scorers import ScorerSet
    from .evaluate.sweep import run_sweep
    from .evaluate.targets import parse_pairs, refined_points, target_points, target_sets, write_report
    from .generate import LerpModel, SamplingParams
    from .mix import parse_assignments

    anchor_set = AnchorSet.load(anchors)
    calibration = calibration or anchor_set.root / CALIBRATION
    model = ResponseModel.load_for(anchor_set, calibration)
    targets, ranges = target_sets(model, attribute or list(model.scored), parse_pairs(pair or [], model.scored))
    if target:
        targets = [parse_assignments(t, "target") for t in target]
    if not targets:
        raise LerpError("no reachable targets: the calibration predicts almost no control for these attributes")
    prompt_list = _prompt_slice(prompts, skip_prompts, max_prompts)
    scorer_set = ScorerSet.load(scorers)
    _quiet_transformers()
    lm = LerpModel.load(anchors)
    params = SamplingParams(max_new_tokens, 0.8, 0.95, 0, seed)
    points = target_points(model, targets)
    df = run_sweep(lm, scorer_set, points, prompt_list, out, 1, params, batch_rows)
    if refine:
        df = run_sweep(lm, scorer_set, points + refined_points(model, targets, df), prompt_list, out, 1, params, batch_rows)
    summary = write_report(df, out, ranges, {"prompts": len(prompt_list), "skip_prompts": skip_prompts,
                                              "calibration": str(calibration)})
    for part in ("single_overall", "pairs_overall"):
        if part in summary:
            v = summary[part]
            typer.echo(f"{part.split('_')[0]} targets: " + ", ".join(f"{m} MAE {e:.3f}" for m, e in v.items()))
    typer.echo(f"wrote {out / 'targets.md'}")


def _prompt_slice(path: Path, skip: int, count: int | None) -> list[str]:
    from .data import read_texts

    got = read_texts(path)[skip:][:count]
    if not got:
        raise LerpError(f"{path} has no prompts after skipping {skip}")
    return got


def _heldout_texts(config: Path, per_endpoint: int) -> list[str]:
    import random

    from .config import load_config
    from .train import endpoint_texts

    cfg = load_config(config)
    texts = []
    for a in cfg.attributes:
        for ep in (a.negative, a.positive):
            got, _ = endpoint_texts(cfg, ep, held_out=True)
            texts += random.Random(0).sample(got, min(per_endpoint, len(got)))
    return texts


@app.command()
@user_errors
def report(
    run_dir: Annotated[Path, typer.Argument(help="A sweep's run directory.")],
    title: str = "lerplm control report",
) -> None:
    """Metrics, PNG plots and a Markdown report for a sweep."""
    _require_eval()
    from .evaluate.report import build_report

    typer.echo(f"wrote {build_report(run_dir, title)}")
