"""The CLI: bad input gives one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from lerplm.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(r, message: str) -> None:
    """Exit code 2 with one line naming the problem; no exception escaped the command (CliRunner keeps an
    escaped exception in r.exception, never in the output, so the output alone cannot show a traceback)."""
    assert r.exit_code == 2, r.output
    assert isinstance(r.exception, SystemExit), r.exception
    assert message in r.output and len(r.output.strip().splitlines()) == 1, r.output


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
        assert_user_error(run(*cmd, "--anchors", anchor_dir, *mix_args), message)
    assert not (anchor_dir.parent / "never").exists()


def test_missing_anchor_set_and_prompt(anchor_dir, tmp_path):
    r = run("generate", "--anchors", tmp_path, "--mix", "sentiment=1", "--prompt", "hi")
    assert_user_error(r, "anchors.json not found")
    r = run("generate", "--anchors", anchor_dir, "--mix", "sentiment=1")
    assert_user_error(r, "give a --prompt")
    r = run("train", "--config", tmp_path / "none.toml", "--out", tmp_path / "o")
    assert_user_error(r, "config file not found")


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


def test_generate_with_a_merged_mix_writes_what_the_mixed_step_writes(anchor_dir, monkeypatch):
    from lerplm.generate import LerpModel

    merges = []
    merge = LerpModel.merge
    monkeypatch.setattr(LerpModel, "merge", lambda self, *a: merges.append(a) or merge(self, *a))
    args = ["generate", "--anchors", anchor_dir, "--prompt", "the food", "--max-new-tokens", "5", "--json"]
    mix = ["--mix", "sentiment=0.8,formality=0.3", "--weights", "sentiment=2,formality=1", "--temperature", "0"]
    mixed, merged, default = run(*args, *mix, "--no-merge"), run(*args, *mix, "--merge"), run(*args, *mix)
    assert mixed.exit_code == 0 and merged.exit_code == 0 and default.exit_code == 0, merged.output
    assert json.loads(merged.stdout) == json.loads(mixed.stdout) == json.loads(default.stdout)
    assert len(merges) == 2  # --merge and the default; not --no-merge
    two = ["--mix", "sentiment=0", "--mix", "sentiment=1", "--temperature", "0"]
    assert run(*args, *two).exit_code == 0 and run(*args, "--schedule", "0:sentiment=0; 3:sentiment=1").exit_code == 0
    assert run(*args, *mix, "--quantize", "int4").exit_code == 0
    assert len(merges) == 2  # several mixes, a schedule and int4 run the mixed step by default
    assert_user_error(run(*args, *mix, "--mix", "sentiment=0,formality=1", "--merge"), "--merge takes one mix; got 2")
    assert_user_error(run(*args, "--schedule", "0:sentiment=0; 3:sentiment=1", "--merge"), "--merge takes one fixed")


def test_generate_takes_openai_penalties(anchor_dir):
    args = [
        "generate",
        "--anchors",
        anchor_dir,
        "--mix",
        "sentiment=1",
        "--prompt",
        "the food",
        "--max-new-tokens",
        "24",
    ]
    args += ["--temperature", "0"]
    plain, penalised = run(*args, "--json"), run(*args, "--json", "--frequency-penalty", "2")
    assert plain.exit_code == 0 and penalised.exit_code == 0, penalised.output
    assert json.loads(plain.stdout)["text"] != json.loads(penalised.stdout)["text"]
    r = run(*args, "--presence-penalty", "3")
    assert r.exit_code == 2 and "--presence-penalty" in r.output


def test_info_and_export(anchor_dir, tmp_path):
    r = run("info", anchor_dir)
    assert r.exit_code == 0 and "level 0 = 'negative', level 1 = 'positive'" in r.output
    r = run("export", "--anchors", anchor_dir, "--mix", "sentiment=0.3", "--out", tmp_path / "e", "--format", "peft")
    assert r.exit_code == 0 and (tmp_path / "e" / "adapter_model.safetensors").is_file()
    r = run("export", "--anchors", anchor_dir, "--mix", "sentiment=0.3", "--out", tmp_path / "m", "--format", "onnx")
    assert_user_error(r, "choose from: peft, merged")
    (tmp_path / "file").write_text("")  # a file where the output's folder would go
    r = run("export", "--anchors", anchor_dir, "--mix", "sentiment=0.3", "--out", tmp_path / "file" / "e")
    assert_user_error(r, f"cannot write {tmp_path / 'file' / 'e'}")


def test_os_errors_are_one_line_not_a_traceback():
    """A full disk or a vanished file mid-run: the system's message and exit code 1."""
    import typer

    from lerplm.cli_common import user_errors

    def full():
        raise OSError(28, "No space left on device", "/data/out.csv")

    cli = typer.Typer()
    cli.command()(user_errors(full))
    r = CliRunner().invoke(cli)
    assert r.exit_code == 1 and r.output.strip() == "error: No space left on device: /data/out.csv"


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
    assert_user_error(r, "--rank applies to --format peft only")
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
    assert_user_error(r, "several mixes")


