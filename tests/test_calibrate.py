"""Calibration: fit and solve on synthetic response surfaces with known answers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lerplm import LerpError
from lerplm.calibrate import ResponseModel, mix_features, refine, solve
from lerplm.evaluate.grids import focus, single

ATTRS = ["a", "b"]
# true logits: intercept + coefficient of (a-, a+, b-, b+)
TRUE = {
    "a": np.array([0.0, -2.0, 2.0, 0.0, 0.0]),  # a's own control: sigma(-2..2) = [0.12, 0.88]
    "b": np.array([0.0, 0.6, -0.6, -1.5, 1.5]),  # b's control, entangled with a: raising a lowers b
}


def true_scores(levels, weights):
    x = np.r_[1.0, mix_features(ATTRS, levels, weights)]
    return {k: 1 / (1 + np.exp(-(th @ x))) for k, th in TRUE.items()}


def rows_from_truth(points, per_point=30, noise=0.03, seed=0):
    """Sweep rows (levels, weights, meta, noisy scores) whose scores follow the true surface."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in points:
        total = sum(p.weights.values())
        s = true_scores(p.levels, {k: v / total for k, v in p.weights.items()})
        for _k in range(per_point):
            rows.append(
                {
                    "point": p.id,
                    **{f"meta_{m}": v for m, v in p.meta.items()},
                    **{f"level_{a}": v for a, v in p.levels.items()},
                    **{f"weight_{a}": v for a, v in p.weights.items()},
                    **{f"score_{a}": float(np.clip(s[a] + rng.normal(0, noise), 0, 1)) for a in ATTRS},
                }
            )
    return pd.DataFrame(rows)


def synthetic_sweep():
    return rows_from_truth([p for a in ATTRS for p in single(a, 11)] + focus(ATTRS, (0.2, 0.35), 6))


@pytest.fixture(scope="module")
def model():
    return ResponseModel.fit(synthetic_sweep(), ATTRS)


def test_fit_recovers_the_surface_and_reports_held_out_error(model, tmp_path):
    for lv in ({"a": 0.2}, {"a": 0.9, "b": 0.1}, {"b": 0.6}):
        w = {k: 1 / len(lv) for k in lv}
        truth, pred = true_scores(lv, w), model.predict(lv, w)
        for k in ATTRS:
            assert pred[k] == pytest.approx(truth[k], abs=0.02)
    assert all(v < 0.02 for v in model.cv_mae.values())
    model.save(tmp_path / "c.json")
    from types import SimpleNamespace

    assert ResponseModel.load_for(SimpleNamespace(root=tmp_path, names=ATTRS), tmp_path / "c.json").attributes == ATTRS
    with pytest.raises(LerpError, match="fitted for attributes"):  # an anchor set with other attributes
        ResponseModel.load_for(SimpleNamespace(root=tmp_path, names=["a", "c"]), tmp_path / "c.json")
    again = ResponseModel.load(tmp_path / "c.json")
    assert again.predict({"a": 0.3}, {"a": 1}) == pytest.approx(model.predict({"a": 0.3}, {"a": 1}))


def test_solve_a_single_target(model):
    sol = solve(model, {"a": 0.7})
    assert not sol.warnings and sol.max_error < 0.01
    lv, w = sol.mix.resolve(ATTRS)
    assert true_scores(lv, w)["a"] == pytest.approx(0.7, abs=0.02)


def test_solve_compensates_an_entangled_pair(model):
    targets = {"a": 0.8, "b": 0.3}
    sol = solve(model, targets, free_weights=True)
    assert not sol.warnings
    truth = true_scores(*sol.mix.resolve(ATTRS))
    assert truth["a"] == pytest.approx(0.8, abs=0.03) and truth["b"] == pytest.approx(0.3, abs=0.03)
    naive = true_scores({"a": 0.8, "b": 0.3}, {"a": 0.5, "b": 0.5})
    assert max(abs(naive[k] - t) for k, t in targets.items()) > 0.1  # level = target does not get there


def test_unreachable_target_warns_with_the_reachable_range(model):
    sol = solve(model, {"a": 0.97})
    assert sol.warnings and "out of reach" in sol.warnings[0]
    lo, hi = [float(x) for x in sol.warnings[0].split("[")[1].split("]")[0].split(",")]
    assert lo == pytest.approx(0.12, abs=0.03) and hi == pytest.approx(0.88, abs=0.03)
    assert sol.predicted["a"] == pytest.approx(hi, abs=0.01)  # the closest reachable score


