"""Attribute scorers: a score is P(positive endpoint | text) in [0, 1].

The paper fine-tuned RoBERTa classifiers; no hub weights are reachable here, so the default is a
logistic regression on word 1-2-gram and character 3-5-gram TF-IDF features, trained on the same
endpoint files (and normalisation) as the anchors and checked on the held-out test files. Any local
transformers sequence-classification model can be named instead (``kind = "hf"`` in scorers.json).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import StylesConfig
from ..errors import LerpError

MANIFEST = "scorers.json"


class TfidfScorer:
    """Word + character n-gram TF-IDF features, logistic regression."""

    def __init__(self, max_features: int = 200_000, c: float = 4.0, seed: int = 0) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import FeatureUnion, make_pipeline

        features = FeatureUnion([
            ("word", TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=max_features)),
            ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), min_df=2, sublinear_tf=True, max_features=max_features)),
        ])
        self.pipeline = make_pipeline(features, LogisticRegression(C=c, max_iter=2000, random_state=seed))

    def fit(self, negative: Sequence[str], positive: Sequence[str]) -> "TfidfScorer":
        self.pipeline.fit(list(negative) + list(positive), [0] * len(negative) + [1] * len(positive))
        return self

    def score(self, texts: Sequence[str]) -> np.ndarray:
        if not len(texts):
            return np.zeros(0)
        return self.pipeline.predict_proba(list(texts))[:, 1]


class HFScorer:
    """A local transformers sequence-classification model; ``positive_label`` is the positive class index."""

    def __init__(self, path: str, positive_label: int = 1, device: str = "cpu", batch_size: int = 32) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            self.tok = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForSequenceClassification.from_pretrained(path).to(device).eval()
        except OSError as e:
            raise LerpError(f"cannot load classifier {path!r}: {str(e).splitlines()[0]}") from None
        self.positive_label, self.device, self.batch_size = positive_label, device, batch_size

    def score(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                enc = self.tok(list(texts[i : i + self.batch_size]), return_tensors="pt", padding=True, truncation=True).to(self.device)
                out.append(torch.softmax(self.model(**enc).logits.float(), -1)[:, self.positive_label].cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)


@dataclass
class ScorerSet:
    """One scorer per attribute, loaded from a directory with ``scorers.json``."""

    root: Path
    scorers: dict[str, object]
    info: dict

    @property
    def names(self) -> list[str]:
        return list(self.scorers)

    def score(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        return {name: s.score(texts) for name, s in self.scorers.items()}

    @classmethod
    def load(cls, root: str | Path) -> "ScorerSet":
        root = Path(root)
        if not (root / MANIFEST).is_file():
            raise LerpError(f"no scorers at {root}: {MANIFEST} not found (train them with 'lerplm scorers train')")
        info = json.loads((root / MANIFEST).read_text())
        scorers = {}
        for name, entry in info["attributes"].items():
            if entry["kind"] == "tfidf":
                with open(root / entry["file"], "rb") as fh:
                    scorers[name] = pickle.load(fh)  # written by lerplm itself; never load untrusted files
            elif entry["kind"] == "hf":
                scorers[name] = HFScorer(entry["path"], entry.get("positive_label", 1))
            else:
                raise LerpError(f"{root / MANIFEST}: unknown scorer kind {entry['kind']!r} (tfidf or hf)")
        return cls(root, scorers, info)


def evaluate(scorer, negative: Sequence[str], positive: Sequence[str]) -> dict:
    from sklearn.metrics import roc_auc_score

    p = np.concatenate([scorer.score(negative), scorer.score(positive)])
    y = np.array([0] * len(negative) + [1] * len(positive))
    return {"accuracy": float(((p >= 0.5) == y).mean()), "auc": float(roc_auc_score(y, p)),
            "n_test": int(len(y))}


def train_scorers(cfg: StylesConfig, out: str | Path, max_train: int | None = None, log=print) -> ScorerSet:
    """Train one TF-IDF scorer per attribute; report held-out accuracy and AUC; write atomically."""
    from ..train import endpoint_texts

    out = Path(out)
    if out.exists():
        raise LerpError(f"{out} already exists; choose another --out or delete it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    info = {"format": "lerplm.scorers/1", "attributes": {}}
    try:
        for attr in cfg.attributes:
            neg, _ = endpoint_texts(cfg, attr.negative, cap=max_train)
            pos, _ = endpoint_texts(cfg, attr.positive, cap=max_train)
            scorer = TfidfScorer(seed=cfg.training.seed).fit(neg, pos)
            neg_t, _ = endpoint_texts(cfg, attr.negative, held_out=True)
            pos_t, _ = endpoint_texts(cfg, attr.positive, held_out=True)
            metrics = evaluate(scorer, neg_t, pos_t)
            with open(tmp / f"{attr.name}.pkl", "wb") as fh:
                pickle.dump(scorer, fh)
            info["attributes"][attr.name] = {
                "kind": "tfidf", "file": f"{attr.name}.pkl", "negative": attr.negative.name,
                "positive": attr.positive.name, "n_train": len(neg) + len(pos), **metrics,
            }
            log(f"{attr.name}: held-out accuracy {metrics['accuracy']:.3f}, AUC {metrics['auc']:.3f} "
                f"({metrics['n_test']} test texts)")
        (tmp / MANIFEST).write_text(json.dumps(info, indent=2))
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ScorerSet.load(out)
