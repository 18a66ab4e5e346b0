"""The CLI: bad input gives one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from lerplm.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize(
    "mix_args, message",
    [
        (["--mix", "tone=0.5"], "unknown attribute 'tone'; choose from: sentiment, formality"),
        (["--mix", "sentiment=1.2"], "must lie in [0, 1] (pass --extrapolate"),
        (["--mix", "sentiment=nan"], "must be a finite number"),
        (["--mix", "sentiment=0.5", "--weights", "sentiment=-2"], "weights must be finite and >= 0"),
        (["--mix", "sentiment=0.5,formality=1", "--weights", "sentiment=0,formality=0"], "all weights are zero"),
        (["--mix", "sentiment"], "write NAME=NUMBER"),
        (["--mix", "sentiment=high"], "is not a number"),
        ([], "give at least one --mix"),
    ],
)
def test_bad_mixes_exit_2_with_one_line(anchor_dir, mix_args, message):
    for cmd in (["generate", "--prompt", "hi"], ["export", "--out", anchor_dir.parent / "never"]):
        r = run(*cmd, "--anchors", anchor_dir, *mix_args)
        assert r.exit_code == 2, r.output
        assert message in r.output
        assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    assert not (anchor_dir.parent / "never").exists()


def test_missing_anchor_set_and_prompt(anchor_dir, tmp_path):
    r = run("generate", "--anchors", tmp_path, "--mix", "sentiment=1", "--prompt", "hi")
    assert r.exit_code == 2 and "anchors.json not found" in r.output
    r = run("generate", "--anchors", anchor_dir, "--mix", "sentiment=1")
    assert r.exit_code == 2 and "give a --prompt" in r.output
    r = run("train", "--config", tmp_path / "none.toml", "--out", tmp_path / "o")
    assert r.exit_code == 2 and "config file not found" in r.output


def test_extrapolate_flag_allows_levels_beyond_the_hull(anchor_dir):
    r = run(
        "generate",
        "--anchors",
        anchor_dir,
        "--mix",
        "sentiment=1.5",
        "--extrapolate",
        "--prompt",
        "hi",
        "--max-new-tokens",
        "3",
        "--json",
    )
    assert r.exit_code == 0, r.output


def test_generate_json_lines_for_several_mixes(anchor_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("the food\ncould you\n")
    r = run(
        "generate",
        "--anchors",
        anchor_dir,
        "--mix",
        "sentiment=0,formality=0",
        "--mix",
        "sentiment=1,formality=0.5",
        "--weights",
        "sentiment=3,formality=1",
        "--prompts-file",
        prompts,
        "--n",
        "2",
        "--max-new-tokens",
        "4",
        "--seed",
        "3",
        "--json",
    )
    assert r.exit_code == 0, r.output
    recs = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert len(recs) == 2 * 2 * 2
    assert recs[-1]["mix"] == {
        "levels": {"sentiment": 1.0, "formality": 0.5},
        "weights": {"sentiment": 0.75, "formality": 0.25},
    }
    assert {r_["seed"] for r_ in recs} == {3} and {r_["sample"] for r_ in recs} == {0, 1}


def test_info_and_export(anchor_dir, tmp_path):
    r = run("info", anchor_dir)
    assert r.exit_code == 0 and "level 0 = 'negative', level 1 = 'positive'" in r.output
    r = run("export", "--anchors", anchor_dir, "--mix", "sentiment=0.3", "--out", tmp_path / "e", "--format", "peft")
    assert r.exit_code == 0 and (tmp_path / "e" / "adapter_model.safetensors").is_file()
    r = run("export", "--anchors", anchor_dir, "--mix", "sentiment=0.3", "--out", tmp_path / "m", "--format", "onnx")
    assert r.exit_code == 2 and "choose from: peft, merged" in r.output


def test_export_grid_and_rank_from_the_cli(anchor_dir, tmp_path):
    r = run("export", "--anchors", anchor_dir, "--grid", "single:sentiment", "--levels", "3", "--out", tmp_path / "g")
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "g" / "exports.json").read_text())
    assert sorted(manifest["adapters"]) == ["single-sentiment-0", "single-sentiment-0.5", "single-sentiment-1"]
    assert "max rank 12" in r.output
    r = run("export", "--anchors", anchor_dir, "--mix", "sentiment=0.5", "--rank", "4", "--out", tmp_path / "r")
    assert r.exit_code == 0 and "rank 4" in r.output and "relative error max" in r.output
    r = run(
        "export",
        "--anchors",
        anchor_dir,
        "--mix",
        "sentiment=0.5",
        "--rank",
        "4",
        "--format",
        "merged",
        "--out",
        tmp_path / "x",
    )
    assert r.exit_code == 2 and "--rank applies to --format peft only" in r.output
    r = run(
        "export",
        "--anchors",
        anchor_dir,
        "--mix",
        "sentiment=0",
        "--mix",
        "sentiment=1",
        "--format",
        "merged",
        "--out",
        tmp_path / "y",
    )
    assert r.exit_code == 2 and "several mixes" in r.output


def test_scorers_train_only_and_rescore_errors(tmp_path):
    from .test_evaluate import tiny_scorer_config

    tiny_scorer_config(tmp_path)
    r = run("scorers", "train", "--config", tmp_path / "c.toml", "--out", tmp_path / "s", "--only", "humor")
    assert r.exit_code == 2 and "--only names ['humor'], not in the config (sentiment)" in r.output
    assert not (tmp_path / "s").exists()
    r = run("scorers", "train", "--config", tmp_path / "c.toml", "--out", tmp_path / "s", "--only", "sentiment")
    assert r.exit_code == 0, r.output
    assert list(json.loads((tmp_path / "s" / "scorers.json").read_text())["attributes"]) == ["sentiment"]
    r = run("rescore", tmp_path, "--scorers", tmp_path / "s", "--out", tmp_path / "re")
    assert r.exit_code == 2 and "no sweep results" in r.output and "Traceback" not in r.output
