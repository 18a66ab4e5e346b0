"""What every ``lerplm`` command shares: the user-error edge, option types and the config loader."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer

from .errors import LerpError

opt = typer.Option  # a short name: the commands declare many options


Anchors = Annotated[Path, opt("--anchors", "-a", help="Anchor set directory (holds anchors.json).")]
Mixes = Annotated[list[str], opt("--mix", "-m", help='Levels, e.g. "sentiment=0.9,formality=0.3". Repeatable.')]
Weights = Annotated[str | None, opt("--weights", "-w", help='e.g. "sentiment=2,formality=1" (default: equal).')]
Config = Annotated[Path, opt("--config", "-c", help="Training config (TOML), e.g. examples/styles.toml.")]
Only = Annotated[list[str] | None, opt("--only", help="Only these attributes of the config. Repeatable.")]
DataDir = Annotated[str | None, opt(help="Override the config's data_dir.")]
Extrapolate = Annotated[bool, opt("--extrapolate", help="Allow levels in [-1, 2] (outside the anchors' hull).")]
Quantize = Annotated[str, opt(help="Base weights of the generation step: fp32 (exact), int8 or int4 (CPU, faster).")]
Scorers = Annotated[Path, opt("--scorers", "-s", help="Scorer directory (lerplm scorers train).")]
Prompts = Annotated[Path, opt("--prompts", help="One prompt per line.")]
RunOut = Annotated[Path, opt("--out", "-o", help="Run directory (resumes if it exists).")]
NewOut = Annotated[Path, opt("--out", "-o", help="Directory to write (must not exist).")]
Calibration = Annotated[Path | None, opt(help="Calibration file (default: ANCHORS/calibration.json).")]
Tokens = Annotated[int, opt(min=1)]
PresencePenalty = Annotated[
    float, opt(min=-2.0, max=2.0, help="Taken off every token the answer already holds (OpenAI's).")
]
FrequencyPenalty = Annotated[
    float, opt(min=-2.0, max=2.0, help="Taken off a token per time the answer holds it (OpenAI's).")
]
Rows = Annotated[int, opt(min=1, help="Generations per batch (many mixes per batch).")]
Skip = Annotated[int, opt(min=0, help="Skip the first N prompts (e.g. those used for calibration).")]
Count = Annotated[int | None, opt(min=1, help="Use N prompts (after --skip-prompts).")]


def user_errors(fn):
    """Turn LerpError into 'error: ...' on stderr with exit code 2, an OSError into the system's message with exit
    code 1, and Ctrl-C into a short note."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LerpError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        except OSError as e:  # a full disk, a file taken away mid-run: the system's words, not a traceback
            typer.echo(f"error: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""), err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("interrupted; finished work is kept (run the same command again to resume)", err=True)
            raise typer.Exit(130) from None

    return wrapper


def log(s: str) -> None:
    typer.echo(s, err=True)


def config_for(config: Path, data_dir: str | None, only: list[str] | None, **overrides):
    from .config import load_config

    return load_config(config, data_dir, overrides).only(only)
