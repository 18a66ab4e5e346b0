"""The engine's model step: a Llama-family decoder over a flat list of tokens and a slot KV cache.

Every token of a step, whether it decodes a running row or belongs to a chunk of a prompt being
prefilled, goes through the linear layers as one row of one matrix, with its own adapter
coefficients. So a step reads the weights once for all of its tokens, and a mix per row, per
request or per token is the same computation. Only attention is split: decoding rows attend to
their slots of the cache in one call, each prefill chunk to its own slot.

Layers that share an input are fused (q, k, v; gate, up), each with its adapters stacked the way
``runtime.MixedLinear`` stacks them: y = x Wᵀ + ((x A_catᵀ) ⊙ c[seg]) B_catᵀ, so the step equals the
merged model of each token's mix. This is the exact step (fp32, or the model's dtype on a GPU);
weight-only quantised bases run the same computation on ONNX Runtime (``ortstep.py``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LerpError
from ..runtime import LoraWeights, MixedLinear, add_lora

ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")
ROPE_TYPES = ("default", "linear", "llama3", "yarn")
GROUPS = {
    "qkv": ("q_proj", "k_proj", "v_proj"),
    "o": ("o_proj",),
    "gate_up": ("gate_proj", "up_proj"),
    "down": ("down_proj",),
}
PART = {n: "self_attn" if g in ("qkv", "o") else "mlp" for g, names in GROUPS.items() for n in names}  # owner of each


def unsupported_reason(model: nn.Module, adapters: Sequence[LoraWeights]) -> str | None:
    """Why this decoder cannot run ``model`` with these adapters (None: it can)."""
    cfg = model.config
    arch = type(model).__name__
    if arch not in ARCHITECTURES:
        return f"architecture {arch} (the fast step covers {', '.join(ARCHITECTURES)})"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act}"
    rope = getattr(model.model.rotary_emb, "rope_type", "default")
    if rope not in ROPE_TYPES:
        return f"RoPE type {rope}"
    known = {f"model.layers.{i}.{part}.{name}" for i in range(cfg.num_hidden_layers) for name, part in PART.items()}
    for ad in adapters:
        other = sorted(set(ad.modules) - known)
        if other:
            return f"adapters on {other[0]}"
    return None


@dataclass
class StepPlan:
    """One step's tokens: the decoding rows first (one token each), then prefill chunks in order."""

    tokens: torch.Tensor  # (N,) long
    positions: torch.Tensor  # (N,) long
    slots: torch.Tensor  # (N,) long: the cache slot each token writes to
    coeffs: torch.Tensor | None  # (N, K) adapter coefficients per token; None = base model
    active: tuple[int, int] | None  # adapters [k0, k1) hold every non-zero coefficient; None = none
    decode_slots: list[int]  # slots of the decoding rows, in token order
    decode_len: int  # cache positions the decoding rows attend to: 1 + their largest position
    prefill: list[tuple[int, int, int]]  # (slot, start position, length) per chunk
    logit_index: torch.Tensor  # (M,) which tokens need next-token logits
    # slot -> the first cache position there that no sequence needs before it is written again (after a kept or
    # partly prefilled context); a step that runs a dummy row in a non-decoding slot writes there, attending to
    # that many positions. A slot not named: its last position, which no sequence reads
    idle: dict[int, int] = field(default_factory=dict)
    _ranks: dict = field(default_factory=dict)

    @classmethod
    def decoding(
        cls,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        slots: list[int],
        coeffs: torch.Tensor | None = None,
        logit_index: torch.Tensor | None = None,
    ) -> StepPlan:
        """Rows that decode one token each, row i in slot ``slots[i]``; logits of every row unless
        ``logit_index`` says which (and in which order)."""
        dev, n = tokens.device, len(tokens)
        return cls(
            tokens,
            positions,
            torch.tensor(slots, device=dev),
            coeffs,
            None if coeffs is None else (0, coeffs.shape[1]),
            list(slots),
            int(positions.max()) + 1,
            [],
            torch.arange(n, device=dev) if logit_index is None else logit_index.to(dev),
        )

    @classmethod
    def prefilling(
        cls,
        tokens: torch.Tensor,
        chunks: list[tuple[int, int, int]],
        coeffs: torch.Tensor | None = None,
        logit_index: torch.Tensor | None = None,
    ) -> StepPlan:
        """Prefill chunks (slot, start position, length), their tokens one after another in ``tokens``; logits of
        each chunk's last token unless ``logit_index`` says which."""
        dev = tokens.device
        lens = torch.tensor([n for _, _, n in chunks])
        if logit_index is None:
            logit_index = lens.cumsum(0) - 1
        return cls(
            tokens,
            torch.cat([torch.arange(start, start + n) for _, start, n in chunks]).to(dev),
            torch.tensor([slot for slot, _, _ in chunks]).repeat_interleave(lens).to(dev),
            coeffs,
            None if coeffs is None else (0, coeffs.shape[1]),
            [],
            0,
            list(chunks),
            logit_index.to(dev),
        )

    def per_rank(self, seg: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """c[:, seg] for a rank layout, computed once per step and shared by every layer using it."""
        out = self._ranks.get((id(seg), dtype))
        if out is None:
            out = self._ranks[(id(seg), dtype)] = self.coeffs[:, seg].to(dtype)
        return out


class FusedMixedLinear(nn.Module):
    """Base linears sharing one input, fused into one matmul, plus every adapter's LoRA on them."""

    def __init__(self, bases: Sequence[nn.Linear], loras: Sequence[Sequence[tuple] | None], segs: dict) -> None:
        super().__init__()
        w = bases[0].weight.detach() if len(bases) == 1 else torch.cat([b.weight.detach() for b in bases])
        bias = None
        if any(b.bias is not None for b in bases):
            bias = torch.cat([b.bias.detach() if b.bias is not None else w.new_zeros(b.out_features) for b in bases])
        self.base = _linear(w, bias)
        self.register_buffer("a", None, persistent=False)
        self.register_buffer("b", None, persistent=False)
        self.seg: torch.Tensor | None = None
        self.offsets: list[int] = []
        num_adapters = next((len(x) for x in loras if x is not None), 0)
        if not num_adapters:
            return
        outs = [0, *itertools.accumulate(b.out_features for b in bases)]
        a_rows, b_blocks, ranks = [], [], []
        for k in range(num_adapters):  # adapter-major: adapter k owns one contiguous run of ranks
            rank_k = 0
            for t, parts in enumerate(loras):
                if parts is None:
                    continue
                a, b, s = parts[k]
                block = w.new_zeros(w.shape[0], a.shape[0])
                block[outs[t] : outs[t + 1]] = (b.float() * s).to(w)
                a_rows.append(a.to(w))
                b_blocks.append(block)
                rank_k += a.shape[0]
            ranks.append(rank_k)
        self.register_buffer("a", torch.cat(a_rows), persistent=False)
        self.register_buffer("b", torch.cat(b_blocks, 1), persistent=False)
        self.offsets = [0, *itertools.accumulate(ranks)]
        key = tuple(ranks)
        if key not in segs:
            segs[key] = torch.repeat_interleave(torch.arange(num_adapters), torch.tensor(ranks)).to(w.device)
        self.seg = segs[key]

    def forward(self, x: torch.Tensor, plan: StepPlan) -> torch.Tensor:
        y = self.base(x)
        if self.seg is None or plan.active is None:
            return y
        return self._add_lora(y, x, plan)

    def _add_lora(self, y: torch.Tensor, x: torch.Tensor, plan: StepPlan) -> torch.Tensor:
        """The stacked adapters of the plan's active range, added in the model's dtype."""
        r0, r1 = self.offsets[plan.active[0]], self.offsets[plan.active[1]]
        return add_lora(y, x, self.a[r0:r1], plan.per_rank(self.seg, x.dtype)[:, r0:r1], self.b[:, r0:r1])


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """An nn.Linear on the given tensors (shared, not copied)."""
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    lin.weight = nn.Parameter(weight.detach(), requires_grad=False)
    if bias is not None:
        lin.bias = nn.Parameter(bias.detach(), requires_grad=False)
    return lin


class FastDecoder(nn.Module):
    """The step of a Llama-family model with stacked adapters; weights copied out of the HF model."""

    def __init__(self, model: nn.Module, adapters: Sequence[LoraWeights]) -> None:
        super().__init__()
        reason = unsupported_reason(model, adapters)
        if reason:
            raise LerpError(f"the fast decoder does not support {reason}")
        cfg = model.config
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.eps = cfg.rms_norm_eps
        self.num_layers = cfg.num_hidden_layers
        self.max_positions = getattr(cfg, "max_position_embeddings", 2048)
        inner = model.model
        self.dtype = inner.embed_tokens.weight.dtype
        self.register_buffer("embed", inner.embed_tokens.weight.detach(), persistent=False)
        segs: dict = {}
        self.layers = nn.ModuleList()
        for i, layer in enumerate(inner.layers):
            mods = {n: getattr(getattr(layer, part), n) for n, part in PART.items()}
            mods = {n: m.base if isinstance(m, MixedLinear) else m for n, m in mods.items()}  # the plain base layer
            block = nn.Module()
            for group, names in GROUPS.items():
                loras = []
                for n in names:
                    key = f"model.layers.{i}.{PART[n]}.{n}"
                    loras.append(
                        [ad.modules[key] for ad in adapters] if adapters and key in adapters[0].modules else None
                    )
                setattr(block, group, FusedMixedLinear([mods[n] for n in names], loras, segs))
            block.register_buffer("ln1", layer.input_layernorm.weight.detach(), persistent=False)
            block.register_buffer("ln2", layer.post_attention_layernorm.weight.detach(), persistent=False)
            self.layers.append(block)
        self.register_buffer("norm", inner.norm.weight.detach(), persistent=False)
        self.lm_head = _linear(model.lm_head.weight, model.lm_head.bias)
        self.vocab = model.lm_head.weight.shape[0]
        pos = torch.arange(self.max_positions, device=self.embed.device)
        with torch.no_grad():
            cos, sin = inner.rotary_emb(self.embed[:1], pos[None])
        self.register_buffer("cos", cos[0].to(self.dtype), persistent=False)
        self.register_buffer("sin", sin[0].to(self.dtype), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.embed.device

    def new_cache(self, slots: int, length: int) -> list[torch.Tensor]:
        """Per layer one (2, slots, kv_heads, length, head_dim) buffer, zeroed: masked slots stay finite."""
        if length > self.max_positions:
            raise LerpError(f"{length} positions exceed the model's {self.max_positions}")
        shape = (2, slots, self.kv_heads, length, self.head_dim)
        return [torch.zeros(shape, device=self.embed.device, dtype=self.dtype) for _ in range(self.num_layers)]

    @staticmethod
    @torch.inference_mode()
    def copy_prefix(cache: list[torch.Tensor], src: int, dst: int, n: int) -> None:
        """Slot ``src``'s first ``n`` positions into slot ``dst`` (a shared prompt start)."""
        for kv in cache:
            kv[:, dst, :, :n] = kv[:, src, :, :n]

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rot = torch.cat((-x[..., half:], x[..., :half]), -1)
        return x * cos + rot * sin

    @torch.inference_mode()
    def forward(self, plan: StepPlan, cache: list[torch.Tensor]) -> torch.Tensor:
        """Next-token logits (M, V) for ``plan.logit_index``; writes the tokens' keys and values to ``cache``."""
        n = plan.tokens.shape[0]
        d, hq, hkv = self.head_dim, self.heads, self.kv_heads
        x = F.embedding(plan.tokens, self.embed)
        cos, sin = self.cos[plan.positions][:, None], self.sin[plan.positions][:, None]
        decode = self._decode_layout(plan)
        masks = [self._prefill_mask(start, length, x.device) for _, start, length in plan.prefill]
        for block, kv in zip(self.layers, cache):
            y = F.rms_norm(x, (x.shape[-1],), block.ln1, self.eps)
            qkv = block.qkv(y, plan).view(n, hq + 2 * hkv, d)
            qk = self._rope(qkv[:, : hq + hkv], cos, sin)
            q, k, v = qk[:, :hq], qk[:, hq:], qkv[:, hq + hkv :]
            kv[0, plan.slots, :, plan.positions] = k
            kv[1, plan.slots, :, plan.positions] = v
            att = self._attend(q, kv, plan, decode, masks)
            x = x + block.o(att, plan)
            y = F.rms_norm(x, (x.shape[-1],), block.ln2, self.eps)
            gu = block.gate_up(y, plan)
            inter = gu.shape[-1] // 2
            x = x + block.down(F.silu(gu[:, :inter]) * gu[:, inter:], plan)
        x = F.rms_norm(x[plan.logit_index], (x.shape[-1],), self.norm, self.eps)
        return self.lm_head(x).float()

    def _decode_layout(self, plan: StepPlan):
        """(lo, hi, rows or None, mask, length) for the decoding rows: they attend to positions [0, length)
        of the slot range [lo, hi) as a view of the cache; rows is where in that range each decoding token
        sits (None: the range is exactly the decoding rows)."""
        if not plan.decode_slots:
            return None
        nd = len(plan.decode_slots)
        lo, hi = min(plan.decode_slots), max(plan.decode_slots) + 1
        pos = plan.positions[:nd]
        rows, length = None, plan.decode_len
        if plan.decode_slots != list(range(lo, hi)):
            rows = torch.tensor([s - lo for s in plan.decode_slots], device=pos.device)
            full = torch.zeros(hi - lo, dtype=pos.dtype, device=pos.device)
            pos = full.index_copy(0, rows, pos)  # other slots in the range attend to position 0 only
        mask = (torch.arange(length, device=pos.device)[None] <= pos[:, None])[:, None, None]
        return lo, hi, rows, mask, length

    @staticmethod
    def _prefill_mask(start: int, length: int, device) -> torch.Tensor | None:
        if start == 0:
            return None  # plain causal
        q = torch.arange(start, start + length, device=device)
        return torch.arange(start + length, device=device)[None] <= q[:, None]

    def _attend(self, q: torch.Tensor, kv: torch.Tensor, plan: StepPlan, decode, masks) -> torch.Tensor:
        """Attention output (N, heads * head_dim) in token order."""
        outs = []
        nd = len(plan.decode_slots)
        if decode is not None:
            lo, hi, rows, mask, length = decode
            qd = q[:nd]
            if rows is not None:
                qd = q.new_zeros(hi - lo, *q.shape[1:]).index_copy(0, rows, qd)
            keys, values = kv[0, lo:hi, :, :length], kv[1, lo:hi, :, :length]
            o = F.scaled_dot_product_attention(qd[:, :, None], keys, values, attn_mask=mask, enable_gqa=True)[:, :, 0]
            outs.append(o if rows is None else o[rows])
        offset = nd
        for (slot, start, length), mask in zip(plan.prefill, masks):
            qp = q[offset : offset + length].transpose(0, 1)[None]
            end = start + length
            keys, values = kv[0, slot : slot + 1, :, :end], kv[1, slot : slot + 1, :, :end]
            o = F.scaled_dot_product_attention(
                qp, keys, values, attn_mask=mask, is_causal=mask is None, enable_gqa=True
            )
            outs.append(o[0].transpose(0, 1))
            offset += length
        att = outs[0] if len(outs) == 1 else torch.cat(outs)
        return att.reshape(q.shape[0], -1)
