"""Sampling for a whole batch at once, each row with its own parameters and its own random stream.

A row's draw at step t is one uniform number u = hash(row seed, t), and the token is the first
whose cumulative probability exceeds u (inverse-CDF sampling: an exact draw from the filtered
distribution). The stream is a pure function of (seed, t), so a row's text never depends on which
rows share its batch, and no per-row generator objects or Python loops over rows are needed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

TOPK_CAPS = (512, 4096)  # a row looks for its nucleus among its 512, then 4096 likeliest tokens, then all
_M32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for x < 2**32, in int64 without overflow (c split into 16-bit halves)."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _M32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """murmur3's 32-bit finaliser: a bijection on 32-bit values with full avalanche."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x85EBCA6B)
    x = x ^ (x >> 13)
    x = _mul32(x, 0xC2B2AE35)
    return x ^ (x >> 16)


def uniforms(seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """One float64 in (0, 1) per row, a pure function of (seed (int64, < 2**63), step); 53 random bits."""
    s_lo, s_hi = seeds & _M32, (seeds >> 32) & _M32
    h = _mix32(s_hi ^ _mix32(s_lo ^ _mix32(steps & _M32)))
    h1 = _mix32(h ^ 0x68E31DA4)
    h2 = _mix32(h1 ^ 0xB5297A4D)
    bits = (h1 >> 6) * (1 << 27) + (h2 >> 5)  # 26 + 27 bits
    return (bits.double() + 0.5) / float(1 << 53)


@dataclass
class BatchParams:
    """Per-row sampling parameters as tensors (B,), and what the batch needs, known on the host."""

    temperature: torch.Tensor  # float; 0 = greedy
    top_p: torch.Tensor  # float in (0, 1]
    top_k: torch.Tensor  # int; 0 = off
    seeds: torch.Tensor  # int64 stream seeds
    steps: torch.Tensor  # int64: index of the token being drawn
    all_greedy: bool = False
    any_greedy: bool = True
    any_full: bool = True  # some sampled row uses the whole distribution (no top-k, no top-p)
    any_filtered: bool = True  # some sampled row uses top-k or top-p
    max_top_k: int = -1  # -1: not given, read from top_k

    def select(self, rows: torch.Tensor) -> BatchParams:
        """The parameters of ``rows`` (the batch summary is kept: it still holds for a subset)."""
        per_row = ("temperature", "top_p", "top_k", "seeds", "steps")
        return dataclasses.replace(self, **{f: getattr(self, f)[rows] for f in per_row})

    @classmethod
    def from_lists(
        cls,
        temperature: list[float],
        top_p: list[float],
        top_k: list[int],
        seeds: list[int],
        steps: list[int],
        device=None,
    ) -> BatchParams:
        """From Python lists: the batch summary is computed here, so sampling reads nothing back from the device."""
        sampled = [i for i, t in enumerate(temperature) if t > 0]
        filtered = [top_k[i] > 0 or top_p[i] < 1 for i in sampled]
        return cls(
            torch.tensor(temperature, device=device),
            torch.tensor(top_p, device=device),
            torch.tensor(top_k, device=device),
            torch.tensor(seeds, dtype=torch.long, device=device),
            torch.tensor(steps, dtype=torch.long, device=device),
            all_greedy=not sampled,
            any_greedy=len(sampled) < len(temperature),
            any_full=not all(filtered),
            any_filtered=any(filtered),
            max_top_k=max(top_k, default=0),
        )


def sample(logits: torch.Tensor, p: BatchParams) -> torch.Tensor:
    """Tokens (B,) from logits (B, V)."""
    logits = logits.float()
    if p.all_greedy:
        return logits.argmax(-1)
    tokens = _draw(logits, p)
    if p.any_greedy:
        tokens = torch.where(p.temperature <= 0, logits.argmax(-1), tokens)
    return tokens


def penalise(
    logits: torch.Tensor, rows: list[int], texts: list[list[int]], presence: list[float], frequency: list[float]
) -> None:
    """OpenAI's presence and frequency penalties, in place: row ``rows[j]`` loses ``presence[j]`` on every token
    that ``texts[j]`` (its new text so far) holds and ``frequency[j]`` per time it holds it; one scatter for all."""
    dev = logits.device
    owner = torch.tensor([j for j, text in enumerate(texts) for _ in text], device=dev)
    counts = torch.zeros(len(rows), logits.shape[-1], device=dev)
    counts.index_put_(
        (owner, torch.tensor([t for text in texts for t in text], device=dev)),
        torch.ones(len(owner), device=dev),
        accumulate=True,
    )
    pres = torch.tensor(presence, device=dev)[:, None]
    freq = torch.tensor(frequency, device=dev)[:, None]
    index = torch.tensor(rows, device=dev)
    logits[index] -= (counts * freq + (counts > 0) * pres).to(logits.dtype)


def add_bias(logits: torch.Tensor, rows: list[int], biases: list[dict[int, float]]) -> None:
    """OpenAI's ``logit_bias``, in place: row ``rows[j]`` gains ``biases[j][token]`` on each token listed."""
    dev = logits.device
    r = torch.tensor([row for row, bias in zip(rows, biases) for _ in bias], device=dev)
    t = torch.tensor([token for bias in biases for token in bias], device=dev)
    v = torch.tensor([value for bias in biases for value in bias.values()], dtype=logits.dtype, device=dev)
    logits.index_put_((r, t), v, accumulate=True)


def _draw(logits: torch.Tensor, p: BatchParams) -> torch.Tensor:
    vocab = logits.shape[-1]
    temp = torch.where(p.temperature > 0, p.temperature, torch.ones_like(p.temperature)).to(logits.dtype)
    scaled = logits / temp[:, None]
    probs = torch.softmax(scaled, -1)
    u = uniforms(p.seeds, p.steps)
    filtered = (p.top_k > 0) | (p.top_p < 1)
    tokens = None
    if p.any_full:  # rows that sample the whole distribution, in vocabulary order
        cdf = probs.double().cumsum(-1)
        tokens = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0].clamp(max=vocab - 1)
    if p.any_filtered:
        kmax = p.max_top_k if p.max_top_k >= 0 else int(p.top_k.max())
        caps = [*(c for c in TOPK_CAPS if c > kmax), vocab]
        top = _filtered_draw(scaled, probs, p, u, caps)
        tokens = top if tokens is None else torch.where(filtered, top, tokens)
    return tokens


