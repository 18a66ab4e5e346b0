"""Sweeps: generate for every grid point (many mixes per batch), score every generation on every
attribute, measure fluency, and write tidy rows. Resumable: a finished point has its own file."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..errors import LerpError
from ..files import atomic_file
from ..generate import SEEDING, LerpModel, SamplingParams
from .grids import ALIASES, GridPoint
from .scorers import ScorerSet

POINTS_DIR = "points"
RESULTS = "results.csv"
SETTINGS = "sweep.json"


def distinct_n(text: str, n: int = 2) -> float:
    """Unique word n-grams over all n-grams of one text (NaN when it has none)."""
    words = text.split()
    grams = list(zip(*(words[i:] for i in range(n))))
    return len(set(grams)) / len(grams) if grams else math.nan


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_file(path) as tmp:
        df.to_csv(tmp, index=False)


def _read_csv(path: Path) -> pd.DataFrame:
    """Rows as written: an empty generation stays an empty string, not NaN; grids by their current names."""
    df = pd.read_csv(path, keep_default_na=False, na_values=[""])
    if "meta_grid" in df:
        df["meta_grid"] = df["meta_grid"].replace(ALIASES)
    return df


def read_run(run: str | Path) -> tuple[pd.DataFrame, dict]:
    """A finished sweep's rows and its settings ({} when sweep.json is missing)."""
    run = Path(run)
    if not (run / RESULTS).is_file():
        raise LerpError(f"no sweep results in {run} ({RESULTS} not found; run 'lerplm sweep' first)")
    settings = json.loads((run / SETTINGS).read_text()) if (run / SETTINGS).is_file() else {}
    return _read_csv(run / RESULTS), settings


def _check_settings(out: Path, settings: dict) -> None:
    path = out / SETTINGS
    if path.is_file():
        old = json.loads(path.read_text())
        if old != settings:
            changed = sorted(k for k in settings if old.get(k) != settings.get(k))
            raise LerpError(f"{out} holds a sweep with other settings ({', '.join(changed)}); use a new --out")
    else:
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings, indent=2))


def settings_of(params: SamplingParams) -> dict:
    """``params`` as a sweep's settings record them; penalties and biases only when set, so sweeps recorded
    before the engine had them resume."""
    out = asdict(params) | {"logit_bias": {str(t): b for t, b in params.logit_bias.items()}}  # as JSON reads back
    for key, off in (("presence_penalty", 0.0), ("frequency_penalty", 0.0), ("logit_bias", {})):
        if out[key] == off:
            del out[key]
    return out


