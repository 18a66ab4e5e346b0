"""How much int8 activations cost the embedded default's products, quantised per tensor (ONNX Runtime's int8 GEMM,
``DynamicQuantizeMatMul``) or per block of the inputs (``MatMulNBits`` at accuracy level 4, the quantised step's
kernel): for each linear layer's real inputs on held-out writing prompts (prefill of the whole prompt), the error
of x̂ Wᵀ against x Wᵀ in fp32 weights (Frobenius norm over the product's), and how far the largest input sits
above the inputs' root mean square. Per tensor as ``DynamicQuantizeLinear`` does it (uint8 with a zero point over
[min(x, 0), max(x, 0)]), per block symmetric int8 in blocks as the int8 step takes them (128 inputs where they
divide the width, 64 otherwise).

python benchmarks/activation_quant.py
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from common import save

from lerplm.engine.ortstep import block_size

STYLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "styles"


def quantised(x: torch.Tensor, block: int | None) -> torch.Tensor:
    """x rounded to symmetric int8 with one scale per row and block of ``block`` inputs, or (None) to uint8 with
    one scale and zero point for the tensor."""
    if block is None:
        lo, hi = x.min().clamp(max=0), x.max().clamp(min=0)
        scale = (hi - lo).clamp(min=1e-12) / 255
        zero = torch.round(-lo / scale)
        return (torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero) * scale
    parts = x.reshape(x.shape[0], -1, block)
    scale = parts.abs().amax(-1, keepdim=True).clamp(min=1e-12) / 127
    return (torch.round(parts / scale) * scale).reshape_as(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=16)
    args = ap.parse_args()

    from lerplm.models import load_model, load_tokenizer, resolve

    base = resolve("default")
    model, tok = load_model(base, dtype=torch.float32, device="cpu"), load_tokenizer(base)
    lines = (STYLES / "prompts" / "writing_prompts.txt").read_text().splitlines()
    prompts = [p.strip() for p in lines[400:] if p.strip()][: args.prompts]
    rows: dict[str, list[dict]] = {}

    def hook(name: str):
        kind = name.rsplit(".", 1)[-1]

        @torch.no_grad()
        def record(mod, inputs, _):
            x = inputs[0].reshape(-1, inputs[0].shape[-1]).float()
            want = x @ mod.weight.T
            err = {
                label: float(((quantised(x, block) - x) @ mod.weight.T).norm() / want.norm())
                for label, block in (("per_tensor", None), ("per_block", block_size(x.shape[1], 8)))
            }
            rows.setdefault(kind, []).append({"max_over_rms": float(x.abs().max() / x.pow(2).mean().sqrt()), **err})

        return record

    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and ".layers." in name:
            mod.register_forward_hook(hook(name))
    with torch.no_grad():
        for p in prompts:
            text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            model(**tok(text, return_tensors="pt", add_special_tokens=False))
    summary = {}
    for kind, recs in rows.items():
        summary[kind] = {
            f"{key}_{stat}": fn(r[key] for r in recs)
            for key in ("max_over_rms", "per_tensor", "per_block")
            for stat, fn in (("median", statistics.median), ("max", max))
        }
        s = summary[kind]
        print(
            f"{kind:10s} max/rms {s['max_over_rms_median']:5.1f} (max {s['max_over_rms_max']:5.1f})  error per tensor "
            f"{s['per_tensor_median']:.4f} (max {s['per_tensor_max']:.4f})  per block {s['per_block_median']:.4f} "
            f"(max {s['per_block_max']:.4f})",
            flush=True,
        )
    print("wrote", save("activation_quant", {"prompts": len(prompts), "layers": summary}))


if __name__ == "__main__":
    main()
