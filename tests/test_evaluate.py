"""Evaluation: scorers on tiny data, grid builders, metrics with known answers, sweep resumption, report files."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest

from lerplm import LerpError
from lerplm.config import load_config
from lerplm.evaluate.grids import focus, parse_grid, simplex, single
from lerplm.evaluate.metrics import control_curves, control_summary, entanglement
from lerplm.evaluate.report import build_report
from lerplm.evaluate.scorers import ScorerSet, train_scorers
from lerplm.evaluate.sweep import distinct_n, rescore, run_sweep
from lerplm.generate import SamplingParams

GOOD = [
    "great food and lovely staff",
    "wonderful place, amazing service",
    "loved it, great value",
    "amazing and lovely",
]
BAD = ["awful food and rude staff", "terrible place, horrible service", "hated it, awful value", "horrible and rude"]


def tiny_scorer_config(tmp_path):
    for name, lines in [
        ("pos.train.txt", GOOD * 5),
        ("neg.train.txt", BAD * 5),
        ("pos.test.txt", GOOD),
        ("neg.test.txt", BAD),
    ]:
        (tmp_path / name).write_text("\n".join(lines) + "\n")
    (tmp_path / "c.toml").write_text(
        'data_dir = "."\n[[attributes]]\nname = "sentiment"\n'
        'negative = { name = "negative", files = ["neg.train.txt"] }\n'
        'positive = { name = "positive", files = ["pos.train.txt"] }\n'
    )
    return load_config(tmp_path / "c.toml")


def test_scorers_train_report_and_reload(tmp_path):
    train_scorers(tiny_scorer_config(tmp_path), tmp_path / "scorers", log=lambda s: None)
    info = json.loads((tmp_path / "scorers" / "scorers.json").read_text())["attributes"]["sentiment"]
    assert info["accuracy"] == 1.0 and info["auc"] == 1.0 and info["n_test"] == 8
    loaded = ScorerSet.load(tmp_path / "scorers")
    assert info["score_gap"] == pytest.approx(
        loaded.score(GOOD)["sentiment"].mean() - loaded.score(BAD)["sentiment"].mean()
    )
    s = loaded.score(["lovely amazing food", "rude and horrible"])["sentiment"]
    assert 0 <= s[1] < 0.5 < s[0] <= 1
    with pytest.raises(LerpError, match="already exists"):
        train_scorers(tiny_scorer_config(tmp_path), tmp_path / "scorers", log=lambda s: None)
    with pytest.raises(LerpError, match="scorers.json not found"):
        ScorerSet.load(tmp_path)


def test_hidden_state_scorers_train_reload_and_share_one_feature_model(tmp_path, base_dir):
    cfg = tiny_scorer_config(tmp_path)
    cfg.attributes.append(cfg.attributes[0].model_copy(update={"name": "copy"}))
    train_scorers(cfg, tmp_path / "hidden", log=lambda s: None, kind="hidden", model=str(base_dir), layer=2)
    info = json.loads((tmp_path / "hidden" / "scorers.json").read_text())["attributes"]["sentiment"]
    assert info["kind"] == "hidden" and info["model"] == str(base_dir) and info["layer"] == 2
    assert info["accuracy"] == 1.0  # 8 distinct texts seen in training, in a 64-dim feature space
    loaded = ScorerSet.load(tmp_path / "hidden")
    assert loaded.scorers["sentiment"].features is loaded.scorers["copy"].features  # one model, one pass per batch
    s = loaded.score(GOOD[:1] + BAD[:1])
    assert 0 <= s["sentiment"][1] < 0.5 < s["sentiment"][0] <= 1
    np.testing.assert_allclose(s["sentiment"], s["copy"])
    feats = loaded.scorers["sentiment"].features
    texts = ["a", "", "much longer text with many more tokens in it", *GOOD]  # batched by length, returned in order
    batched = feats(texts)
    feats.batch_size = 1
    np.testing.assert_allclose(batched, np.stack([feats([t])[0] for t in texts]), atol=1e-5)
    assert not batched[1].any()  # an empty text has no tokens to pool
    for kw, msg in [
        ({"kind": "hidden", "layer": 9}, "layer 9 does not exist"),
        ({"kind": "bert"}, "unknown scorer kind"),
    ]:
        with pytest.raises(LerpError, match=msg):
            train_scorers(cfg, tmp_path / "bad", log=lambda s: None, model=str(base_dir), **kw)
    assert not (tmp_path / "bad").exists()


def test_finetuned_scorer_learns_saves_and_reloads(tmp_path, base_dir):
    from lerplm.evaluate.scorers import FinetunedScorer, KindOptions, _batches

    lengths = np.random.default_rng(1).integers(1, 60, 100)
    batches = _batches(np.arange(100), lengths, 4, np.random.default_rng(0))
    epoch = [next(batches) for _ in range(25)]
    assert sorted(np.concatenate(epoch).tolist()) == list(range(100))  # every row once per epoch
    assert np.mean([np.ptp(lengths[b]) for b in epoch]) < 0.5 * np.mean(
        [np.ptp(lengths[b]) for b in np.arange(100).reshape(25, 4)]
    )

    scorer = FinetunedScorer(str(base_dir), r=4, epochs=15, learning_rate=3e-3, batch_size=8).fit(BAD * 5, GOOD * 5)
    good, bad = scorer.score(GOOD), scorer.score(BAD)
    assert good.min() > 0.5 > bad.max()  # learned the words, on a random-init tiny model
    assert 0.05 <= scorer.temperature <= 20 and scorer.score([]).shape == (0,)
    assert not scorer._base().use_kernels  # the classifier keeps its own layers too
    saved = scorer.save(tmp_path / "sentiment.finetune")
    again = FinetunedScorer.load(tmp_path, saved, KindOptions())
    np.testing.assert_allclose(again.score(GOOD + BAD), np.concatenate([good, bad]), atol=1e-5)
    # through train_scorers and scorers.json (default settings: a few steps, so only the plumbing is checked)
    train_scorers(
        tiny_scorer_config(tmp_path), tmp_path / "ft", log=lambda s: None, kind="finetune", model=str(base_dir)
    )
    info = json.loads((tmp_path / "ft" / "scorers.json").read_text())["attributes"]["sentiment"]
    assert info["kind"] == "finetune" and info["dir"] == "sentiment.finetune" and info["model"] == str(base_dir)
    loaded = ScorerSet.load(tmp_path / "ft")
    assert isinstance(loaded.scorers["sentiment"], FinetunedScorer)
    assert info["score_gap"] == pytest.approx(
        loaded.score(GOOD)["sentiment"].mean() - loaded.score(BAD)["sentiment"].mean(), abs=1e-6
    )


def test_grids():
    attrs = ["a", "b", "c", "d", "e"]
    five = focus(attrs, (0.05, 0.15, 0.2), 11)
    assert len(five) == 3 * 5 * 11
    for p in five:
        assert sum(p.weights.values()) == pytest.approx(1.0)
        assert p.weights[p.meta["varied"]] == pytest.approx(1 - 4 * p.meta["b"])
        assert p.levels[p.meta["varied"]] == p.meta["level"]
    assert [p.levels["a"] for p in single("a", 11)] == pytest.approx([i / 10 for i in range(11)])
    sx = simplex(["a", "b", "c"], steps=4)
    assert len(sx) == 15 and all(sum(p.weights.values()) == pytest.approx(1.0) for p in sx)
    assert len({p.id for p in parse_grid("single:all", attrs, 5) + parse_grid("focus:b=0.1", attrs, 5)}) == 25 + 25
    assert parse_grid("five:b=0.1", attrs, 5) == parse_grid("focus:b=0.1", attrs, 5)  # the paper's name still works
    for bad, msg in [
        ("single:x", "unknown attribute"),
        ("cube", "unknown grid"),
        ("simplex:a,b", "exactly three"),
        ("five:b=0.3", "too large"),
    ]:
        with pytest.raises(LerpError, match=msg):
            parse_grid(bad, attrs)


def synthetic(n_per_level=40, seed=0):
    """score_a = 0.2 + 0.6 l (+noise) when a is varied, score_b = 0.5 + 0.3 l then; b varied moves only b."""
    rng = np.random.default_rng(seed)
    recs = []
    for varied in ["a", "b"]:
        for lvl in np.linspace(0, 1, 11):
            for k in range(n_per_level):
                noise = rng.normal(0, 0.05)
                if varied == "a":
                    sa, sb = 0.2 + 0.6 * lvl + noise, 0.5 + 0.3 * lvl
                else:
                    sa, sb = 0.4, 0.1 + 0.8 * lvl
                recs.append(
                    {
                        "meta_grid": "single",
                        "meta_varied": varied,
                        "meta_level": lvl,
                        "score_a": sa,
                        "score_b": sb,
                        "base_ppl": 10.0,
                        "distinct2": 1.0,
                        "heldout_ppl": 20.0,
                        "prompt_id": k,
                        "sample": 0,
                        "text": "x",
                    }
                )
    return pd.DataFrame(recs)


def test_metrics_recover_known_answers():
    df = synthetic()
    curves = control_curves(df, ["a", "b"])
    a = curves[curves["attribute"] == "a"]
    assert a["mean"].to_numpy() == pytest.approx(0.2 + 0.6 * np.linspace(0, 1, 11), abs=0.03)
    rows_a = df[df["meta_varied"] == "a"]
    by_level = rows_a.groupby("meta_level")["score_a"]
    # each level's half-width is 1.96 s / sqrt(n) of its own rows, exactly
    assert a["ci95"].to_numpy() == pytest.approx((1.96 * by_level.std(ddof=1) / np.sqrt(by_level.size())).to_numpy())
    assert a["ci95"].to_numpy() == pytest.approx(1.96 * 0.05 / math.sqrt(40), rel=0.35)  # and near the true noise
    s = control_summary(curves, df)
    assert s["b"]["spearman_rho"] == pytest.approx(1.0) and s["b"]["score_range"] == pytest.approx(0.8)
    assert s["a"]["score_range"] == pytest.approx(0.6, abs=0.05)
    # independent noise at both ends: the range's half-width is 1.96 sd sqrt(2) / sqrt(n); none for b's exact rows
    lo = rows_a[rows_a["meta_level"] == 0].set_index("prompt_id")["score_a"]
    hi = rows_a[rows_a["meta_level"] == 1].set_index("prompt_id")["score_a"]
    d = (hi - lo).to_numpy()  # paired by prompt
    assert s["a"]["range_ci95"] == pytest.approx(1.96 * d.std(ddof=1) / math.sqrt(len(d)))
    assert s["a"]["range_ci95"] == pytest.approx(1.96 * 0.05 * math.sqrt(2) / math.sqrt(40), rel=0.35)
    assert s["b"]["range_ci95"] == pytest.approx(0.0, abs=1e-12)
    # the line through all 11 levels: slope 0.6 with half-width 1.96 sd / sqrt(40 sum (l - 0.5)^2) = 0.0148
    assert s["a"]["fitted_range"] == pytest.approx(0.6, abs=0.03)
    # ordinary least squares with one intercept per prompt, solved independently: slope and its standard error
    X = np.column_stack([rows_a["meta_level"], pd.get_dummies(rows_a["prompt_id"]).to_numpy(float)])
    y = rows_a["score_a"].to_numpy()
    beta, rss, *_ = np.linalg.lstsq(X, y, rcond=None)
    se = math.sqrt(rss[0] / (len(y) - X.shape[1]) * np.linalg.inv(X.T @ X)[0, 0])
    assert s["a"]["fitted_range"] == pytest.approx(beta[0]) and s["a"]["fitted_range_ci95"] == pytest.approx(1.96 * se)
    assert s["a"]["fitted_range_ci95"] == pytest.approx(1.96 * 0.05 / math.sqrt(40 * 1.1), rel=0.35)
    assert s["b"]["fitted_range"] == pytest.approx(0.8) and s["b"]["fitted_range_ci95"] == pytest.approx(0.0, abs=1e-9)
    slopes, ent = entanglement(df, ["a", "b"])
    assert slopes.loc["a", "b"] == pytest.approx(0.3) and slopes.loc["b", "a"] == pytest.approx(0.0, abs=1e-9)
    assert ent.loc["a", "b"] == pytest.approx(0.3 / slopes.loc["a", "a"]) and ent.loc["a", "a"] == 1.0
    assert distinct_n("a b a b") == pytest.approx(2 / 3) and math.isnan(distinct_n("one"))


def test_range_interval_is_paired_by_prompt():
    """A spread between prompts that both ends share (common random numbers) is no error in the range."""
    offsets = np.random.default_rng(1).normal(0, 0.2, 30)
    df = pd.DataFrame(
        [
            {
                "meta_grid": "single",
                "meta_varied": "a",
                "meta_level": lvl,
                "score_a": o + 0.4 * lvl,
                "base_ppl": 10.0,
                "distinct2": 1.0,
                "heldout_ppl": 20.0,
                "prompt_id": k,
                "sample": 0,
                "text": "x",
            }
            for lvl in (0.0, 0.5, 1.0)
            for k, o in enumerate(offsets)
        ]
    )
    s = control_summary(control_curves(df, ["a"]), df)["a"]
    assert s["score_range"] == pytest.approx(0.4) and s["range_ci95"] == pytest.approx(0.0, abs=1e-9)
    assert s["fitted_range"] == pytest.approx(0.4) and s["fitted_range_ci95"] == pytest.approx(0.0, abs=1e-9)
    assert control_curves(df, ["a"])["ci95"].min() > 0.05  # while each level's mean has the prompts' spread


class KeywordScorers(ScorerSet):
    """A stand-in scorer set: share of characters that are vowels, per attribute."""

    def __init__(self, root, names):
        super().__init__(root, {}, {})
        self._names = names

    def score(self, texts):
        v = np.array([sum(c in "aeiou" for c in t) / max(len(t), 1) for t in texts])
        return {n: v for n in self._names}


def test_sweep_resumes_and_report_is_written(lm, tmp_path):
    scorers = KeywordScorers(tmp_path, lm.anchors.names)
    points = parse_grid("single:sentiment", lm.anchors.names, 3)
    prompts = ["the food", "could you"]
    params = SamplingParams(max_new_tokens=6, seed=1)
    out = tmp_path / "run"
    first = run_sweep(
        lm, scorers, points, prompts, out, 2, params, batch_rows=4, heldout=["the food was great"], progress=False
    )
    assert len(first) == 3 * 2 * 2 and first["heldout_ppl"].notna().all()
    kept = out / "points" / f"{points[0].id}.csv"
    mtime = kept.stat().st_mtime_ns
    (out / "points" / f"{points[1].id}.csv").unlink()
    again = run_sweep(
        lm, scorers, points, prompts, out, 2, params, batch_rows=4, heldout=["the food was great"], progress=False
    )
    assert kept.stat().st_mtime_ns == mtime  # a finished point is not regenerated
    pd.testing.assert_frame_equal(first, again)  # the regenerated point is identical (same seeds)
    with pytest.raises(LerpError, match="other settings"):
        run_sweep(lm, scorers, points, prompts, out, 3, params, progress=False)
    old = tmp_path / "old"  # a run sampled before per-prompt streams is not resumed into
    old.mkdir()
    settings = json.loads((out / "sweep.json").read_text())
    (old / "sweep.json").write_text(json.dumps({k: v for k, v in settings.items() if k != "seeding"}))
    with pytest.raises(LerpError, match=r"other settings \(seeding\)"):
        run_sweep(
            lm, scorers, points, prompts, old, 2, params, batch_rows=4, heldout=["the food was great"], progress=False
        )
    # penalties and biases are recorded only when set, so sweeps recorded before they existed resume
    assert set(settings["params"]) == {"max_new_tokens", "temperature", "top_p", "top_k", "seed", "min_new_tokens"}
    with pytest.raises(LerpError, match=r"other settings \(params\)"):
        penalised = dataclasses.replace(params, frequency_penalty=0.5)
        run_sweep(lm, scorers, points, prompts, out, 2, penalised, heldout=["the food was great"], progress=False)

    (tmp_path / "scorers.json").write_text(json.dumps({"attributes": {"sentiment": {"score_gap": 0.5}}}))
    report = build_report(out)
    text = report.read_text()
    assert "range / gap |" in text
    for png in ["control_curves.png", "entanglement_single.png", "fluency_base_ppl.png"]:
        assert (out / png).stat().st_size > 1000 and f"({png})" in text
    summary = json.loads((out / "summary.json").read_text())
    control = summary["single"]["control"]["sentiment"]
    assert set(summary["single"]["control"]) == {"sentiment"} and control["range_over_gap"] == pytest.approx(
        control["score_range"] / 0.5
    )

    class Length(KeywordScorers):
        def score(self, texts):
            return {"sentiment": np.array([len(t) / 100 for t in texts])}

    re = rescore(out, Length(tmp_path / "len", []), tmp_path / "re")
    others = [c for c in first.columns if c.startswith("score_") and c != "score_sentiment"]
    assert others and [c for c in re.columns if c.startswith("score_")] == ["score_sentiment", *others]
    assert re["score_sentiment"].tolist() == [len(t) / 100 for t in first["text"]]
    # everything but the rescored attribute is kept, the other attributes' scores included
    pd.testing.assert_frame_equal(re.drop(columns="score_sentiment"), first.drop(columns="score_sentiment"))
    rescored = json.loads((tmp_path / "re" / "sweep.json").read_text())
    assert rescored["rescored_from"] == str(out)
    assert rescored["scored_by"] == {
        **{c.removeprefix("score_"): str(tmp_path) for c in others},
        "sentiment": str(tmp_path / "len"),
    }

    class Novel(KeywordScorers):  # an attribute the run was not scored on: its column goes after the others
        def score(self, texts):
            return {"novel": np.ones(len(texts))}

    added = rescore(out, Novel(tmp_path / "novel", []), tmp_path / "added")
    assert [c for c in added.columns if c.startswith("score_")] == [
        c for c in first.columns if c.startswith("score_")
    ] + ["score_novel"]
    assert (
        added.columns.get_loc("score_novel")
        == max(first.columns.get_loc(c) for c in first if c.startswith("score_")) + 1
    )
    means = json.loads((build_report(tmp_path / "re").parent / "summary.json").read_text())["single"]["curves"]
    assert [c["mean"] for c in means] == pytest.approx(re.groupby("meta_level")["score_sentiment"].mean().tolist())
    for run, dest, msg in [(out, tmp_path / "re", "already exists"), (tmp_path, tmp_path / "x", "no sweep results")]:
        with pytest.raises(LerpError, match=msg):
            rescore(run, Length(tmp_path / "len", []), dest)


def test_report_on_synthetic_simplex_and_focus_rows(tmp_path):
    df = synthetic()
    five = df.assign(meta_grid="five", meta_b=0.1)
    sx = pd.DataFrame(
        [
            {
                "meta_grid": "simplex",
                "meta_w_a": p.weights.get("a", 0),
                "meta_w_b": p.weights.get("b", 0),
                "meta_w_c": p.weights.get("c", 0),
                "score_a": p.weights.get("a", 0),
                "score_b": 0.5,
                "base_ppl": 1.0,
                "distinct2": 1.0,
                "heldout_ppl": 1.0,
                "prompt_id": 0,
                "sample": 0,
                "text": "x",
            }
            for p in simplex(["a", "b", "c"], 3)
        ]
    )
    (tmp_path / "r").mkdir()
    pd.concat([df, five, sx]).to_csv(tmp_path / "r" / "results.csv", index=False)
    text = build_report(tmp_path / "r").read_text()
    assert "focus grid, b=0.1" in text and "(simplex.png)" in text  # rows of the grid's old name read as focus
    assert "| a | 1.000 | 0.000 | 0.000 | 1.000 ± 0.000 |" in text  # score_a is a's weight: 1 at a's vertex, slope 1
    assert (tmp_path / "r" / "simplex.png").is_file() and (tmp_path / "r" / "entanglement_focus_b0.1.png").is_file()
    with pytest.raises(LerpError, match="results.csv not found"):
        build_report(tmp_path)
