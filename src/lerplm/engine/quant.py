"""Weight-only quantised linear layers for CPU decoding.

A batch-1 decode step reads every weight once, so its time is bytes per weight. torch's packed
int4 (groups of 32, asymmetric) and int8 (per channel, symmetric) matmuls read 4x and 2x fewer
bytes than fp32; both run fast only with bf16 activations on CPU, so the layer casts its input to
bf16 and its output back to the caller's dtype. They pay only for a few rows at a time: from
``dense_rows`` rows on (prefill chunks, large batches) the work is arithmetic, not bytes, and the
fp32 matmul is as fast or faster (measured for a 3072 x 576 layer: int8 0.54 vs fp32 0.54 ms at 16
rows; int4 0.84 vs 0.67 ms at 32, 6.4 vs 3.7 ms at 256), so a layer given its fp32 weight uses it
there. The fp32 layer stays the reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LerpError

GROUP = 32  # int4 group size along the input dimension (the GGUF Q4 block size)
SCHEMES = ("fp32", "int8", "int4")


class Int8Linear(nn.Module):
    """y = x Wᵀ (+ b) with W stored as int8 rows times one bf16 scale per output channel."""

    dense_rows = 12  # from this many rows on, fp32 (when kept) is faster

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, keep_dense: bool = False) -> None:
        super().__init__()
        self.dense = weight.detach() if keep_dense else None
        w = weight.detach().float()
        self.pad = -w.shape[1] % 16  # the kernel reads inputs 16 at a time (other sizes crash or go wrong)
        w = F.pad(w, (0, self.pad))
        scale = (w.abs().amax(1) / 127).clamp(min=1e-12)
        self.register_buffer("qweight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(torch.bfloat16))
        self.register_buffer("bias", None if bias is None else bias.detach().float())
        self.out_features, self.in_features = w.shape[0], w.shape[1] - self.pad

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, in) in bf16 -> x Wᵀ (N, out) in bf16, no bias."""
        return torch._weight_int8pack_mm(F.pad(x, (0, self.pad)) if self.pad else x, self.qweight, self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _forward(self, x)

    def dequantized(self) -> torch.Tensor:
        return (self.qweight.float() * self.scale.float()[:, None])[:, : self.in_features]


class Int4Linear(nn.Module):
    """y = x Wᵀ (+ b) with W in groups of 32 inputs: w = (q - 8) * scale + zero, q in 0..15."""

    dense_rows = 20

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, keep_dense: bool = False) -> None:
        super().__init__()
        self.dense = weight.detach() if keep_dense else None
        w = weight.detach().float()
        out_f, in_f = w.shape
        g = w.reshape(out_f, in_f // GROUP, GROUP)
        lo, hi = g.amin(-1), g.amax(-1)
        scale = ((hi - lo) / 15).clamp(min=1e-12)
        q = torch.round((g - lo[..., None]) / scale[..., None]).clamp(0, 15)
        zero = lo + 8 * scale  # (q - 8) * scale + zero == lo + q * scale
        self.register_buffer(
            "qweight", torch._convert_weight_to_int4pack_for_cpu(q.reshape(out_f, in_f).to(torch.int32), 1)
        )
        sz = torch.stack([scale, zero], -1).transpose(0, 1).contiguous()  # (in/GROUP, out, 2)
        self.register_buffer("scales_zeros", sz.to(torch.bfloat16))
        self.register_buffer("bias", None if bias is None else bias.detach().float())
        self.out_features, self.in_features = out_f, in_f

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, in) in bf16 -> x Wᵀ (N, out) in bf16, no bias."""
        return torch._weight_int4pack_mm_for_cpu(x, self.qweight, GROUP, self.scales_zeros)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _forward(self, x)

    def dequantized(self) -> torch.Tensor:
        eye = torch.eye(self.in_features, dtype=torch.bfloat16)
        return torch._weight_int4pack_mm_for_cpu(eye, self.qweight, GROUP, self.scales_zeros).float().t()


def _forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x2 = x.reshape(-1, x.shape[-1])
    if layer.dense is not None and x2.shape[0] >= layer.dense_rows:
        return F.linear(x, layer.dense.to(x.dtype), layer.bias)
    y = layer.matmul(x2.to(torch.bfloat16)).to(x.dtype).reshape(*x.shape[:-1], layer.out_features)
    return y if layer.bias is None else y + layer.bias


def quantized_linear(
    weight: torch.Tensor, bias: torch.Tensor | None, scheme: str, keep_dense: bool = True
) -> nn.Module:
    """A linear layer for ``scheme``: an fp32 nn.Linear (the reference), Int8Linear or Int4Linear
    (int8 for the rare layer whose shape the int4 kernel cannot tile)."""
    if scheme not in SCHEMES:
        raise LerpError(f"unknown quantisation {scheme!r}; choose from: {', '.join(SCHEMES)}")
    if scheme != "fp32" and weight.device.type != "cpu":
        raise LerpError(f"{scheme} weights run on the CPU only; use fp32 on {weight.device.type}")
    if scheme == "int8":
        return Int8Linear(weight, bias, keep_dense)
    if scheme == "int4":
        fits = weight.shape[1] % GROUP == 0 and weight.shape[0] % 16 == 0  # the packed kernel's tiling
        return Int4Linear(weight, bias, keep_dense) if fits else Int8Linear(weight, bias, keep_dense)
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    lin.weight = nn.Parameter(weight.detach(), requires_grad=False)  # shares the caller's tensor: no copy
    if bias is not None:
        lin.bias = nn.Parameter(bias.detach(), requires_grad=False)
    return lin
