"""Sampling for a whole batch at once, each row with its own parameters and its own random stream.

A row's draw at step t is one uniform number u = hash(row seed, t), and the token is the first
whose cumulative probability exceeds u (inverse-CDF sampling: an exact draw from the filtered
distribution). The stream is a pure function of (seed, t), so a row's text never depends on which
rows share its batch, and no per-row generator objects or Python loops over rows are needed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

FLOOR = 3e-5  # a top-p row seeks its nucleus among its tokens at least this likely, if it has at most WIDE of them;
WIDE = 8192
TOPK_CAPS = (512, 4096)  # else (or if they hold too little) among its 512, then 4096 likeliest tokens, then all
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
    any_nucleus: bool = True  # some sampled row uses top-p alone (no top-k)
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
            any_nucleus=any(top_k[i] == 0 and top_p[i] < 1 for i in sampled),
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
        top = torch.zeros_like(u, dtype=torch.long)
        if p.any_nucleus:  # rows with top-p alone
            caps = [*(c for c in TOPK_CAPS if c < vocab), vocab]
            # on a CPU a comparison and a small sort beat a top-k search; on a GPU top-k is fast and reads nothing back
            search = _floor_draw if logits.device.type == "cpu" else _filtered_draw
            top = search(scaled, probs, p, u, caps)
        kmax = p.max_top_k if p.max_top_k >= 0 else int(p.top_k.max())
        if kmax > 0:  # rows with a top-k draw among their k best (top-p, if any, within them)
            rows = (p.top_k > 0).nonzero()[:, 0]
            if len(rows) == len(top):  # every row: no copies
                top = _filtered_draw(scaled, probs, p, u, [min(kmax, vocab)])
            else:
                top[rows] = _filtered_draw(scaled[rows], probs[rows], p.select(rows), u[rows], [min(kmax, vocab)])
        tokens = top if tokens is None else torch.where(filtered, top, tokens)
    return tokens


def _floor_draw(
    scaled: torch.Tensor, full: torch.Tensor, p: BatchParams, u: torch.Tensor, caps: list[int]
) -> torch.Tensor:
    """Top-p draw (rows without top-k) among each row's tokens of probability >= FLOOR: one comparison and one
    sort of a few thousand numbers for the whole batch, where a top-k search over the vocabulary costs ~0.2 ms a
    row on a 2-core CPU (``benchmarks/sampling.py``). A row whose candidates do not hold its nucleus (a flat
    distribution) searches by top-k on its own (``_filtered_draw`` over ``caps``)."""
    (batch, vocab), top_p = full.shape, p.top_p.double()
    probs = full.numpy()  # numpy's comparison and flatnonzero take a quarter of torch's time on one thread
    flat = np.flatnonzero(probs >= FLOOR)
    vals = torch.from_numpy(probs.reshape(-1)[flat]).double()
    flat = torch.from_numpy(flat)
    rows, cols = flat // vocab, flat % vocab
    counts = torch.bincount(rows, minlength=batch)
    short = torch.bincount(rows, vals, minlength=batch) <= top_p  # too little above the floor: a wider search
    fits = ~short & (counts <= WIDE)  # a row with more candidates than WIDE searches at once, with nothing to sort
    below = torch.where(short, counts, 0)  # a row whose candidates hold too little: its nucleus is larger
    keep = fits[rows]
    rows, cols, vals, counts = rows[keep], cols[keep], vals[keep], torch.where(fits, counts, 0)
    # by row, then most likely first, ties in vocabulary order: one stable sort (the key is exact in float64)
    order = torch.sort(rows.double() * 2 + (1 - vals), stable=True).indices
    rows, cols, vals = rows[order], cols[order], vals[order]
    width = max(int(counts.max()), 1)
    at = torch.arange(len(rows), device=full.device) - (counts.cumsum(0) - counts)[rows]
    probs = torch.zeros(batch, width, dtype=torch.float64, device=full.device)
    idx = torch.zeros(batch, width, dtype=torch.long, device=full.device)
    probs[rows, at], idx[rows, at] = vals, cols
    tokens, held = _pick(probs, idx, p, u)
    nucleus = (p.temperature > 0) & (p.top_k == 0) & (p.top_p < 1)
    redo = (nucleus & (~fits | (held <= top_p))).nonzero()[:, 0]  # which rows' nuclei reach further
    if len(redo):  # the search starts above what the candidates of a row that has too little held
        wider = [c for c in caps if c > int(below[redo].max())] or caps[-1:]
        tokens[redo] = _filtered_draw(scaled[redo], full[redo], p.select(redo), u[redo], wider)
    return tokens


def _pick(probs: torch.Tensor, idx: torch.Tensor, p: BatchParams, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's draw among its candidates ``idx`` with probabilities ``probs`` (float64, most likely first, zeros
    after the last), and the probability the candidates hold (after top-k's renormalisation)."""
    rank = torch.arange(probs.shape[1], device=probs.device)
    keep_k = torch.where(p.top_k[:, None] > 0, rank[None] < p.top_k[:, None], torch.ones_like(probs, dtype=torch.bool))
    probs = probs * keep_k
    probs = torch.where(p.top_k[:, None] > 0, probs / probs.sum(-1, keepdim=True), probs)  # renormalise top-k
    cum = probs.cumsum(-1)
    keep_p = (cum - probs) <= p.top_p.double()[:, None]  # the smallest prefix whose mass reaches top_p
    cdf = (probs * keep_p).cumsum(-1)
    pick = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).clamp(max=probs.shape[1] - 1)
    return idx.gather(1, pick)[:, 0], cum[:, -1]


def _filtered_draw(
    scaled: torch.Tensor, full: torch.Tensor, p: BatchParams, u: torch.Tensor, caps: list[int]
) -> torch.Tensor:
    """Top-k / top-p draw among the ``caps[0]`` most likely tokens (``scaled`` logits, ``full`` their
    probabilities); the rows whose nucleus those do not hold draw again among ``caps[1]``, and so on: a row
    with a flat distribution costs its own wider search, not the whole batch's."""
    cap = min(caps[0], full.shape[-1])
    idx = torch.topk(scaled, cap, dim=-1).indices  # sorted, descending (faster on logits than on probabilities)
    tokens, held = _pick(full.gather(1, idx).double(), idx, p, u)
    if cap < full.shape[-1]:
        short = (p.top_p < 1) & (held <= p.top_p.double()) & (p.top_k == 0)
        rows = short.nonzero()[:, 0]
        if len(rows):
            tokens[rows] = _filtered_draw(scaled[rows], full[rows], p.select(rows), u[rows], caps[1:])
    return tokens