def test_scorers_train_only_and_rescore_errors(tmp_path):
    from .test_evaluate import tiny_scorer_config

    tiny_scorer_config(tmp_path)
    r = run("scorers", "train", "--config", tmp_path / "c.toml", "--out", tmp_path / "s", "--only", "humor")
    assert_user_error(r, "--only names ['humor'], not in the config (sentiment)")
    assert not (tmp_path / "s").exists()
    r = run("scorers", "train", "--config", tmp_path / "c.toml", "--out", tmp_path / "s", "--only", "sentiment")
    assert r.exit_code == 0, r.output
    assert list(json.loads((tmp_path / "s" / "scorers.json").read_text())["attributes"]) == ["sentiment"]
    r = run("rescore", tmp_path, "--scorers", tmp_path / "s", "--out", tmp_path / "re")
    assert_user_error(r, "no sweep results")


def test_sweep_report_rescore_and_calibrate_from_the_cli(anchor_dir, tmp_path):
    from .test_evaluate import tiny_scorer_config

    tiny_scorer_config(tmp_path)
    assert run("scorers", "train", "--config", tmp_path / "c.toml", "--out", tmp_path / "s").exit_code == 0
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("held out\nthe food\ncould you\nwe will\n")
    sweep = ["sweep", "--anchors", anchor_dir, "--scorers", tmp_path / "s", "--prompts", prompts, "--skip-prompts", 1]
    sweep += ["--grid", "single:all", "--grid", "focus:b=0.2", "--grid", "base", "--levels", 3, "--max-new-tokens", 3]
    r = run(*sweep, "--out", tmp_path / "run", "--config", tmp_path / "c.toml", "--heldout-per-endpoint", 2)
    assert r.exit_code == 0, r.output
    assert "wrote 39 rows for 13 grid points" in r.output  # ((2 single + 2 focus) x 3 levels + base) x 3 prompts
    import pandas as pd

    rows = pd.read_csv(tmp_path / "run" / "results.csv")
    settings = json.loads((tmp_path / "run" / "sweep.json").read_text())
    assert settings["prompts"] == ["the food", "could you", "we will"]  # the first prompt was skipped
    assert rows["score_sentiment"].between(0, 1).all() and rows["heldout_ppl"].gt(0).all()
    assert (rows["words"] == rows["text"].fillna("").str.split().str.len()).all()
    assert rows["prompt_fit"].notna().all()  # the prompt-swap test: own prompt against the next one
    r = run(*sweep, "--out", tmp_path / "run", "--max-new-tokens", 4)
    assert_user_error(r, "holds a sweep with other settings")
    r = run(
        *sweep,
        "--out",
        tmp_path / "run",
        "--quantize",
        "int8",
        "--config",
        tmp_path / "c.toml",
        "--heldout-per-endpoint",
        2,
    )
    assert_user_error(r, "other settings (quantize)")
    r = run(*sweep[:9], "--grid", "base", "--max-new-tokens", 3, "--quantize", "int8", "--out", tmp_path / "q")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "q" / "sweep.json").read_text())["quantize"] == "int8"

    r = run("report", tmp_path / "run")
    assert r.exit_code == 0, r.output
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## single attribute" in report and "## focus grid, b=0.2" in report
    assert "## Answers" in report and "| base model |" in report  # the base model alone, the reference row
    assert (tmp_path / "run" / "control_curves.png").is_file()
    generations = pd.read_csv(tmp_path / "run" / "generations.csv.gz")  # what others rescore with their judges
    assert len(generations) == 39 and set(generations["prompt"]) == set(settings["prompts"])
    assert {"point", "text", "score_sentiment", "level_sentiment", "weight_formality"} <= set(generations.columns)

    r = run("rescore", tmp_path / "run", "--scorers", tmp_path / "s", "--out", tmp_path / "again")
    assert r.exit_code == 0, r.output
    again = pd.read_csv(tmp_path / "again" / "results.csv")
    pd.testing.assert_series_equal(again["score_sentiment"], rows["score_sentiment"])  # same scorer, same scores

    r = run("calibrate", tmp_path / "run", "--out", tmp_path / "cal.json")
    assert r.exit_code == 0, r.output
    assert "sentiment: cross-validated MAE" in r.output and "12 grid points" in r.output
    assert json.loads((tmp_path / "cal.json").read_text())["scored"] == ["sentiment"]
    assert_user_error(run("calibrate", tmp_path / "nothing"), "no sweep results")


