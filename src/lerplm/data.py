"""Reading a user's style texts (txt / jsonl / csv) and normalising their surface form.

Some corpora are pre-tokenized and lowercased (Yelp: ``it 's good .``); an anchor trained on them
copies that form into every answer, so normalisation is a per-source option.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path

from .errors import LerpError

NORMALIZERS = ("detokenize", "truecase")

_CONTRACTION = re.compile(r"\s+(n't|'s|'re|'ve|'m|'ll|'d)\b", re.IGNORECASE)
_BEFORE_PUNCT = re.compile(r"\s+([.,!?;:%)\]}])")
_AFTER_OPEN = re.compile(r"([(\[{$])\s+")
_REPEATED_PUNCT = re.compile(r"([!?.])\s+(?=[!?.])")
_SENTENCE_START = re.compile(r"(^|[.!?]\s+)([a-z])")
_LONE_I = re.compile(r"\bi\b(?=(\s|'|$|[.,!?]))")


def detokenize(text: str) -> str:
    """Undo PTB-style spacing: ``it 's good .`` -> ``it's good.``."""
    text = _CONTRACTION.sub(r"\1", text)
    text = _REPEATED_PUNCT.sub(r"\1", text)
    text = _BEFORE_PUNCT.sub(r"\1", text)
    text = _AFTER_OPEN.sub(r"\1", text)
    return text.strip()


def truecase(text: str) -> str:
    """Capitalise sentence starts and the pronoun 'i' (a cheap fix for lowercased corpora)."""
    text = _LONE_I.sub("I", text)
    return _SENTENCE_START.sub(lambda m: m.group(1) + m.group(2).upper(), text)


def normalize(texts: Iterable[str], steps: Iterable[str]) -> list[str]:
    funcs = {"detokenize": detokenize, "truecase": truecase}
    steps = list(steps)
    out = []
    for t in texts:
        for s in steps:
            t = funcs[s](t)
        out.append(t)
    return out


def read_texts(path: str | Path, column: str = "text") -> list[str]:
    """One text per line (.txt), per record (.jsonl: field ``column``) or per row (.csv: column)."""
    path = Path(path)
    if not path.is_file():
        raise LerpError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            texts = []
            with open(path, encoding="utf-8") as fh:
                for i, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    rec = json.loads(line)
                    if not isinstance(rec, dict) or column not in rec:
                        raise LerpError(f"{path}:{i}: record has no {column!r} field")
                    texts.append(str(rec[column]))
        elif suffix == ".csv":
            with open(path, encoding="utf-8", newline="") as fh:
                reader = csv.DictReader(fh)
                if column not in (reader.fieldnames or []):
                    raise LerpError(f"{path}: no {column!r} column (columns: {reader.fieldnames})")
                texts = [row[column] or "" for row in reader]
        else:
            texts = path.read_text(encoding="utf-8").splitlines()
    except json.JSONDecodeError as e:
        raise LerpError(f"{path}: not valid JSON lines ({e})") from None
    except UnicodeDecodeError:
        raise LerpError(f"{path}: not UTF-8 text") from None
    texts = [t.strip() for t in texts if t and t.strip()]
    if not texts:
        raise LerpError(f"data file is empty: {path}")
    return texts


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
