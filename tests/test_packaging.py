"""The wheel: built from the repository, it carries the page and declares every library the package imports;
installed into a fresh virtual environment, its CLI runs."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import sysconfig
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lerplm import doctor
from lerplm.cli import app

REPO = Path(__file__).resolve().parents[1]


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, REPO]
    subprocess.run(cmd, check=True, capture_output=True)
    return next(dist.glob("lerplm-*.whl"))


def test_wheel_carries_the_page_and_declares_every_imported_library(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        assert "lerplm/serve/static/index.html" in names  # the slider page is package data
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        scripts = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
        sources = {n: z.read(n).decode() for n in names if n.endswith(".py")}
    assert "lerplm = lerplm.cli:app" in scripts
    declared = {
        _canon(re.split(r"[ ;<>=!~\[]", line.split(":", 1)[1].strip())[0])
        for line in meta.splitlines()
        if line.startswith("Requires-Dist:")
    }
    providers = metadata.packages_distributions()
    stdlib = set(sys.stdlib_module_names)
    undeclared = {}
    for name, text in sources.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops = [node.module.split(".")[0]]
            else:
                continue
            for top in tops:
                if top in stdlib or top in ("lerplm", "tomli"):  # tomli is declared for Python < 3.11 only
                    continue
                dists = {_canon(d) for d in providers.get(top, [top])}
                if not dists & declared:
                    undeclared.setdefault(top, set()).add(name)
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_wheel_installs_in_a_fresh_venv_and_runs(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    py = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # The libraries come from the environment running the tests (a virtualenv or the system interpreter; a
    # second torch would be a large download); lerplm itself only from the wheel, which goes first on the path.
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", "--target", site, wheel],
        check=True,
        capture_output=True,
    )
    probe = (
        "import lerplm, lerplm.cli, lerplm.serve.app; from importlib import resources; "
        "print(lerplm.__file__); print((resources.files('lerplm.serve') / 'static' / 'index.html').is_file())"
    )
    where = subprocess.run([py, "-c", probe], check=True, capture_output=True, text=True, cwd=tmp_path)
    assert where.stdout.split() == [str(site / "lerplm" / "__init__.py"), "True"]
    help_ = subprocess.run([py, "-m", "lerplm", "--help"], check=True, capture_output=True, text=True)
    for cmd in ("train", "generate", "export", "serve", "sweep", "report", "calibrate", "doctor"):
        assert cmd in help_.stdout
    doc = subprocess.run([py, "-m", "lerplm", "doctor"], capture_output=True, text=True)
    assert doc.returncode == 0 and "all required parts present" in doc.stdout, doc.stdout + doc.stderr


def test_doctor_names_what_is_missing_and_how_to_fix_it(monkeypatch):
    real = doctor._version
    monkeypatch.setattr(doctor, "_version", lambda d: None if d in ("peft", "matplotlib") else real(d))
    r = CliRunner().invoke(app, ["doctor"])
    assert r.exit_code == 1
    assert "MISSING  peft" in r.output and "fix: pip install lerplm" in r.output
    assert "missing  matplotlib" in r.output and "pip install 'lerplm[eval]'" in r.output


def test_a_source_tree_without_an_install_runs_and_says_so(monkeypatch):
    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    real = doctor._version
    monkeypatch.setattr(doctor.metadata, "requires", not_installed)
    monkeypatch.setattr(doctor, "_version", lambda d: None if d == "lerplm" else real(d))
    doctor.require("eval", "a sweep")  # nothing declared to check against: the imports themselves will tell
    r = CliRunner().invoke(app, ["doctor"])
    assert r.exit_code == 0, r.output
    assert "missing  lerplm" in r.output and "fix: pip install -e ." in r.output