def test_serve_command_serves_presets_and_stops_on_ctrl_c(anchor_dir, tmp_path):
    import signal
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "lerplm", "serve", "--anchors", anchor_dir, "--port", str(port)]
    # Ctrl-C as a terminal sends it, also when this suite runs as a background job (which ignores SIGINT)
    default_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    proc = subprocess.Popen(
        cmd + ["--preset", "warm=sentiment=1"], stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint
    )
    try:
        url = f"http://127.0.0.1:{port}/v1"
        for _ in range(300):
            try:
                models = httpx.get(f"{url}/models").json()
                break
            except httpx.HTTPError:
                assert proc.poll() is None, proc.stderr.read()
                time.sleep(0.2)
        assert "warm" in [m["id"] for m in models["data"]]
        body = {"model": "warm", "prompt": "the food", "max_tokens": 3, "temperature": 0}
        done = httpx.post(f"{url}/completions", json=body, timeout=60).json()
        assert done["usage"]["completion_tokens"] <= 3 and isinstance(done["choices"][0]["text"], str)
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=30)
    err = proc.stderr.read()
    assert rc == 0 and f"serving {anchor_dir} on http://127.0.0.1:{port}/" in err and "Traceback" not in err
    assert_user_error(run("serve", "--anchors", anchor_dir, "--preset", "nameonly"), "bad --preset")
    assert_user_error(run("serve", "--anchors", anchor_dir, "--default-mix", "tone=1"), "unknown attribute 'tone'")


def test_train_and_generate_print_no_library_noise(base_dir, tmp_path):
    """What a user sees: our progress and results, no library warnings or log dicts."""
    import subprocess
    import sys

    from .conftest import STYLES
    from .test_train import write_config

    if not STYLES.is_dir():
        pytest.skip("needs ../shared/data/styles")
    lerplm = [sys.executable, "-m", "lerplm"]
    config = write_config(tmp_path, base_dir, max_steps=2)
    train = subprocess.run(
        [*lerplm, "train", "--config", config, "--out", tmp_path / "a"], capture_output=True, text=True
    )
    assert train.returncode == 0, train.stderr
    gen = [*lerplm, "generate", "--anchors", tmp_path / "a", "--mix", "sentiment=1", "--prompt", "hi"]
    out = subprocess.run([*gen, "--max-new-tokens", "4"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for r in (train, out):
        text = (r.stdout + r.stderr).lower()
        assert "warning" not in text and "deprecat" not in text, r.stderr
    assert "train_runtime" not in train.stdout and train.stdout.startswith("anchor set")
