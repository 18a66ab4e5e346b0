"""lerplm: continuous, multi-attribute control of text generation by interpolating LoRA adapters."""

from .anchors import AnchorSet
from .errors import LerpError
from .generate import LerpModel, SamplingParams
from .mix import Mix

__version__ = "0.1.0"


def load(path, device: str | None = None, dtype=None, quantize: str = "fp32") -> LerpModel:
    """Load an anchor set and its base model, ready for ``generate(prompts, mixes)``; ``quantize``
    ("fp32", "int8", "int4") picks the base weights of the generation step (CPU)."""
    import torch

    return LerpModel.load(path, device=device, dtype=dtype or torch.float32, quantize=quantize)


__all__ = ["AnchorSet", "LerpError", "LerpModel", "Mix", "SamplingParams", "load"]
