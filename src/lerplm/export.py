"""Export one mix as a standard artifact: an exact PEFT LoRA adapter, or merged full weights.

The PEFT adapter stacks the adapters with a non-zero coefficient (rank Σ r_k over those), folds
c_k s_k into B and sets lora_alpha = r so PEFT's own scaling is 1: plain PEFT, vLLM, TGI or LoRAX
then serve the mix exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from .errors import LerpError
from .generate import LerpModel, MixLike

_PREFIX = "base_model.model."


@contextmanager
def _atomic_dir(out: Path):
    """Write into a temp dir beside ``out`` and rename it into place only on success."""
    out = Path(out)
    if out.exists():
        raise LerpError(f"{out} already exists; choose another --out or delete it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    try:
        yield tmp
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export_peft(lm: LerpModel, mix: MixLike, out: str | Path, extrapolate: bool = False) -> Path:
    """Write one PEFT adapter that reproduces ``mix`` exactly."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    coeffs = lm.coefficients([mix], extrapolate)[0].float().cpu()
    keep = (coeffs != 0).nonzero().flatten()
    state, ranks = {}, {}
    for name, layer in lm.runtime.layers.items():
        sel = torch.isin(layer.seg.cpu(), keep)
        c = coeffs[layer.seg.cpu()][sel]
        state[f"{_PREFIX}{name}.lora_A.weight"] = layer.a_cat.float().cpu()[sel].contiguous()
        state[f"{_PREFIX}{name}.lora_B.weight"] = (layer.b_cat.float().cpu()[:, sel] * c).contiguous()
        ranks[name] = int(sel.sum())
    r = max(ranks.values())
    patterns = {f"^{n}$".replace(".", r"\."): v for n, v in ranks.items() if v != r} if len(set(ranks.values())) > 1 else {}
    config = LoraConfig(
        r=r,
        lora_alpha=r,
        rank_pattern=patterns,
        alpha_pattern=dict(patterns),
        target_modules=sorted({n.rpartition(".")[2] for n in ranks}),
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=lm.anchors.base_model.describe(),
    )
    with _atomic_dir(Path(out)) as tmp:
        config.save_pretrained(str(tmp))
        save_file(state, str(tmp / "adapter_model.safetensors"))
        (tmp / "lerplm_mix.json").write_text(json.dumps(
            {"anchors": str(lm.anchors.root), "coefficients": coeffs.tolist(),
             "endpoints": [e.adapter for e in lm.anchors.endpoints], "rank": r},
            indent=2,
        ))
    return Path(out)


def export_merged(lm: LerpModel, mix: MixLike, out: str | Path, extrapolate: bool = False) -> Path:
    """Write base weights + ΔW(mix) as a transformers model directory (safetensors)."""
    coeffs = lm.coefficients([mix], extrapolate)[0]
    deltas = lm.runtime.delta_weights(coeffs)
    with lm.runtime.detached() as model, torch.no_grad():
        originals = {name: model.get_submodule(name).weight.detach().clone() for name in deltas}
        try:
            for name, delta in deltas.items():
                w = model.get_submodule(name).weight
                w.copy_((w.float() + delta).to(w.dtype))
            with _atomic_dir(Path(out)) as tmp:
                model.save_pretrained(str(tmp))
                lm.tokenizer.save_pretrained(str(tmp))
        finally:  # the base weights are restored bit for bit
            for name, w0 in originals.items():
                model.get_submodule(name).weight.copy_(w0)
    return Path(out)


def export(lm: LerpModel, mix: MixLike, out: str | Path, fmt: str = "peft", extrapolate: bool = False) -> Path:
    writers = {"peft": export_peft, "merged": export_merged}
    if fmt not in writers:
        raise LerpError(f"unknown export format {fmt!r}; choose from: {', '.join(writers)}")
    return writers[fmt](lm, mix, out, extrapolate)
