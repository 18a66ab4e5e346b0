"""Attribute scorers: a score is P(positive endpoint | text) in [0, 1].

The paper fine-tuned RoBERTa classifiers; no hub weights are reachable here, so the default is a
logistic regression on word 1-2-gram and character 3-5-gram TF-IDF features, trained on the same
endpoint files (and normalisation) as the anchors and checked on the held-out test files. A second
kind reads meaning rather than words: a logistic regression on mean-pooled hidden states of a local
causal LM (``kind = "hidden"``, default the embedded base model). The third is closest to the paper:
that LM fine-tuned into a classifier (``kind = "finetune"``: LoRA plus a linear head). Any local
transformers sequence-classification model can be named instead (``kind = "hf"`` in scorers.json).
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import StylesConfig
from ..data import endpoint_texts
from ..errors import LerpError
from ..files import atomic_dir

MANIFEST = "scorers.json"


@dataclass
class KindOptions:
    """What a scorer kind may need to train or load: the feature or base model, its layer, the seed, and
    models built once and shared by every attribute of a scorer set."""

    model: str = "default"
    layer: int = -1
    seed: int = 0
    shared: dict = field(default_factory=dict)


def _pickle(obj, path: Path) -> None:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh)


def _unpickle(path: Path):
    with open(path, "rb") as fh:
        return pickle.load(fh)  # written by lerplm itself; never load untrusted files


class TfidfScorer:
    """Word + character n-gram TF-IDF features, logistic regression."""

    def __init__(self, max_features: int = 200_000, c: float = 4.0, seed: int = 0) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import FeatureUnion, make_pipeline

        features = FeatureUnion(
            [
                ("word", TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=max_features)),
                (
                    "char",
                    TfidfVectorizer(
                        analyzer="char_wb", ngram_range=(3, 5), min_df=2, sublinear_tf=True, max_features=max_features
                    ),
                ),
            ]
        )
        self.pipeline = make_pipeline(features, LogisticRegression(C=c, max_iter=2000, random_state=seed))

    def fit(self, negative: Sequence[str], positive: Sequence[str]) -> TfidfScorer:
        self.pipeline.fit(list(negative) + list(positive), [0] * len(negative) + [1] * len(positive))
        return self

    def score(self, texts: Sequence[str]) -> np.ndarray:
        if not len(texts):
            return np.zeros(0)
        return self.pipeline.predict_proba(list(texts))[:, 1]

    @classmethod
    def train(cls, negative, positive, out: Path, name: str, opts: KindOptions) -> tuple[TfidfScorer, dict]:
        scorer = cls(seed=opts.seed).fit(negative, positive)
        _pickle(scorer, out / f"{name}.pkl")
        return scorer, {"file": f"{name}.pkl"}

    @classmethod
    def load(cls, root: Path, entry: dict, opts: KindOptions) -> TfidfScorer:
        return _unpickle(root / entry["file"])


class HFScorer:
    """A local transformers sequence-classification model; ``positive_label`` is the positive class index."""

    def __init__(self, path: str, positive_label: int = 1, device: str = "cpu", batch_size: int = 32) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from ..models import LOCAL_LAYERS

        try:
            self.tok = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForSequenceClassification.from_pretrained(path, **LOCAL_LAYERS).to(device).eval()
        except OSError as e:
            raise LerpError(f"cannot load classifier {path!r}: {str(e).splitlines()[0]}") from None
        self.positive_label, self.device, self.batch_size = positive_label, device, batch_size

    def score(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                enc = self.tok(
                    list(texts[i : i + self.batch_size]), return_tensors="pt", padding=True, truncation=True
                ).to(self.device)
                out.append(torch.softmax(self.model(**enc).logits.float(), -1)[:, self.positive_label].cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)

    @classmethod
    def train(cls, negative, positive, out: Path, name: str, opts: KindOptions):
        raise LerpError("an hf classifier is not trained by lerplm: name it in scorers.json (kind, path)")

    @classmethod
    def load(cls, root: Path, entry: dict, opts: KindOptions) -> HFScorer:
        return cls(entry["path"], entry.get("positive_label", 1))


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
            for i in tqdm(
                range(0, len(key), self.batch_size), desc="hidden states", disable=len(key) < 1024, leave=False
            ):
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

    def fit(self, negative: Sequence[str], positive: Sequence[str]) -> HiddenScorer:
        self.head.fit(self.features(list(negative) + list(positive)), [0] * len(negative) + [1] * len(positive))
        return self

    def score(self, texts: Sequence[str]) -> np.ndarray:
        if not len(texts):
            return np.zeros(0)
        return self.head.predict_proba(self.features(texts))[:, 1]

    @staticmethod
    def _features(model: str, layer: int, opts: KindOptions) -> HiddenStates:
        key = ("hidden", model, layer)
        if key not in opts.shared:
            features = HiddenStates(model, layer)
            if not -features.layers - 1 <= layer <= features.layers:
                raise LerpError(
                    f"layer {layer} does not exist: {model} has {features.layers} layers (0 = embeddings, -1 = last)"
                )
            opts.shared[key] = features
        return opts.shared[key]

    @classmethod
    def train(cls, negative, positive, out: Path, name: str, opts: KindOptions) -> tuple[HiddenScorer, dict]:
        scorer = cls(cls._features(opts.model, opts.layer, opts), seed=opts.seed).fit(negative, positive)
        _pickle(scorer.head, out / f"{name}.pkl")
        return scorer, {"file": f"{name}.pkl", "model": opts.model, "layer": opts.layer}

    @classmethod
    def load(cls, root: Path, entry: dict, opts: KindOptions) -> HiddenScorer:
        return cls(cls._features(entry["model"], entry["layer"], opts), head=_unpickle(root / entry["file"]))


def _batches(rows: np.ndarray, lengths: np.ndarray, size: int, rng: np.random.Generator):
    """Endless epochs of shuffled batches of similar length (little padding): each epoch's permutation
    is cut into windows of 32 batches, sorted by length inside a window, and the batches shuffled."""
    while True:
        perm = rng.permutation(rows)
        batches = []
        for w in range(0, len(perm), 32 * size):
            window = perm[w : w + 32 * size]
            window = window[np.argsort(lengths[window], kind="stable")]
            batches += [window[i : i + size] for i in range(0, len(window), size)]
        for k in rng.permutation(len(batches)):
            yield batches[k]


class FinetunedScorer:
    """The base LM fine-tuned as a classifier: LoRA on the attention projections and a linear head on the
    last token, as the paper fine-tuned RoBERTa. It reads a whole text where TF-IDF reads n-grams.
    A fine-tuned network is over-confident, so its logits are temperature-scaled on a held-back tenth of
    the training texts: a score stays a probability, and a score range is not widened by confidence alone.
    Only the top ``top_layers`` layers are adapted: backward stops there, which halves a step's cost on CPU.
    Saved as the PEFT adapter (with the head) plus the temperature: a few MB."""

    def __init__(
        self,
        model: str = "default",
        r: int = 16,
        epochs: float = 2.0,
        learning_rate: float = 3e-4,
        batch_size: int = 16,
        max_tokens: int = 64,
        top_layers: int | None = 8,
        seed: int = 0,
        temperature: float = 1.0,
    ) -> None:
        self.model_name, self.r, self.epochs, self.learning_rate = model, r, epochs, learning_rate
        self.batch_size, self.max_tokens, self.top_layers = batch_size, max_tokens, top_layers
        self.seed, self.temperature = seed, temperature
        self.net = None

    def _base(self):
        import torch
        from transformers import AutoModelForSequenceClassification

        from ..models import LOCAL_LAYERS, load_tokenizer, materialize, resolve

        ref = resolve(self.model_name)
        self.tok = load_tokenizer(ref)
        net = AutoModelForSequenceClassification.from_pretrained(
            materialize(ref).name_or_path, num_labels=2, dtype=torch.float32, **LOCAL_LAYERS
        )
        net.config.pad_token_id = self.tok.pad_token_id  # the head reads each row's last non-pad token
        return net

    def _encode(self, texts: Sequence[str]):
        return self.tok(list(texts), truncation=True, max_length=self.max_tokens, padding=True, return_tensors="pt")

    def _margins(self, texts: Sequence[str]) -> np.ndarray:
        """logit(positive) - logit(negative) per text, before temperature."""
        import torch

        texts = [t or " " for t in texts]  # an empty text still has a last token to read
        order = np.argsort([len(t) for t in texts], kind="stable")  # batches of similar length
        out = np.zeros(len(texts))
        self.net.eval()
        with torch.inference_mode():
            for i in range(0, len(texts), 64):
                rows = order[i : i + 64]
                logits = self.net(**self._encode([texts[j] for j in rows])).logits.float()
                out[rows] = (logits[:, 1] - logits[:, 0]).numpy()
        return out

    def fit(self, negative: Sequence[str], positive: Sequence[str]) -> FinetunedScorer:
        import torch
        from peft import LoraConfig, get_peft_model
        from tqdm.auto import tqdm
        from transformers import get_linear_schedule_with_warmup

        texts = list(negative) + list(positive)
        labels = np.array([0] * len(negative) + [1] * len(positive))
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(len(texts))
        held = order[: max(2, len(texts) // 10)]  # for the temperature only
        train = order[len(held) :]
        torch.manual_seed(self.seed)
        base = self._base()
        n = base.config.num_hidden_layers
        top = list(range(max(0, n - self.top_layers), n)) if self.top_layers else None
        self.net = get_peft_model(
            base,
            LoraConfig(
                task_type="SEQ_CLS",
                r=self.r,
                lora_alpha=2 * self.r,
                lora_dropout=0.05,
                target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                layers_to_transform=top,
            ),
        )
        lengths = np.array([len(x) for x in self.tok(texts, truncation=True, max_length=self.max_tokens)["input_ids"]])
        steps = max(1, round(self.epochs * len(train) / self.batch_size))
        opt = torch.optim.AdamW(
            [p for p in self.net.parameters() if p.requires_grad], lr=self.learning_rate, weight_decay=0.0
        )
        sched = get_linear_schedule_with_warmup(opt, max(1, steps // 20), steps)
        self.net.train()
        for _, rows in zip(
            tqdm(range(steps), desc="fine-tuning", leave=False), _batches(train, lengths, self.batch_size, rng)
        ):
            enc = self._encode([texts[j] for j in rows])
            loss = torch.nn.functional.cross_entropy(self.net(**enc).logits, torch.as_tensor(labels[rows]))
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        # temperature: the one scale of the margins that maximises the held-back texts' likelihood
        m, y = self._margins([texts[j] for j in held]), labels[held]
        grid = np.exp(np.linspace(np.log(0.05), np.log(20), 400))
        nll = [np.logaddexp(0, -np.where(y == 1, m, -m) / t).mean() for t in grid]
        self.temperature = float(grid[int(np.argmin(nll))])
        return self

    def score(self, texts: Sequence[str]) -> np.ndarray:
        if not len(texts):
            return np.zeros(0)
        return 1 / (1 + np.exp(-self._margins(texts) / self.temperature))

    def save(self, path: Path) -> dict:
        self.net.save_pretrained(str(path))
        return {
            "dir": path.name,
            "model": self.model_name,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }

    @classmethod
    def train(cls, negative, positive, out: Path, name: str, opts: KindOptions) -> tuple[FinetunedScorer, dict]:
        scorer = cls(opts.model, seed=opts.seed).fit(negative, positive)
        return scorer, scorer.save(out / f"{name}.finetune")

    @classmethod
    def load(cls, root: Path, entry: dict, opts: KindOptions) -> FinetunedScorer:
        from peft import PeftModel

        s = cls(entry["model"], max_tokens=entry["max_tokens"], temperature=entry["temperature"])
        s.net = PeftModel.from_pretrained(s._base(), str(root / entry["dir"])).eval()
        return s


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
    def load(cls, root: str | Path) -> ScorerSet:
        root = Path(root)
        if not (root / MANIFEST).is_file():
            raise LerpError(f"no scorers at {root}: {MANIFEST} not found (train them with 'lerplm scorers train')")
        info = json.loads((root / MANIFEST).read_text())
        opts = KindOptions()
        scorers: dict[str, object] = {}
        for name, entry in info["attributes"].items():
            kind = KINDS.get(entry["kind"])
            if kind is None:
                raise LerpError(f"{root / MANIFEST}: unknown scorer kind {entry['kind']!r} ({', '.join(KINDS)})")
            scorers[name] = kind.load(root, entry, opts)
        return cls(root, scorers, info)


def evaluate(scorer, negative: Sequence[str], positive: Sequence[str]) -> dict:
    from sklearn.metrics import roc_auc_score

    neg, pos = scorer.score(negative), scorer.score(positive)
    p = np.concatenate([neg, pos])
    y = np.array([0] * len(negative) + [1] * len(positive))
    # the mean score gap between real texts of the two endpoints: the widest range a sweep can be
    # expected to show with this scorer, unless generations are more extreme than the corpora
    return {
        "accuracy": float(((p >= 0.5) == y).mean()),
        "auc": float(roc_auc_score(y, p)),
        "score_gap": float(pos.mean() - neg.mean()),
        "n_test": int(len(y)),
    }


def train_scorers(
    cfg: StylesConfig,
    out: str | Path,
    max_train: int | None = None,
    log=print,
    kind: str = "tfidf",
    model: str = "default",
    layer: int = -1,
) -> ScorerSet:
    """Train one scorer per attribute (``kind`` tfidf, hidden on ``model``'s layer ``layer``, or finetune of
    ``model``); report held-out accuracy and AUC; write atomically."""
    if kind not in TRAINED_KINDS:
        raise LerpError(
            f"unknown scorer kind {kind!r}: {', '.join(TRAINED_KINDS)} (an hf classifier is named in scorers.json)"
        )
    opts = KindOptions(model, layer, cfg.training.seed)
    info = {"format": "lerplm.scorers/1", "attributes": {}}
    with atomic_dir(out) as tmp:
        for attr in cfg.attributes:
            neg, _ = endpoint_texts(cfg, attr.negative, cap=max_train)
            pos, _ = endpoint_texts(cfg, attr.positive, cap=max_train)
            scorer, saved = KINDS[kind].train(neg, pos, tmp, attr.name, opts)
            neg_t, _ = endpoint_texts(cfg, attr.negative, held_out=True)
            pos_t, _ = endpoint_texts(cfg, attr.positive, held_out=True)
            metrics = evaluate(scorer, neg_t, pos_t)
            info["attributes"][attr.name] = {
                "kind": kind,
                **saved,
                "negative": attr.negative.name,
                "positive": attr.positive.name,
                "n_train": len(neg) + len(pos),
                **metrics,
            }
            log(
                f"{attr.name}: held-out accuracy {metrics['accuracy']:.3f}, AUC {metrics['auc']:.3f}, "
                f"score gap {metrics['score_gap']:.3f} ({metrics['n_test']} test texts)"
            )
        (tmp / MANIFEST).write_text(json.dumps(info, indent=2))
    return ScorerSet.load(out)


KINDS = {"tfidf": TfidfScorer, "hidden": HiddenScorer, "finetune": FinetunedScorer, "hf": HFScorer}
TRAINED_KINDS = ("tfidf", "hidden", "finetune")  # an "hf" classifier is only named in scorers.json