def _filtered_draw(
    scaled: torch.Tensor, full: torch.Tensor, p: BatchParams, u: torch.Tensor, caps: list[int]
) -> torch.Tensor:
    """Top-k / top-p draw among the ``caps[0]`` most likely tokens (``scaled`` logits, ``full`` their
    probabilities); the rows whose nucleus those do not hold draw again among ``caps[1]``, and so on: a row
    with a flat distribution costs its own wider search, not the whole batch's."""
    cap = min(caps[0], full.shape[-1])
    idx = torch.topk(scaled, cap, dim=-1).indices  # sorted, descending (faster on logits than on probabilities)
    probs = full.gather(1, idx).double()
    rank = torch.arange(cap, device=probs.device)
    keep_k = torch.where(p.top_k[:, None] > 0, rank[None] < p.top_k[:, None], torch.ones_like(probs, dtype=torch.bool))
    probs = probs * keep_k
    probs = torch.where(p.top_k[:, None] > 0, probs / probs.sum(-1, keepdim=True), probs)  # renormalise top-k
    cum = probs.cumsum(-1)
    top_p = p.top_p.double()[:, None]
    keep_p = (cum - probs) <= top_p  # the smallest prefix whose mass reaches top_p
    probs = probs * keep_p
    cdf = probs.cumsum(-1)
    pick = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).clamp(max=cap - 1)
    tokens = idx.gather(1, pick)[:, 0]
    if cap < full.shape[-1]:
        short = (p.top_p < 1) & (cum[:, -1] < p.top_p.double()) & (p.top_k == 0)
        rows = short.nonzero()[:, 0]  # the one read-back a step may need: which rows' nuclei reach further
        if len(rows):
            tokens[rows] = _filtered_draw(scaled[rows], full[rows], p.select(rows), u[rows], caps[1:])
    return tokens