def test_bad_targets(model):
    with pytest.raises(LerpError, match="no calibrated scorer for 'c'"):
        solve(model, {"c": 0.5})
    with pytest.raises(LerpError, match="scores lie in"):
        solve(model, {"a": 1.5})
    with pytest.raises(LerpError, match="both a target and fixed"):
        solve(model, {"a": 0.5}, fixed={"a": 0.2})


def test_target_from_the_cli_and_the_server(anchor_dir, tmp_path):
    """A calibration for the tiny anchor set (sentiment, formality): generate --target and the server's target field."""
    import httpx
    from typer.testing import CliRunner

    from lerplm.cli import app

    theta = np.array([[0.0, -2.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, -1.5, 1.5]])
    calib = ResponseModel(
        ["sentiment", "formality"], ["sentiment", "formality"], theta, {"sentiment": 0.0, "formality": 0.0}, 10
    )
    calib.save(tmp_path / "calib.json")

    def generate(target: str):
        args = [
            "generate",
            "--anchors",
            str(anchor_dir),
            "--target",
            target,
            "--calibration",
            str(tmp_path / "calib.json"),
        ]
        return CliRunner().invoke(app, [*args, "--prompt", "hi", "--max-new-tokens", "3"])

    r = generate("sentiment=0.7")
    assert r.exit_code == 0, r.output
    assert "solved mix: sentiment=0.7" in r.output and "predicted sentiment=0.70" in r.output
    r = generate("sentiment=0.99")
    assert r.exit_code == 0 and "warning: target sentiment=0.99 is out of reach" in r.output
    r = CliRunner().invoke(
        app, ["generate", "--anchors", str(anchor_dir), "--target", "sentiment=0.5", "--prompt", "hi"]
    )
    assert r.exit_code == 2 and "no calibration at" in r.output

    from .test_serve import make_server

    calib.save(anchor_dir / "calibration.json")
    try:
        with make_server(anchor_dir) as s:
            body = {
                "prompt": "hi",
                "max_tokens": 3,
                "target": {"sentiment": 0.3, "formality": 0.6},
                "free_weights": True,
            }
            out = httpx.post(s.url + "/v1/completions", json=body, timeout=60).json()
            assert out["mix"]["predicted"]["sentiment"] == pytest.approx(0.3, abs=0.01)
            assert out["mix"]["predicted"]["formality"] == pytest.approx(0.6, abs=0.01)
            assert set(out["mix"]["levels"]) == {"sentiment", "formality"}
            bad = httpx.post(s.url + "/v1/completions", json=body | {"mix": {"sentiment": 0.5}}, timeout=60)
            assert bad.status_code == 400 and "either 'mix' or 'target'" in bad.json()["error"]["message"]
    finally:
        (anchor_dir / "calibration.json").unlink()


def test_target_evaluation_calibrated_beats_naive_on_a_known_surface(model, tmp_path):
    from lerplm.evaluate.targets import target_points, target_sets, write_report

    targets, ranges = target_sets(model, ATTRS, [("a", "b")])
    assert len(targets) == 4 + 4 + 4
    assert ranges["a"] == pytest.approx(1 / (1 + np.exp(-1.6)) - 1 / (1 + np.exp(1.6)), abs=0.02)  # levels 0.1..0.9
    points = target_points(model, targets)
    naive = [p for p in points if p.meta["method"] == "naive"]
    assert all(
        p.levels == {a: float(x) for a, x in (q.split("=") for q in p.meta["targets"].split(","))} for p in naive
    )
    summary = write_report(rows_from_truth(points, 40, 0.05), tmp_path, ranges, {"prompts": 40})
    # calibrated: off only by the fit's error and the noise of a 40-row mean (sd 0.05/sqrt(40))
    assert summary["single_overall"]["calibrated"] < 0.02 and summary["pairs_overall"]["calibrated"] < 0.03
    # naive error of attribute a is known: |sigma(-2 + 4t) - t| averaged over its targets
    tgt = [t["a"] for t in targets if list(t) == ["a"]]
    expected = np.mean([abs(1 / (1 + np.exp(2 - 4 * t)) - t) for t in tgt])
    assert summary["single"]["a"]["naive"] == pytest.approx(expected, abs=0.02)
    assert summary["single"]["a"]["naive"] > 3 * summary["single"]["a"]["calibrated"]
    for f in ("targets.md", "targets.json", "targets.csv"):
        assert (tmp_path / f).stat().st_size > 100
    assert (tmp_path / "targets.png").stat().st_size > 1000 and "(targets.png)" in (tmp_path / "targets.md").read_text()


