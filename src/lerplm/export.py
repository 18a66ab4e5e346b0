"""Export one mix as a standard artifact: an exact PEFT LoRA adapter, or merged full weights.

The PEFT adapter stacks the adapters with a non-zero coefficient (rank Σ r_k over those), folds
c_k s_k into B and sets lora_alpha = r so PEFT's own scaling is 1: plain PEFT, vLLM, TGI or LoRAX
then serve the mix exactly.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import LerpError
from .files import atomic_dir
from .generate import LerpModel, MixLike, to_mix
from .mix import Mix
from .runtime import PEFT_PREFIX


def _exact_factors(layer, coeffs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) of the stacked adapters with non-zero coefficient, c_k s_k folded into B."""
    seg = layer.seg.cpu()
    keep = coeffs[seg] != 0
    return layer.a_cat.float().cpu()[keep].contiguous(), (
        layer.b_cat.float().cpu()[:, keep] * coeffs[seg][keep]
    ).contiguous()


def _reduced_factors(a: torch.Tensor, b: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Best rank-``rank`` factors of ΔW = B A (truncated SVD, via QR of the thin factors) and the
    relative Frobenius error ||ΔW - B'A'|| / ||ΔW||."""
    qb, rb = torch.linalg.qr(b.double())
    qa, ra = torch.linalg.qr(a.T.double())
    u, s, vh = torch.linalg.svd(rb @ ra.T)
    r = min(rank, s.numel())
    b_r = (qb @ u[:, :r]) * s[:r]
    a_r = vh[:r] @ qa.T
    total = s.pow(2).sum()
    err = (s[r:].pow(2).sum() / total).sqrt().item() if total > 0 else 0.0
    return a_r.float().contiguous(), b_r.float().contiguous(), err


def export_peft(
    lm: LerpModel, mix: MixLike, out: str | Path, extrapolate: bool = False, rank: int | None = None
) -> dict:
    """Write one PEFT adapter that reproduces ``mix`` exactly, or its best rank-``rank`` approximation
    (then the relative error of every layer is reported). Returns the export's description."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    coeffs = lm.coefficients([mix], extrapolate)[0].float().cpu()
    state, ranks, errors = {}, {}, {}
    for name, layer in lm.runtime.layers.items():
        a, b = _exact_factors(layer, coeffs)
        if rank is not None:
            a, b, errors[name] = _reduced_factors(a, b, rank)
        state[f"{PEFT_PREFIX}{name}.lora_A.weight"] = a
        state[f"{PEFT_PREFIX}{name}.lora_B.weight"] = b
        ranks[name] = a.shape[0]
    r = max(ranks.values())
    patterns = {re.escape(n): v for n, v in ranks.items() if v != r}  # PEFT matches keys as name suffixes
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
    info = {
        "anchors": str(lm.anchors.root),
        "mix": to_mix(mix).to_json(lm.anchors.names, extrapolate),
        "coefficients": coeffs.tolist(),
        "endpoints": [e.adapter for e in lm.anchors.endpoints],
        "rank": r,
        "exact": rank is None,
    }
    if errors:
        info["relative_error"] = {
            "max": max(errors.values()),
            "mean": sum(errors.values()) / len(errors),
            "per_layer": errors,
        }
    with atomic_dir(out) as tmp:
        config.save_pretrained(str(tmp))
        save_file(state, str(tmp / "adapter_model.safetensors"))
        (tmp / "lerplm_mix.json").write_text(json.dumps(info, indent=2))
    return info


def export_grid(
    lm: LerpModel, mixes: dict[str, MixLike], out: str | Path, extrapolate: bool = False, rank: int | None = None
) -> dict:
    """One PEFT adapter per named mix under ``out`` plus ``exports.json`` naming each adapter's mix and
    rank (configure the serving engine's max LoRA rank to at least ``max_rank``)."""
    entries = {}
    with atomic_dir(out) as tmp:
        for name, mix in mixes.items():
            info = export_peft(lm, mix, tmp / name, extrapolate, rank)
            entries[name] = {k: info[k] for k in ("mix", "rank", "exact")} | (
                {"relative_error_max": info["relative_error"]["max"]} if "relative_error" in info else {}
            )
        manifest = {
            "anchors": str(lm.anchors.root),
            "max_rank": max(e["rank"] for e in entries.values()),
            "adapters": entries,
        }
        (tmp / "exports.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def export_merged(lm: LerpModel, mix: MixLike, out: str | Path, extrapolate: bool = False) -> Path:
    """Write base weights + ΔW(mix) as a transformers model directory (safetensors)."""
    with lm.runtime.merged(lm.coefficients([mix], extrapolate)[0]) as model, atomic_dir(out) as tmp:
        model.save_pretrained(str(tmp))
        lm.tokenizer.save_pretrained(str(tmp))
    return Path(out)


GGUF_MANIFEST = "lerplm_gguf.json"


def _permute_rope_rows(w: torch.Tensor, heads: int) -> torch.Tensor:
    """The row order llama.cpp's converter gives q/k projections of 'llama' models (rotary halves
    interleaved per head); a LoRA B on q or k must follow its base weight."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def export_gguf(lm: LerpModel, out: str | Path) -> dict:
    """Write every anchor as a llama.cpp LoRA adapter (``<endpoint>.gguf``) in ``out``. PEFT's scaling is
    folded into B and alpha is 0 (llama.cpp then applies the request's scale alone, whatever the ranks),
    so a request's per-adapter ``scale`` is the mix's coefficient and llama.cpp serves the exact ΔW.
    Returns the manifest written beside them."""
    import gguf

    cfg = lm.model.config
    arch = getattr(cfg, "model_type", "")
    if arch not in ("llama", "mistral"):
        raise LerpError(f"GGUF LoRA export covers llama-family models; this base model is {arch!r}")
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    heads = {"q_proj": cfg.num_attention_heads, "k_proj": cfg.num_key_value_heads}
    files = []
    with atomic_dir(out) as tmp:
        for endpoint, adapter in zip(lm.anchors.endpoints, lm.adapters):
            writer = gguf.GGUFWriter(str(tmp / f"{endpoint.adapter}.gguf"), "llama")
            writer.add_string(gguf.Keys.General.TYPE, gguf.GGUFType.ADAPTER)
            writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
            writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 0.0)
            for module, (a, b, scaling) in sorted(adapter.modules.items()):
                b = b.float() * scaling
                target = names.get_name(module, try_suffixes=(".weight",))
                if target is None:
                    raise LerpError(f"no GGUF tensor name for {module!r}")
                kind = module.rpartition(".")[2]
                if kind in heads:
                    b = _permute_rope_rows(b, heads[kind])
                writer.add_tensor(f"{target}.weight.lora_a", a.float().contiguous().numpy())
                writer.add_tensor(f"{target}.weight.lora_b", b.float().contiguous().numpy())
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
            files.append(f"{endpoint.adapter}.gguf")
        ref = lm.anchors.base_model
        base = str(Path(ref.name_or_path) / ref.gguf_file) if ref.gguf_file else None
        manifest = {
            "anchors": str(lm.anchors.root),
            "base_gguf": base,
            "adapters": files,
            "attributes": lm.anchors.names,
        }
        (tmp / GGUF_MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def llama_lora_field(lm: LerpModel, mix: MixLike, extrapolate: bool = False) -> list[dict]:
    """The per-request ``lora`` field of llama-server for ``mix`` (adapter ids in export order)."""
    return [{"id": k, "scale": c} for k, c in enumerate(to_mix(mix).coefficients(lm.anchors.names, extrapolate))]


def llama_server_command(manifest: dict, out: str | Path) -> str:
    """The llama-server command line serving the exported adapters (all at scale 0 until a request sets them)."""
    base = manifest["base_gguf"] or "BASE.gguf"
    loras = " ".join(f"--lora {Path(out) / f}" for f in manifest["adapters"])
    return f"llama-server -m {base} {loras} --lora-init-without-apply"


@dataclass(frozen=True)
class Format:
    """An export format: how it writes named mixes into ``out`` (returning what it tells the user) and what
    it accepts."""

    write: Callable[[LerpModel, dict[str, Mix], Path, bool, int | None], str]
    several: bool = False  # several mixes (or a grid) in one export
    rank: bool = False  # a rank-reduced variant
    needs_mix: bool = True  # gguf writes the anchors themselves; a mix only prints its request scales


def _write_peft(lm: LerpModel, mixes: dict[str, Mix], out: Path, extrapolate: bool, rank: int | None) -> str:
    if len(mixes) > 1:
        manifest = export_grid(lm, mixes, out, extrapolate, rank)
        return (
            f"wrote {len(mixes)} PEFT adapters and exports.json to {out} (max rank {manifest['max_rank']}: "
            "set your engine's max LoRA rank at least this high)"
        )
    (mix,) = mixes.values()
    info = export_peft(lm, mix, out, extrapolate, rank)
    err = info.get("relative_error")
    err = f"; relative error max {err['max']:.2e}, mean {err['mean']:.2e}" if err else ""
    return f"wrote PEFT adapter of rank {info['rank']} for [{mix.describe()}] to {out}{err}"


def _write_merged(lm: LerpModel, mixes: dict[str, Mix], out: Path, extrapolate: bool, rank: int | None) -> str:
    (mix,) = mixes.values()
    export_merged(lm, mix, out, extrapolate)
    return f"wrote merged model for [{mix.describe()}] to {out}"


def _write_gguf(lm: LerpModel, mixes: dict[str, Mix], out: Path, extrapolate: bool, rank: int | None) -> str:
    manifest = export_gguf(lm, out)
    lines = [
        f"wrote {len(manifest['adapters'])} llama.cpp LoRA adapters to {out}; serve them with:",
        f"  {llama_server_command(manifest, out)}",
    ]
    if not manifest["base_gguf"]:
        lines.append("  (BASE.gguf: the base model converted with llama.cpp's convert_hf_to_gguf.py)")
    lines += [
        f'[{m.describe()}] request field: "lora": {json.dumps(llama_lora_field(lm, m, extrapolate))}'
        for m in mixes.values()
    ]
    return "\n".join(lines)


FORMATS = {
    "peft": Format(_write_peft, several=True, rank=True),
    "merged": Format(_write_merged),
    "gguf": Format(_write_gguf, several=True, needs_mix=False),
}


def _format(fmt: str) -> Format:
    if fmt not in FORMATS:
        raise LerpError(f"unknown export format {fmt!r}; choose from: {', '.join(FORMATS)}")
    return FORMATS[fmt]


def export(lm: LerpModel, mix: MixLike, out: str | Path, fmt: str = "peft", extrapolate: bool = False) -> Path:
    """Write one mix in format ``fmt`` (a name of FORMATS) to ``out``."""
    mix = to_mix(mix)
    _format(fmt).write(lm, {mix.slug(): mix}, Path(out), extrapolate, None)
    return Path(out)


def export_anchors(
    anchors: str | Path,
    out: str | Path,
    fmt: str = "peft",
    mixes: Sequence[Mix] = (),
    grids: Sequence[str] = (),
    levels: int = 11,
    extrapolate: bool = False,
    rank: int | None = None,
) -> str:
    """Export mixes and grid points of an anchor set (all checked before the model loads); returns what was
    written, for the user."""
    from .anchors import AnchorSet
    from .evaluate.grids import parse_grid

    form = _format(fmt)
    if rank is not None and not form.rank:
        raise LerpError(f"--rank applies to --format {', '.join(k for k, f in FORMATS.items() if f.rank)} only")
    if grids and not form.needs_mix:
        raise LerpError(
            f"--format {fmt} writes the anchors themselves; a mix is a request's scales (--mix), not a file"
        )
    names = AnchorSet.load(anchors).names
    named = {p.id: p.mix for g in grids for p in parse_grid(g, names, levels)} | {m.slug(): m for m in mixes}
    if any(m is None for m in named.values()):
        raise LerpError("the base grid is the base model itself: there is no mix to export")
    if form.needs_mix and not named:
        raise LerpError('give at least one --mix, e.g. --mix "sentiment=0.8"')
    for m in named.values():
        m.coefficients(names, extrapolate)
    if len(named) > 1 and not form.several:
        raise LerpError("several mixes export as PEFT adapters only (--format peft)")
    return form.write(LerpModel.load(anchors, device="cpu"), named, Path(out), extrapolate, rank)
