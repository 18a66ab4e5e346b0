"""Reading a user's style texts (txt / jsonl / csv) and normalising their surface form.

Some corpora are pre-tokenized and lowercased (Yelp: ``it 's good .``); an anchor trained on them
copies that form into every answer, so normalisation is a per-source option.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from .config import EndpointConfig, StylesConfig
from .errors import LerpError
from .models import format_prompt, has_chat_template

IGNORE = -100  # label of tokens that carry no loss (the ignore_index of transformers and F.cross_entropy)

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


def endpoint_texts(
    cfg: StylesConfig, ep: EndpointConfig, held_out: bool = False, cap: int | None = None
) -> tuple[list[str], list[dict]]:
    """An endpoint's training (or held-out) texts after normalisation and a random cap, plus provenance."""
    texts, provenance = [], []
    files = ep.held_out_files() if held_out else ep.data_files()
    if not files:
        raise LerpError(f"endpoint {ep.name!r} has no held-out files; set test_files in the config")
    for f in files:
        path = Path(f.path).expanduser()
        if not path.is_absolute():
            path = cfg.data_root() / path
        got = read_texts(path, f.column)
        texts += got
        provenance.append({"path": str(path), "sha256": file_sha256(path), "texts": len(got)})
    texts = normalize(texts, ep.normalize)
    if cap and len(texts) > cap:
        texts = random.Random(cfg.training.seed).sample(texts, cap)
    return texts, provenance


def join_answers(texts: list[str], words: int | None) -> list[str]:
    """Consecutive texts joined (with a space) into answers of at least ``words`` words; the last answer may be
    shorter. ``None``: each text stays an answer of its own."""
    if not words:
        return texts
    out, cur, n = [], [], 0
    for t in texts:
        cur.append(t)
        n += len(t.split())
        if n >= words:
            out.append(" ".join(cur))
            cur, n = [], 0
    return out + ([" ".join(cur)] if cur else [])


def _without_end(labels: list[int], eos: int | None) -> list[int]:
    """``labels`` with IGNORE from the first EOS on; an answer with no EOS (a chat template that ends turns with
    another token) is an error, not a silent no-op."""
    if eos not in labels:
        raise LerpError("end_loss = false needs each answer to end with the tokenizer's EOS; this model's does not")
    end = labels.index(eos)
    return labels[:end] + [IGNORE] * (len(labels) - end)


class Block(NamedTuple):
    """One fixed-size training row: token ids and labels (IGNORE where no loss is taken)."""

    ids: list[int]
    labels: list[int]


def build_blocks(
    tokenizer,
    texts: list[str],
    block_size: int,
    chat_prompt: str | None = None,
    prompts: list[str] | None = None,
    learn_end: Sequence[bool] | None = None,
) -> list[Block]:
    """Concatenate texts and cut into fixed-size blocks, as run_clm does.

    Plain: each text ended by EOS. ``chat_prompt``: each text is the assistant's answer to that user turn
    in the model's chat template, the way generation prompts it, and only the answer carries loss;
    ``prompts``: the same with one user turn per text. ``learn_end``: per text, False for no loss from its EOS on
    (the end of an answer and what the template writes after it; ``train.learnt_ends`` says which, from the
    ``end_loss`` setting); None: every text's end takes loss."""
    ids: list[int] = []
    labels: list[int] = []
    eos = tokenizer.eos_token_id
    learn_end = list(learn_end) if learn_end is not None else [True] * len(texts)
    if chat_prompt is None and prompts is None:
        for enc, learn in zip(tokenizer(texts, add_special_tokens=False)["input_ids"], learn_end):
            text = enc + ([eos] if eos is not None else [])
            ids += text
            labels += text if learn else _without_end(text, eos)
    else:
        if not has_chat_template(tokenizer):
            raise LerpError('text_format = "chat" needs a tokenizer with a chat template; this base model has none')
        turns = prompts if prompts is not None else [chat_prompt] * len(texts)
        heads: dict[str, list[int]] = {}
        answers = []
        for turn, text in zip(turns, texts):
            prefix = format_prompt(tokenizer, turn)
            if turn not in heads:
                heads[turn] = tokenizer(prefix, add_special_tokens=False)["input_ids"]
            full = tokenizer.apply_chat_template(
                [{"role": "user", "content": turn}, {"role": "assistant", "content": text}], tokenize=False
            )
            if not full.startswith(prefix):
                raise LerpError("this chat template renders an answer differently from a generation prompt")
            answers.append(full[len(prefix) :])
        for turn, enc, learn in zip(turns, tokenizer(answers, add_special_tokens=False)["input_ids"], learn_end):
            ids += heads[turn] + enc
            labels += [IGNORE] * len(heads[turn]) + (enc if learn else _without_end(enc, eos))
    n = len(ids) // block_size
    if n == 0:
        raise LerpError(f"too little text for one block of {block_size} tokens ({len(ids)} tokens)")
    cut = lambda xs, i: xs[i * block_size : (i + 1) * block_size]  # noqa: E731
    return [Block(cut(ids, i), cut(labels, i)) for i in range(n)]


def heldout_sample(cfg: StylesConfig, per_endpoint: int, seed: int = 0) -> list[str]:
    """Up to ``per_endpoint`` held-out texts of every endpoint (a fixed random sample): the text a sweep's
    held-out perplexity is measured on."""
    texts = []
    for a in cfg.attributes:
        for ep in a.endpoints:
            got, _ = endpoint_texts(cfg, ep, held_out=True)
            texts += random.Random(seed).sample(got, min(per_endpoint, len(got)))
    return texts


def read_prompts(path: str | Path, skip: int = 0, count: int | None = None) -> list[str]:
    """Prompts ``skip`` to ``skip + count`` of a file (one per line), e.g. to hold the first ones out."""
    got = read_texts(path)[skip:][:count]
    if not got:
        raise LerpError(f"{path} has no prompts after skipping {skip}")
    return got
