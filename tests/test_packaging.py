"""The wheel: built from the repository, installed into a fresh virtual environment, CLI runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from lerplm import doctor
from lerplm.cli import app

REPO = Path(__file__).resolve().parents[1]


def test_wheel_installs_in_a_fresh_venv_and_runs(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            tmp_path / "dist",
            REPO,
        ],
        check=True,
        capture_output=True,
    )
    wheel = next((tmp_path / "dist").glob("lerplm-*.whl"))
    venv = tmp_path / "venv"
    # system site packages provide torch & co. (a second torch download is what the pinned install avoids);
    # lerplm itself comes only from the wheel
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", venv], check=True)
    py, cli = venv / "bin" / "python", venv / "bin" / "lerplm"
    subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", wheel], check=True, capture_output=True)
    where = subprocess.run(
        [py, "-c", "import lerplm; print(lerplm.__file__)"], check=True, capture_output=True, text=True, cwd=tmp_path
    )
    assert where.stdout.startswith(str(venv))
    help_ = subprocess.run([cli, "--help"], check=True, capture_output=True, text=True)
    for cmd in ("train", "generate", "export", "sweep", "doctor"):
        assert cmd in help_.stdout
    doc = subprocess.run([cli, "doctor"], capture_output=True, text=True)
    assert doc.returncode == 0 and "all required parts present" in doc.stdout, doc.stdout + doc.stderr


def test_doctor_names_what_is_missing_and_how_to_fix_it(monkeypatch):
    real = doctor._version
    monkeypatch.setattr(doctor, "_version", lambda d: None if d in ("peft", "matplotlib") else real(d))
    r = CliRunner().invoke(app, ["doctor"])
    assert r.exit_code == 1
    assert "MISSING  peft" in r.output and "fix: pip install lerplm" in r.output
    assert "missing  matplotlib" in r.output and "pip install 'lerplm[eval]'" in r.output
