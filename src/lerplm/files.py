"""Atomic outputs: a file or directory appears complete or not at all, never half-written."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import LerpError


@contextmanager
def _writable(out: Path) -> Iterator[None]:
    """Report a place that cannot be written (a read-only or missing parent, no permission) as the user's error."""
    try:
        yield
    except OSError as e:
        raise LerpError(f"cannot write {out}: {e.strerror or e}") from None


@contextmanager
def atomic_dir(out: str | Path, shared: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``out`` and rename it into place only on success.

    ``out`` must not exist (a user's ``--out``), unless ``shared``: a cache entry that another process may
    finish first, in which case its copy wins and ours is dropped."""
    out = Path(out)
    if out.exists() and not shared:
        raise LerpError(f"{out} already exists; choose another --out or delete it")
    with _writable(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        yield tmp
        os.replace(tmp, out)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (shared and out.exists()):
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` (readable by all, as a plain
    file would be), on failure it is removed."""
    path = Path(path)
    with _writable(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
