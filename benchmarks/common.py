"""Shared benchmark plumbing: models of real shapes, random anchors, timing, result files."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

SHAPES = {  # random-init models of real shapes: honest for speed, no weights to ship
    "llama-1b": dict(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    ),
    "llama-8b": dict(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=4096,
    ),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def base_model(shape: str, dtype: torch.dtype, device: str):
    """The embedded default ('default') or a random-init Llama of a named shape."""
    if shape == "default":
        from lerplm.models import load_model, resolve

        return load_model(resolve("default"), dtype=dtype, device=device)
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**SHAPES[shape])).to(dtype)
    return model.eval()


def random_anchors(model, out: Path, k: int = 10, r: int = 32, alpha: float = 16) -> list[Path]:
    """K PEFT adapters with random A and B saved under ``out`` (their values do not matter for speed)."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=TARGETS), adapter_name="a0")
    for i in range(1, k):
        peft_model.add_adapter(f"a{i}", LoraConfig(r=r, lora_alpha=alpha, target_modules=TARGETS))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
    peft_model.save_pretrained(out)
    peft_model.unload()  # the base model back, LoRA layers removed
    return [out / f"a{i}" for i in range(k)]  # PEFT saves each named adapter in a folder of its name


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeat: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t)
    return out


def taking_turns(calls: dict[str, Callable[[], object]], rounds: int, warm: int, runs: int) -> dict[str, list[float]]:
    """ms per call of each function, the functions taking turns ``rounds`` times (in reverse order every other
    round, so that none always follows the same other one): each turn makes ``warm`` untimed calls first (an ONNX
    Runtime session leaves its worker threads spinning a while after its run), then ``runs`` timed ones."""
    out: dict[str, list[float]] = {key: [] for key in calls}
    for r in range(rounds):
        for key in list(calls) if r % 2 else list(calls)[::-1]:
            for _ in range(warm):
                calls[key]()
            t = time.perf_counter()
            for _ in range(runs):
                calls[key]()
            out[key].append((time.perf_counter() - t) / runs * 1e3)
    return out


def machine() -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    import peft
    import transformers

    info["transformers"], info["peft"] = transformers.__version__, peft.__version__
    return info


def save(name: str, payload: dict) -> Path:
    path = Path(__file__).with_name("results") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2))
    return path


def median(xs: list[float]) -> float:
    return statistics.median(xs)