def test_targets_the_solver_calls_unreachable_are_reported_apart(model, tmp_path):
    from lerplm.evaluate.targets import target_points, write_report

    points = target_points(model, [{"a": 0.5}, {"a": 0.99}])  # sigma(2) = 0.88 is a's ceiling
    assert [p.meta["reachable"] for p in points] == [1, 1, 0, 0]
    summary = write_report(
        rows_from_truth(points, 40, 0.05), tmp_path, {"a": 0.6, "b": 0.3, "c": 0.01}, {"prompts": 40}
    )
    assert summary["single_unreachable_targets"] == ["a=0.99"]
    # only the attribute too flat to target is named, not b, which merely has no one-attribute targets here
    assert "too small to set targets in): c (0.010)." in (tmp_path / "targets.md").read_text()
    assert summary["single_reachable"]["calibrated"] < 0.02 < summary["single_overall"]["calibrated"]
    assert "out of reach under this calibration: a=0.99" in (tmp_path / "targets.md").read_text()


def test_target_sets_leave_out_an_attribute_the_anchors_do_not_move():
    from lerplm.evaluate.targets import target_sets

    flat = ResponseModel(ATTRS, ATTRS, np.array([TRUE["a"], np.zeros(5)]), {"a": 0.0, "b": 0.0}, 10)
    targets, ranges = target_sets(flat, ATTRS, [])
    assert ranges["b"] == pytest.approx(0.0) and all(list(t) == ["a"] for t in targets) and len(targets) == 4


def test_eval_targets_cli(anchor_dir, tmp_path):
    from typer.testing import CliRunner

    from lerplm.cli import app
    from lerplm.evaluate.scorers import train_scorers

    from .test_evaluate import tiny_scorer_config

    train_scorers(tiny_scorer_config(tmp_path), tmp_path / "scorers", log=lambda s: None)
    theta = np.array([[0.0, -2.0, 2.0, 0.0, 0.0]])
    ResponseModel(["sentiment", "formality"], ["sentiment"], theta, {"sentiment": 0.0}, 10).save(
        tmp_path / "calib.json"
    )
    (tmp_path / "prompts.txt").write_text("used for calibration\nthe food\ncould you\n")
    args = [
        "eval-targets",
        "--anchors",
        str(anchor_dir),
        "--scorers",
        str(tmp_path / "scorers"),
        "--calibration",
        str(tmp_path / "calib.json"),
        "--prompts",
        str(tmp_path / "prompts.txt"),
        "--skip-prompts",
        "1",
        "--max-new-tokens",
        "3",
        "--out",
        str(tmp_path / "run"),
    ]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "single targets: calibrated MAE" in r.output
    df = pd.read_csv(tmp_path / "run" / "results.csv")
    assert len(df) == 4 * 2 * 2 and set(df["prompt_id"]) == {0, 1}
    assert json.loads((tmp_path / "run" / "sweep.json").read_text())["prompts"] == ["the food", "could you"]
    generations = pd.read_csv(tmp_path / "run" / "generations.csv.gz")  # committed beside the report
    assert set(generations["prompt"]) == {"the food", "could you"} and len(generations) == len(df)
    assert {"text", "score_sentiment", "point"} <= set(generations.columns)
    r = CliRunner().invoke(app, args + ["--pair", "sentiment,nope"])
    assert r.exit_code == 2 and "--pair takes two different attributes" in r.output
    r = CliRunner().invoke(app, args[:-2] + ["--skip-prompts", "9", "--out", str(tmp_path / "r2")])
    assert r.exit_code == 2 and "no prompts after skipping 9" in r.output
    r = CliRunner().invoke(app, args[:-2] + ["--target", "sentiment=0.4", "--out", str(tmp_path / "r3")])
    assert r.exit_code == 0, r.output
    assert sorted(pd.read_csv(tmp_path / "r3" / "targets.csv")["point"]) == [
        "target-calibrated-sentiment=0.4",
        "target-naive-sentiment=0.4",
    ]
    # the closed loop adds a third point, solved from the calibrated point's own measured mean score
    r = CliRunner().invoke(app, args[:-2] + ["--target", "sentiment=0.4", "--refine", "--out", str(tmp_path / "r3")])
    assert r.exit_code == 0, r.output
    assert (
        "refined MAE" in r.output and "refined once (closed loop) MAE" in (tmp_path / "r3" / "targets.md").read_text()
    )
    df = pd.read_csv(tmp_path / "r3" / "results.csv")
    cal, ref = (df[df["point"] == f"target-{m}-sentiment=0.4"] for m in ("calibrated", "refined"))
    first = solve(ResponseModel.load(tmp_path / "calib.json"), {"sentiment": 0.4})
    expected, _ = refine(
        ResponseModel.load(tmp_path / "calib.json"), first, {"sentiment": cal["score_sentiment"].mean()}
    )
    assert ref["level_sentiment"].iloc[0] == pytest.approx(expected.mix.levels["sentiment"], abs=1e-4)
    # generate --target --refine: the closed loop for a user's own prompts
    gen = [
        "generate",
        "--anchors",
        str(anchor_dir),
        "--target",
        "sentiment=0.4",
        "--calibration",
        str(tmp_path / "calib.json"),
        "--prompt",
        "the food",
        "--prompt",
        "could you",
        "--max-new-tokens",
        "3",
        "--json",
        "--refine",
        "1",
    ]
    r = CliRunner().invoke(app, gen + ["--scorers", str(tmp_path / "scorers")])
    assert r.exit_code == 0, r.output
    assert "round 0:" in r.output and "round 1:" in r.output and "round 2:" not in r.output
    assert len([line for line in r.stdout.splitlines() if line.startswith("{")]) == 2
    r = CliRunner().invoke(app, gen)
    assert r.exit_code == 2 and "--refine needs a --target and the --scorers" in r.output


