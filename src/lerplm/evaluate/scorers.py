"""Attribute scorers: a score is P(positive endpoint | text) in [0, 1].

The paper fine-tuned RoBERTa classifiers; no hub weights are reachable here, so the default is a
logistic regression on word 1-2-gram and character 3-5-gram TF-IDF features, trained on the same
endpoint files (and normalisation) as the anchors and checked on the held-out test files. A second
kind reads meaning rather than words: a logistic regression on mean-pooled hidden states of a local
causal LM (``kind = "hidden"``, default the embedded base model). Any local transformers
sequence-classification model can be named instead (``kind = "hf"`` in scorers.json).
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
TRAINED_KINDS = ("tfidf", "hidden")  # kinds that lerplm trains and pickles (an "hf" classifier is only named)


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


class HiddenStates:
    """Mean-pooled hidden states of one layer of a causal LM: features shared by every hidden scorer.
    The last call is remembered, so the attributes of a ScorerSet embed a batch of texts once."""

    def __init__(self, model: str = "default", layer: int = -1, batch_size: int = 32, max_tokens: int = 128) -> None:
        import torch

        from ..models import load_model, load_tokenizer, resolve

        ref = resolve(model)
        self.layer, self.batch_size, self.max_tokens = layer, batch_size, max_tokens
        self.tok = load_tokenizer(ref)
        self.tok.padding_side = "right"  # positions count from each text's first token
        self.model = load_model(ref, dtype=torch.float32)
        self.layers = self.model.config.num_hidden_layers
        self._last: tuple[tuple[str, ...], np.ndarray] | None = None

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        import torch
        from tqdm.auto import tqdm

        key = tuple(texts)
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        ids = self.tok(list(key), truncation=True, max_length=self.max_tokens, add_special_tokens=False)["input_ids"]
        order = np.argsort([len(x) for x in ids], kind="stable")  # batches of similar length: little padding
        feats = np.zeros((len(key), self.model.config.hidden_size), dtype=np.float32)
        with torch.inference_mode():
            for i in tqdm(range(0, len(key), self.batch_size), desc="hidden states", disable=len(key) < 1024, leave=False):
                rows = [j for j in order[i : i + self.batch_size] if ids[j]]  # an empty text keeps zero features
                if not rows:
                    continue
                enc = self.tok.pad({"input_ids": [ids[j] for j in rows]}, return_tensors="pt")
                # the decoder alone: the hidden states are the same, and the LM head's logits are never needed
                h = self.model.base_model(**enc, output_hidden_states=True).hidden_states[self.layer]
                mask = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
                feats[rows] = (h * mask).sum(1).div(mask.sum(1).clamp(min=1)).float().numpy()
        self._last = (key, feats)
        return feats


class HiddenScorer:
    """Standardised hidden-state features, logistic regression. Only the regression is pickled; the
    feature model is named in scorers.json and loaded once for all attributes."""

    def __init__(self, features: HiddenStates, head=None, c: float = 1.0, seed: int = 0) -> None:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.features = features
        self.head = head or make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000, random_state=seed))

    def fit(self, negative: Sequence[str], positive: Sequence[str]) -> "HiddenScorer":
        self.head.fit(self.features(list(negative) + list(positive)), [0] * len(negative) + [1] * len(positive))
        return self

    def score(self, texts: Sequence[str]) -> np.ndarray:
        if not len(texts):
            return np.zeros(0)
        return self.head.predict_proba(self.features(texts))[:, 1]


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
        scorers: dict[str, object] = {}
        features: dict[tuple, HiddenStates] = {}  # one feature model per (model, layer), shared
        for name, entry in info["attributes"].items():
            kind = entry["kind"]
            if kind == "hf":
                scorers[name] = HFScorer(entry["path"], entry.get("positive_label", 1))
                continue
            if kind not in TRAINED_KINDS:
                raise LerpError(f"{root / MANIFEST}: unknown scorer kind {kind!r} (tfidf, hidden or hf)")
            with open(root / entry["file"], "rb") as fh:
                scorer = pickle.load(fh)  # written by lerplm itself; never load untrusted files
            if kind == "hidden":
                key = (entry["model"], entry["layer"])
                if key not in features:
                    features[key] = HiddenStates(*key)
                scorer = HiddenScorer(features[key], head=scorer)
            scorers[name] = scorer
        return cls(root, scorers, info)


def evaluate(scorer, negative: Sequence[str], positive: Sequence[str]) -> dict:
    from sklearn.metrics import roc_auc_score

    neg, pos = scorer.score(negative), scorer.score(positive)
    p = np.concatenate([neg, pos])
    y = np.array([0] * len(negative) + [1] * len(positive))
    # the mean score gap between real texts of the two endpoints: the widest range a sweep can be
    # expected to show with this scorer, unless generations are more extreme than the corpora
    return {"accuracy": float(((p >= 0.5) == y).mean()), "auc": float(roc_auc_score(y, p)),
            "score_gap": float(pos.mean() - neg.mean()), "n_test": int(len(y))}


def train_scorers(
    cfg: StylesConfig,
    out: str | Path,
    max_train: int | None = None,
    log=print,
    kind: str = "tfidf",
    model: str = "default",
    layer: int = -1,
) -> ScorerSet:
    """Train one scorer per attribute (``kind`` tfidf or hidden, the latter on ``model``'s layer
    ``layer``); report held-out accuracy and AUC; write atomically."""
    if kind not in TRAINED_KINDS:
        raise LerpError(f"unknown scorer kind {kind!r}: tfidf or hidden (an hf classifier is named in scorers.json)")
    from ..train import endpoint_texts

    out = Path(out)
    if out.exists():
        raise LerpError(f"{out} already exists; choose another --out or delete it")
    features = HiddenStates(model, layer) if kind == "hidden" else None
    if features is not None and not -features.layers - 1 <= layer <= features.layers:
        raise LerpError(f"layer {layer} does not exist: {model} has {features.layers} layers (0 = embeddings, -1 = last)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    info = {"format": "lerplm.scorers/1", "attributes": {}}
    try:
        for attr in cfg.attributes:
            neg, _ = endpoint_texts(cfg, attr.negative, cap=max_train)
            pos, _ = endpoint_texts(cfg, attr.positive, cap=max_train)
            scorer = (HiddenScorer(features, seed=cfg.training.seed) if features else TfidfScorer(seed=cfg.training.seed)).fit(neg, pos)
            neg_t, _ = endpoint_texts(cfg, attr.negative, held_out=True)
            pos_t, _ = endpoint_texts(cfg, attr.positive, held_out=True)
            metrics = evaluate(scorer, neg_t, pos_t)
            with open(tmp / f"{attr.name}.pkl", "wb") as fh:
                pickle.dump(scorer.head if features else scorer, fh)
            info["attributes"][attr.name] = {
                "kind": kind, "file": f"{attr.name}.pkl", "negative": attr.negative.name,
                "positive": attr.positive.name, "n_train": len(neg) + len(pos), **metrics,
                **({"model": model, "layer": layer} if features else {}),
            }
            log(f"{attr.name}: held-out accuracy {metrics['accuracy']:.3f}, AUC {metrics['auc']:.3f}, "
                f"score gap {metrics['score_gap']:.3f} ({metrics['n_test']} test texts)")
        (tmp / MANIFEST).write_text(json.dumps(info, indent=2))
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ScorerSet.load(out)