def run_sweep(
    lm: LerpModel,
    scorers: ScorerSet,
    points: Sequence[GridPoint],
    prompts: Sequence[str],
    out: str | Path,
    n: int = 1,
    params: SamplingParams | None = None,
    batch_rows: int = 64,
    heldout: Sequence[str] = (),
    progress: bool = True,
) -> pd.DataFrame:
    """Run (or finish) a sweep into ``out``; return every generation's row."""
    params = params or SamplingParams(max_new_tokens=32)
    params.validate()
    out = Path(out)
    ids = [p.id for p in points]
    if len(set(ids)) != len(ids):
        raise LerpError("the grid has duplicate points")
    _check_settings(
        out,
        {
            "anchors": str(lm.anchors.root),
            "scorers": str(scorers.root),
            "prompts": list(prompts),
            "n": n,
            "params": settings_of(params),
            "heldout_texts": len(heldout),
            "seeding": SEEDING,
            **({"quantize": lm.quantize} if lm.quantize != "fp32" else {}),  # fp32 runs keep their old settings
        },
    )
    (out / POINTS_DIR).mkdir(exist_ok=True)
    todo = [p for p in points if not (out / POINTS_DIR / f"{p.id}.csv").is_file()]
    per_chunk = max(1, batch_rows // (len(prompts) * n))
    bar = tqdm(total=len(points), initial=len(points) - len(todo), desc="grid points", disable=not progress)
    prefixes = lm.chat_prefixes(list(prompts))  # every chunk generates under the same prompts
    prefix_cache: dict = {}  # so the base model reads each prompt once for the fluency and prompt-swap passes
    for i in range(0, len(todo), per_chunk):
        chunk = todo[i : i + per_chunk]
        rows = [(p, k, prompt) for p in chunk for k, prompt in enumerate(prompts)]
        texts = lm.generate([r[2] for r in rows], [r[0].mix for r in rows], n=n, params=params)
        flat = [(p, k, prompt, j, t) for (p, k, prompt), ts in zip(rows, texts) for j, t in enumerate(ts)]
        gen = [f[4] for f in flat]
        scores = scorers.score(gen)
        fluency = lm.nll([prefixes[f[1]] for f in flat], gen, None, prefix_cache=prefix_cache)
        # the prompt-swap test: the same text under the next prompt; an answer that fits its own prompt is
        # more likely under it (the difference is 0 for a text that ignores its prompt)
        swapped = (
            lm.nll([prefixes[(f[1] + 1) % len(prompts)] for f in flat], gen, None, prefix_cache=prefix_cache)
            if len(prompts) > 1
            else []
        )
        held = _heldout_nll(lm, chunk, heldout)
        for p in chunk:
            recs = []
            for idx, (q, k, _prompt, j, text) in enumerate(flat):
                if q is not p:
                    continue
                recs.append(
                    {
                        "point": p.id,
                        **{f"meta_{m}": v for m, v in p.meta.items()},
                        **{f"level_{a}": v for a, v in p.levels.items()},
                        **{f"weight_{a}": v for a, v in p.weights.items()},
                        "prompt_id": k,
                        "sample": j,
                        "seed": params.seed,
                        "text": text,
                        **{f"score_{a}": float(s[idx]) for a, s in scores.items()},
                        "base_ppl": math.exp(fluency[idx]) if not math.isnan(fluency[idx]) else math.nan,
                        "prompt_fit": swapped[idx] - fluency[idx] if swapped else math.nan,
                        "words": len(text.split()),
                        "distinct2": distinct_n(text),
                        "heldout_ppl": held.get(p.id, math.nan),
                    }
                )
            _write_csv(pd.DataFrame(recs), out / POINTS_DIR / f"{p.id}.csv")
        bar.update(len(chunk))
    bar.close()
    df = pd.concat([_read_csv(out / POINTS_DIR / f"{p.id}.csv") for p in points], ignore_index=True)
    _write_csv(df, out / RESULTS)
    return df


def rescore(run: str | Path, scorers: ScorerSet, out: str | Path) -> pd.DataFrame:
    """Score a finished sweep's generations with other scorers into a new run directory.

    Generating is the expensive part of a sweep; comparing scorers on the same texts isolates the
    scorer's share of a result. Texts, mixes and fluency columns are kept; the score columns of the
    attributes these scorers cover are replaced, the others kept (a new scorer for one attribute)."""
    out = Path(out)
    df, settings = read_run(run)
    if out.exists():
        raise LerpError(f"{out} already exists; choose another --out")
    scores = scorers.score(df["text"].astype(str).tolist())
    kept = [c for c in df.columns if c.startswith("score_") and c.removeprefix("score_") not in scores]
    for name, s in scores.items():  # in place where the attribute was scored before, else after the scores
        col = f"score_{name}"
        if col not in df.columns:
            last = max(df.columns.get_loc(c) for c in df.columns if c == "text" or c.startswith("score_"))
            df.insert(last + 1, col, 0.0)
        df[col] = s.astype(float)
    out.mkdir(parents=True)
    scored_by = {
        **{c.removeprefix("score_"): settings.get("scorers") for c in kept},
        **{a: str(scorers.root) for a in scores},
    }
    (out / SETTINGS).write_text(
        json.dumps(
            {**settings, "scorers": str(scorers.root), "scored_by": scored_by, "rescored_from": str(run)}, indent=2
        )
    )
    _write_csv(df, out / RESULTS)
    return df


def _heldout_nll(lm: LerpModel, points: Sequence[GridPoint], texts: Sequence[str]) -> dict[str, float]:
    """The interpolated model's own perplexity on held-out text, per grid point (as the paper did on WikiText-2)."""
    if not texts:
        return {}
    out = {}
    for p in points:
        coeffs = None if p.mix is None else lm.coefficients([p.mix] * len(texts))
        nll = torch.tensor(lm.nll([""] * len(texts), texts, coeffs))
        out[p.id] = math.exp(nll.nanmean().item())
    return out


def sweep(
    anchors: str | Path,
    scorers: str | Path,
    grids: Sequence[str],
    prompts: Sequence[str],
    out: str | Path,
    n: int = 1,
    levels: int = 11,
    params: SamplingParams | None = None,
    batch_rows: int = 64,
    config: str | Path | None = None,
    heldout_per_endpoint: int = 10,
    quantize: str = "fp32",
) -> tuple[pd.DataFrame, int]:
    """run_sweep from paths and grid specs (e.g. "single:all"); held-out perplexity on ``config``'s test files;
    ``quantize`` sets the generation step's base weights (likelihoods stay exact). Returns the rows and the
    number of grid points."""
    from ..anchors import AnchorSet
    from ..config import load_config
    from ..data import heldout_sample
    from .grids import parse_grid

    names = AnchorSet.load(anchors).names
    points = [p for g in grids for p in parse_grid(g, names, levels)]
    scorer_set = ScorerSet.load(scorers)
    heldout = heldout_sample(load_config(config), heldout_per_endpoint) if config else []
    lm = LerpModel.load(anchors, quantize=quantize)
    df = run_sweep(lm, scorer_set, points, prompts, out, n, params, batch_rows, heldout)
    return df, len(points)