def test_refine_hits_the_target_when_the_true_response_is_offset(model):
    """The prompts at hand respond with an offset the calibration did not see (here: +0.8 logit on a,
    -0.5 on the entangled b): open loop misses, one closed-loop round hits both targets."""
    offset = {"a": 0.8, "b": -0.5}

    def achieved(mix):  # the mean scores a generation at this mix would measure
        x = np.r_[1.0, mix_features(ATTRS, *mix.resolve(ATTRS))]
        return {k: float(1 / (1 + np.exp(-(th @ x + offset[k])))) for k, th in TRUE.items()}

    targets = {"a": 0.6, "b": 0.4}
    first = solve(model, targets, free_weights=True)
    assert max(abs(achieved(first.mix)[k] - t) for k, t in targets.items()) > 0.08  # open loop misses
    second, shifted = refine(model, first, achieved(first.mix), free_weights=True)
    assert not second.warnings
    assert achieved(second.mix) == pytest.approx(targets, abs=0.02)
    third, _ = refine(shifted, second, achieved(second.mix), free_weights=True)  # a further round stays put
    assert achieved(third.mix) == pytest.approx(targets, abs=0.02)
    with pytest.raises(LerpError, match="no measured score"):
        refine(model, first, {"a": 0.5})


def test_closed_loop_steers_the_batch_by_its_own_scores(model):
    """closed_loop with a stand-in model and scorer whose response is the offset surface: round 0 misses,
    round 1 lands, and the texts returned are the last round's."""
    from lerplm.evaluate.targets import closed_loop
    from lerplm.mix import Mix

    offset = {"a": 0.8, "b": -0.5}

    class LM:
        def generate(self, prompts, mix, n, params, extrapolate):
            return [[json.dumps(mix.to_json(ATTRS))] * n for _ in prompts]

    class Scorers:
        names = ATTRS

        def score(self, texts):
            m = Mix.from_dict(json.loads(texts[0]))
            x = np.r_[1.0, mix_features(ATTRS, *m.resolve(ATTRS))]
            return {k: np.full(len(texts), 1 / (1 + np.exp(-(th @ x + offset[k])))) for k, th in TRUE.items()}

    rounds = []
    texts, sol, achieved = closed_loop(LM(), Scorers(), model, ["p1", "p2"], {"a": 0.6}, rounds=1, log=rounds.append)
    assert len(rounds) == 2 and rounds[0].startswith("round 0:")
    assert abs(float(rounds[0].split("a ")[-1].split()[0]) - 0.6) > 0.08 and achieved["a"] == pytest.approx(
        0.6, abs=0.02
    )
    assert json.loads(texts[1][0]) == sol.mix.to_json(ATTRS)
    with pytest.raises(LerpError, match="scorers have no"):
        Scorers.names = ["b"]
        closed_loop(LM(), Scorers(), model, ["p"], {"a": 0.6})
