"""The mixed runtime: K LoRA adapters stacked into one rank-R (R = Σ r_k) adapter per layer.

For a target linear layer with base weight W and adapters (A_k, B_k, s_k), the output for a row
whose mix gives coefficients c is

    y = x W^T + ((x A_cat^T) * c[seg]) B_cat^T,   A_cat = [A_1; ...; A_K],  B_cat = [s_1 B_1, ..., s_K B_K]

where ``seg`` maps each of the R ranks to its adapter. This equals the model whose weights were
merged with ΔW = Σ_k c_k s_k B_k A_k, yet a new mix copies no weights: coefficients are data that
travel with the rows (shape (B, K)) or with the tokens (shape (B, T, K)).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import LerpError

PEFT_PREFIX = "base_model.model."  # PEFT's prefix of adapter weight names


@dataclass
class LoraWeights:
    """One adapter as plain tensors: module name -> (A (r, in), B (out, r), scaling)."""

    modules: dict[str, tuple[torch.Tensor, torch.Tensor, float]]

    @classmethod
    def load(cls, path: str | Path) -> LoraWeights:
        from peft import LoraConfig
        from peft.utils.other import get_pattern_key
        from safetensors.torch import load_file

        path = Path(path)
        cfg = LoraConfig.from_pretrained(str(path))
        unsupported = [
            name
            for name, on in [
                ("DoRA", cfg.use_dora),
                ("fan_in_fan_out", cfg.fan_in_fan_out),
                ("modules_to_save", bool(cfg.modules_to_save)),
                ("lora bias", getattr(cfg, "lora_bias", False)),
            ]
            if on
        ]
        if unsupported:
            raise LerpError(f"adapter {path} uses {', '.join(unsupported)}, which lerplm cannot mix exactly")
        if (path / "adapter_model.safetensors").is_file():
            state = load_file(str(path / "adapter_model.safetensors"))
        elif (path / "adapter_model.bin").is_file():
            state = torch.load(path / "adapter_model.bin", map_location="cpu", weights_only=True)
        else:
            raise LerpError(f"adapter {path} has no adapter_model.safetensors")
        modules = {}
        for key, a in state.items():
            if not key.endswith(".lora_A.weight"):
                continue
            name = key[: -len(".lora_A.weight")]
            name = name[len(PEFT_PREFIX) :] if name.startswith(PEFT_PREFIX) else name
            b = state[key.replace(".lora_A.", ".lora_B.")]
            r = a.shape[0]
            alpha = cfg.alpha_pattern.get(get_pattern_key(cfg.alpha_pattern.keys(), name), cfg.lora_alpha)
            scaling = alpha / (r**0.5 if cfg.use_rslora else r)
            modules[name] = (a.float(), b.float(), float(scaling))
        if not modules:
            raise LerpError(f"adapter {path} holds no LoRA A/B weights")
        return cls(modules)


class MixState:
    """The coefficients of the current forward pass, shared by every mixed layer of a model.

    Two exact shortcuts are decided here once per mix change, not per layer: adapters whose
    coefficient is zero in every row are skipped (most mixes name one or two attributes), and in
    grouped mode (training, one adapter per block of rows) each block runs only its own adapter."""

    def __init__(self, num_adapters: int) -> None:
        self.num_adapters = num_adapters
        self.coeffs: torch.Tensor | None = None
        self.blocks: list[tuple[int, int]] | None = None  # runs of active adapters [k0, k1); None = all
        self.group_scale: torch.Tensor | None = None  # (K,): row block k uses adapter k only
        self._expanded: dict[int, torch.Tensor] = {}

    def set(self, coeffs: torch.Tensor | None) -> None:
        """Coefficients of shape (B, K) (one mix per row) or (B, T, K) (one per token); None = base model."""
        if coeffs is not None and coeffs.shape[-1] != self.num_adapters:
            raise ValueError(f"expected {self.num_adapters} coefficients per row, got {coeffs.shape[-1]}")
        self.coeffs, self.group_scale, self.blocks = coeffs, None, None
        self._expanded = {}
        if coeffs is not None:
            active = coeffs.reshape(-1, self.num_adapters).ne(0).any(0).tolist()  # one host sync per mix change
            if not all(active):
                self.blocks = list(_runs(active))

    def set_groups(self, scale: torch.Tensor) -> None:
        """Grouped mode: the batch is K equal blocks of rows, block k under adapter k times scale[k]."""
        if scale.shape != (self.num_adapters,):
            raise ValueError(f"expected {self.num_adapters} group scales, got shape {tuple(scale.shape)}")
        self.set(None)
        self.group_scale = scale

    def per_rank(self, seg: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
        """c[..., seg] as (B, 1 or T, R), computed once per forward for each distinct rank layout."""
        if self.coeffs is None:
            return None
        out = self._expanded.get(id(seg))
        if out is None:
            c = self.coeffs.to(device=seg.device, dtype=dtype)
            out = c[..., seg]
            if out.dim() == 2:
                out = out[:, None, :]
            self._expanded[id(seg)] = out
        return out


def _runs(flags: list[bool]) -> Iterator[tuple[int, int]]:
    """Maximal runs of True as half-open index ranges."""
    start = None
    for i, f in enumerate([*flags, False]):
        if f and start is None:
            start = i
        elif not f and start is not None:
            yield start, i
            start = None


def add_lora(y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, c: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """y + ((x Aᵀ) ⊙ c) Bᵀ; without autograd, in place with the add fused into the GEMM (fewer passes)."""
    if torch.is_grad_enabled():
        return y + F.linear(F.linear(x, a) * c, b)
    h = F.linear(x, a).mul_(c)
    y.view(-1, y.shape[-1]).addmm_(h.view(-1, h.shape[-1]), b.t())
    return y


class MixedLinear(nn.Module):
    """A frozen base linear layer plus the stacked adapters, scaled per row/token by MixState."""

    def __init__(
        self,
        base: nn.Linear,
        a_cat: torch.Tensor,
        b_cat: torch.Tensor,
        seg: torch.Tensor,
        state: MixState,
        ranks: Sequence[int],
    ):
        super().__init__()
        self.base = base
        self.register_buffer("a_cat", a_cat, persistent=False)
        self.register_buffer("b_cat", b_cat, persistent=False)
        self.register_buffer("seg", seg, persistent=False)
        self.state = state
        self.offsets = [0, *itertools.accumulate(ranks)]  # adapter k owns ranks offsets[k]:offsets[k+1]
        self.dropout = 0.0  # LoRA dropout on the adapter input, grouped (training) mode only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.state.group_scale is not None:
            return y + self._grouped(x).reshape(y.shape)
        c = self.state.per_rank(self.seg, x.dtype)
        if c is None:
            return y
        blocks = [(0, self.state.num_adapters)] if self.state.blocks is None else self.state.blocks
        for k0, k1 in blocks:  # only adapters with a non-zero coefficient somewhere in the batch
            r = slice(self.offsets[k0], self.offsets[k1])
            y = add_lora(y, x, self.a_cat[r], c[..., r], self.b_cat[:, r])
        return y

    def _grouped(self, x: torch.Tensor) -> torch.Tensor:
        """Block k of the rows through adapter k alone: two batched products (the punica 'sgmv' shape)."""
        k = self.state.num_adapters
        r = self.a_cat.shape[0] // k
        if r * k != self.a_cat.shape[0] or x.shape[0] % k:
            raise ValueError("grouped mode needs equal adapter ranks and a batch of K equal row blocks")
        xg = F.dropout(x.reshape(k, -1, x.shape[-1]), self.dropout, self.training)
        h = torch.bmm(xg, self.a_cat.view(k, r, -1).transpose(1, 2)) * self.state.group_scale.to(x.dtype).view(k, 1, 1)
        return torch.bmm(h, self.b_cat.view(-1, k, r).permute(1, 2, 0))

    def delta_weight(self, coeffs: torch.Tensor) -> torch.Tensor:
        """ΔW = B_cat diag(c[seg]) A_cat for one mix (K,), in fp32: the exact merged update."""
        c = coeffs.to(self.seg.device, torch.float32)[self.seg]
        return (self.b_cat.float() * c) @ self.a_cat.float()


class MixedRuntime:
    """Stacked anchors attached to a model. ``set_coefficients`` is the only per-mix operation."""

    def __init__(self, model: nn.Module, adapters: Sequence[LoraWeights]) -> None:
        self.model = model
        self.state = MixState(len(adapters))
        self.layers: dict[str, MixedLinear] = {}
        self.ranks: dict[str, list[int]] = {}
        names = set(adapters[0].modules)
        for i, ad in enumerate(adapters[1:], 1):
            if set(ad.modules) != names:
                diff = sorted(set(ad.modules) ^ names)[:3]
                raise LerpError(f"adapters 0 and {i} target different modules (e.g. {diff}); all anchors must match")
        segs: dict[tuple[int, ...], torch.Tensor] = {}
        for name in sorted(names):
            parent_name, _, child = name.rpartition(".")
            try:
                parent = model.get_submodule(parent_name)
                base = getattr(parent, child)
            except AttributeError:
                raise LerpError(f"the base model has no module {name!r} that the adapters target") from None
            if not isinstance(base, nn.Linear):
                raise LerpError(f"module {name!r} is {type(base).__name__}; only nn.Linear layers can be mixed")
            w = base.weight
            parts = [ad.modules[name] for ad in adapters]
            ranks = tuple(a.shape[0] for a, _, _ in parts)
            if any(a.shape[1] != w.shape[1] or b.shape[0] != w.shape[0] for a, b, _ in parts):
                raise LerpError(f"adapter shapes for {name!r} do not fit the base model (wrong base model?)")
            a_cat = torch.cat([a for a, _, _ in parts]).to(w.device, w.dtype)
            b_cat = torch.cat([b * s for _, b, s in parts], dim=1).to(w.device, w.dtype)
            if ranks not in segs:
                segs[ranks] = torch.repeat_interleave(torch.arange(len(ranks)), torch.tensor(ranks)).to(w.device)
            layer = MixedLinear(base, a_cat, b_cat, segs[ranks], self.state, ranks)
            self.layers[name] = layer
            self.ranks[name] = list(ranks)
        self._swap(True)

    @classmethod
    def from_dirs(cls, model: nn.Module, dirs: Sequence[str | Path]) -> MixedRuntime:
        return cls(model, [LoraWeights.load(d) for d in dirs])

    @property
    def num_adapters(self) -> int:
        return self.state.num_adapters

    def set_coefficients(self, coeffs: torch.Tensor | Sequence | None) -> None:
        if coeffs is not None and not torch.is_tensor(coeffs):
            coeffs = torch.tensor(coeffs, dtype=torch.float32)
        self.state.set(coeffs)

    @contextmanager
    def coefficients(self, coeffs: torch.Tensor | Sequence | None) -> Iterator[None]:
        """``set_coefficients`` for the block, the base model again after it (also when it raises)."""
        self.set_coefficients(coeffs)
        try:
            yield
        finally:
            self.set_coefficients(None)

    def delta_weights(self, coeffs: torch.Tensor | Sequence[float]) -> dict[str, torch.Tensor]:
        coeffs = torch.as_tensor(coeffs, dtype=torch.float32)
        return {name: layer.delta_weight(coeffs) for name, layer in self.layers.items()}

    def trainable(self, dropout: float = 0.0) -> list[nn.Parameter]:
        """Turn every layer's stacked A and B into trainable parameters (training all anchors at once)."""
        params = []
        for layer in self.layers.values():
            for key in ("a_cat", "b_cat"):
                p = nn.Parameter(layer._buffers.pop(key).float())
                layer.register_parameter(key, p)
                params.append(p)
            layer.dropout = dropout
        return params

    @torch.no_grad()
    def clip_per_adapter(self, max_norm: float) -> None:
        """Scale each adapter's gradients to a global norm of at most ``max_norm``, as if trained alone."""
        layers = list(self.layers.values())
        sq = torch.zeros(self.num_adapters, dtype=torch.float64, device=layers[0].seg.device)
        for layer in layers:
            for g, dim in ((layer.a_cat.grad, 1), (layer.b_cat.grad, 0)):
                if g is not None:
                    sq.index_add_(0, layer.seg, g.double().pow(2).sum(dim))
        factor = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0).float()
        for layer in layers:
            f = factor[layer.seg]
            if layer.a_cat.grad is not None:
                layer.a_cat.grad.mul_(f[:, None])
            if layer.b_cat.grad is not None:
                layer.b_cat.grad.mul_(f[None, :])

    def export_adapters(self, scaling: float) -> list[LoraWeights]:
        """The stacked weights split back into one adapter each, as (A, B, ``scaling``): the scaling that
        the stored B is to be used with (1 for a runtime loaded from adapters, whose b_cat holds s·B)."""
        out = []
        for k in range(self.num_adapters):
            modules = {}
            for name, layer in self.layers.items():
                r = slice(layer.offsets[k], layer.offsets[k + 1])
                modules[name] = (
                    layer.a_cat[r].detach().float().cpu().clone(),
                    layer.b_cat[:, r].detach().float().cpu().clone(),
                    scaling,
                )
            out.append(LoraWeights(modules))
        return out

    def detach(self) -> nn.Module:
        """Put the original linear layers back for good; the model is the plain base model again."""
        self._swap(False)
        return self.model

    def _swap(self, attached: bool) -> None:
        for name, layer in self.layers.items():
            parent_name, _, child = name.rpartition(".")
            setattr(self.model.get_submodule(parent_name), child, layer if attached else layer.base)

    @contextmanager
    def merged(self, coeffs: torch.Tensor | Sequence[float]) -> Iterator[nn.Module]:
        """The plain base model with ΔW(coeffs) in its adapted weights for the block: new tensors swapped in,
        so what is built from them inside keeps the merged weights, and the base's own come back untouched."""
        deltas = self.delta_weights(coeffs)
        with self.detached() as model, torch.no_grad():
            linears = {name: model.get_submodule(name) for name in deltas}
            originals = {name: lin.weight for name, lin in linears.items()}
            try:
                for name, lin in linears.items():
                    w = lin.weight
                    lin.weight = nn.Parameter((w.float() + deltas[name]).to(w.dtype), requires_grad=False)
                yield model
            finally:
                for name, lin in linears.items():
                    lin.weight = originals[name]

    @contextmanager
    def detached(self) -> Iterator[nn.Module]:
        """The plain base model (original linear layers back in place) for the duration of the block."""
        self._swap(False)
        try:
            yield self.model
        finally:
            self._swap(True)
