"""The one generation engine: a scheduler with continuous batching over a slot KV cache, a model
step that takes a mix per token, and batched sampling with a random stream per row."""

from .decoder import FastDecoder, StepPlan, unsupported_reason
from .scheduler import Engine, EngineStats, QueueFull, SamplingParams, Sequence

__all__ = [
    "Engine",
    "EngineStats",
    "FastDecoder",
    "QueueFull",
    "SamplingParams",
    "Sequence",
    "StepPlan",
    "unsupported_reason",
]
