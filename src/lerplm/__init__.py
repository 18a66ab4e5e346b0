"""lerplm: continuous, multi-attribute control of text generation by interpolating LoRA adapters."""

from .anchors import AnchorSet
from .errors import LerpError
from .generate import LerpModel, SamplingParams
from .mix import Mix

__version__ = "0.1.0"


def load(path, device: str | None = None, dtype=None) -> LerpModel:
    """Load an anchor set and its base model, ready for ``generate(prompts, mixes)``."""
    import torch

    return LerpModel.load(path, device=device, dtype=dtype or torch.float32)


__all__ = ["AnchorSet", "LerpError", "LerpModel", "Mix", "SamplingParams", "load"]
