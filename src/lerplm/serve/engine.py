"""The engine: one thread owns the model; requests join and leave the running batch between decode
steps (continuous batching), each row with its own mix through the mixed runtime.

The batch's KV cache is kept left-padded: a joining group is prefilled on its own, then its cache and
mask are left-padded to the batch's length (or the batch's to theirs) and concatenated; a leaving row
is dropped with an index select, and columns that only padding uses are trimmed.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import threading
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..generate import LerpModel, SamplingParams, sample_next


class QueueFull(Exception):
    """The waiting queue is at its bound; the HTTP layer answers 503 with Retry-After."""


@dataclass
class Event:
    token_id: int | None  # None on the final event
    finish_reason: str | None = None


@dataclass(eq=False)  # identity: rows are found by `is`, never by comparing tensors
class Request:
    prompt_ids: list[int]
    coeffs: torch.Tensor  # (K,)
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    id: int = field(default_factory=itertools.count().__next__)
    cancelled: bool = False
    generated: int = 0
    created: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.params.seed)

    def emit(self, event: Event) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


def _left_pad(t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    if n == 0:
        return t
    pad = [0, 0] * (t.dim() - 1 - dim) + [n, 0]
    return F.pad(t, pad)


class Engine:
    def __init__(self, lm: LerpModel, max_batch: int = 16, max_queue: int = 64, idle_sleep: float = 0.01) -> None:
        self.lm = lm
        self.max_batch, self.max_queue, self.idle_sleep = max_batch, max_queue, idle_sleep
        self.waiting: collections.deque[Request] = collections.deque()
        self.rows: list[Request] = []
        self.cache = None
        self.mask: torch.Tensor | None = None
        self.last: torch.Tensor | None = None  # (B,) the token each row feeds next
        self.eos = set(lm.eos_ids())
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.stopped = False
        self.tokens_generated = 0
        self.on_step = None  # callback(batch_size), for metrics
        self.thread = threading.Thread(target=self._run, name="lerplm-engine", daemon=True)

    def start(self) -> "Engine":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped = True
        self.wake.set()
        self.thread.join(timeout=10)

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)

    @property
    def batch_size(self) -> int:
        return len(self.rows)

    def submit(self, req: Request) -> None:
        with self.lock:
            if len(self.waiting) >= self.max_queue:
                raise QueueFull
            self.waiting.append(req)
        self.wake.set()

    # -- the loop -------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self.stopped:
            try:
                self._drop_cancelled()
                self._admit()
                if not self.rows:
                    self.wake.wait(self.idle_sleep)
                    self.wake.clear()
                    continue
                self._step()
            except Exception as e:  # fail the rows in flight, keep serving the next requests
                for r in self.rows:
                    r.emit(Event(None, f"error: {type(e).__name__}: {e}"))
                self._reset()

    def _reset(self) -> None:
        self.rows, self.cache, self.mask, self.last = [], None, None, None

    @torch.inference_mode()
    def _admit(self) -> None:
        with self.lock:
            free = self.max_batch - len(self.rows)
            new = [self.waiting.popleft() for _ in range(min(free, len(self.waiting)))]
        new = [r for r in new if not r.cancelled]
        if not new:
            return
        from transformers import DynamicCache

        width = max(len(r.prompt_ids) for r in new)
        pad = self.lm.tokenizer.pad_token_id or 0
        ids = torch.tensor([[pad] * (width - len(r.prompt_ids)) + r.prompt_ids for r in new], device=self.lm.device)
        mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in new], device=self.lm.device)
        cache = DynamicCache()
        self.lm.runtime.set_coefficients(torch.stack([r.coeffs for r in new]).to(self.lm.device))
        try:
            logits = self.lm.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                                   past_key_values=cache, use_cache=True).logits[:, -1]
        finally:
            self.lm.runtime.set_coefficients(None)
        first = self._sample(logits, new)
        self._merge(new, cache, mask, first)
        self._emit(new, first)

    @torch.inference_mode()
    def _step(self) -> None:
        mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        positions = self.mask.sum(1, keepdim=True)
        self.lm.runtime.set_coefficients(torch.stack([r.coeffs for r in self.rows]).to(self.lm.device))
        try:
            logits = self.lm.model(input_ids=self.last[:, None], attention_mask=mask, position_ids=positions,
                                   past_key_values=self.cache, use_cache=True).logits[:, -1]
        finally:
            self.lm.runtime.set_coefficients(None)
        self.mask = mask
        nxt = self._sample(logits, self.rows)
        self.last = nxt
        if self.on_step:
            self.on_step(len(self.rows))
        self._emit(list(self.rows), nxt)

    def _sample(self, logits: torch.Tensor, rows: list[Request]) -> torch.Tensor:
        return torch.cat([sample_next(logits[i : i + 1], r.params, [r.generator]) for i, r in enumerate(rows)])

    def _emit(self, rows: list[Request], tokens: torch.Tensor) -> None:
        done = []
        for r, t in zip(rows, tokens.tolist()):
            r.generated += 1
            self.tokens_generated += 1
            if t in self.eos:
                r.emit(Event(None, "stop"))
                done.append(r)
                continue
            r.emit(Event(t))
            if r.generated >= r.params.max_new_tokens:
                r.emit(Event(None, "length"))
                done.append(r)
        if done:
            self._remove(done)

    def _drop_cancelled(self) -> None:
        gone = [r for r in self.rows if r.cancelled]
        if gone:
            self._remove(gone)

    # -- KV cache surgery -------------------------------------------------------------------------
    def _merge(self, new: list[Request], cache, mask: torch.Tensor, first: torch.Tensor) -> None:
        if not self.rows:
            self.rows, self.cache, self.mask, self.last = list(new), cache, mask, first
            return
        t_old, t_new = self.mask.shape[1], mask.shape[1]
        width = max(t_old, t_new)
        for old, add in zip(self.cache.layers, cache.layers):
            old.keys = torch.cat([_left_pad(old.keys, width - t_old, 2), _left_pad(add.keys, width - t_new, 2)])
            old.values = torch.cat([_left_pad(old.values, width - t_old, 2), _left_pad(add.values, width - t_new, 2)])
        self.mask = torch.cat([_left_pad(self.mask, width - t_old, 1), _left_pad(mask, width - t_new, 1)])
        self.last = torch.cat([self.last, first])
        self.rows += new

    def _remove(self, gone: list[Request]) -> None:
        keep = [i for i, r in enumerate(self.rows) if r not in gone]
        if not keep:
            self._reset()
            return
        idx = torch.tensor(keep, device=self.mask.device)
        mask = self.mask[idx]
        start = int((mask.sum(0) > 0).nonzero()[0])  # drop columns that only padding uses
        for layer in self.cache.layers:
            layer.keys = layer.keys[idx, :, start:]
            layer.values = layer.values[idx, :, start:]
        self.mask, self.last = mask[:, start:], self.last[idx]
        self.rows = [self.rows[i] for i in keep]
