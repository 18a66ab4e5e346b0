"""The scheduler: continuous batching over a fixed set of cache slots.

Each sequence holds one slot of the preallocated KV cache from admission to finish; nothing is
copied when rows join or leave. A step decodes one token for every running row and, within a
token budget, prefills the next chunk of the prompts still waiting to start, so a long prompt never
stalls the rows already running. Rows carry their own adapter coefficients (changeable between
steps, or a function of the token index) and their own random stream.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
import math
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from ..errors import LerpError
from .decoder import StepPlan
from .sampling import BatchParams, add_bias, penalise, sample

EventFn = Callable[["Sequence", "int | None", "str | None"], None]
MIN_SHARED = 8  # prompt positions worth copying from another row's cache instead of computing them again


@contextlib.contextmanager
def _torch_threads(n: int | None):
    """torch's intra-op threads set to ``n`` (None: unchanged) for the block; with torch's OpenMP builds (the
    PyPI wheels) the setting is the calling thread's own, so other threads keep theirs."""
    if n is None or n == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _common(held: list[int], prompt: list[int]) -> int:
    """How many of ``prompt``'s positions ``held`` provides: their common start, short of the prompt's last
    token (it must be computed, for the logits of the first new token)."""
    if not held or held[0] != prompt[0]:
        return 0
    return len(os.path.commonprefix([held, prompt[:-1]]))


def _longest(donors: Iterable[tuple[int, list[int], int]], prompt: list[int]) -> tuple[int, int]:
    """(slot, positions) of the donor (slot, tokens, positions written) that provides most of ``prompt``."""
    return max(((slot, min(_common(held, prompt), n)) for slot, held, n in donors), key=lambda d: d[1], default=(-1, 0))


class QueueFull(Exception):
    """The waiting queue is at its bound; the HTTP layer answers 503 with Retry-After."""


@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 0
    seed: int = 0
    min_new_tokens: int = 0  # the end tokens are masked until this many tokens are written
    presence_penalty: float = 0.0  # OpenAI's: subtracted from the logit of every token the new text holds
    frequency_penalty: float = 0.0  # OpenAI's: subtracted once per time the new text holds the token
    logit_bias: dict[int, float] = field(default_factory=dict)  # token id -> added to its logit

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise LerpError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise LerpError(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise LerpError(f"top_p must lie in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise LerpError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise LerpError(f"min_new_tokens must lie in [0, max_new_tokens], got {self.min_new_tokens}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not (math.isfinite(value) and -2 <= value <= 2):
                raise LerpError(f"{name} must lie in [-2, 2], got {value}")
        for token, value in self.logit_bias.items():
            if not (isinstance(token, int) and token >= 0):
                raise LerpError(f"logit_bias keys must be token ids (integers >= 0), got {token!r}")
            if not (math.isfinite(value) and -100 <= value <= 100):
                raise LerpError(f"logit_bias values must lie in [-100, 100], got {value} for token {token}")


@dataclass(eq=False)  # identity: sequences are found by `is`
class Sequence:
    """One generation: its prompt, its mix (``coeffs``, or ``schedule(i)`` for the i-th new token),
    its sampling parameters and random stream (``seed``), and what it has produced so far."""

    prompt_ids: list[int]
    coeffs: list[float]
    params: SamplingParams
    seed: int
    schedule: Callable[[int], list[float]] | None = None
    restart_on_change: bool = False  # a mix change re-encodes the whole text so far under the new mix
    on_event: EventFn | None = None  # (seq, token, None) per token; (seq, None, reason) at the end
    logprobs: int | None = None  # None: off; k: each token's log-probability and its k most likely alternatives
    id: int = field(default_factory=itertools.count().__next__)
    tokens: list[int] = field(default_factory=list)
    token_logprobs: list[tuple[float, list[tuple[int, float]]]] = field(default_factory=list)
    mix_log: list[tuple[int, list[float]]] = field(default_factory=list)  # (token index, coeffs) at each change
    finish_reason: str | None = None
    cancelled: bool = False
    slot: int = -1
    prefilled: int = 0  # context positions in the cache
    target: int = -1  # context positions to prefill before decoding (the prompt, or prompt + tokens on a restart)

    def __post_init__(self) -> None:
        self.target = len(self.prompt_ids)

    @property
    def context(self) -> list[int]:
        return self.prompt_ids + self.tokens

    def mix_at(self, index: int) -> list[float]:
        """The coefficients that produce the ``index``-th new token (index 0: also the prompt's)."""
        return self.schedule(index) if self.schedule is not None else self.coeffs

    def coeffs_at(self, index: int) -> list[float]:
        """``mix_at(index)``, recorded in ``mix_log`` when it changes."""
        c = self.mix_at(index)
        if not self.mix_log or self.mix_log[-1][1] != c:
            self.mix_log.append((index, list(c)))
        return c

    def changes_at(self, index: int) -> bool:
        """Whether the mix for token ``index`` differs from the one before it."""
        return index > 0 and self.mix_log[-1][1] != self.mix_at(index)

    @property
    def held(self) -> int:
        """Context positions whose keys and values are in the cache: the prefill so far, then all but the
        last sampled token (it is fed at the next step)."""
        return self.prefilled if self.prefilled < self.target else max(self.target, len(self.context) - 1)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


@dataclass
class EngineStats:
    """What the scheduler did, for metrics and for the tests that prove rows shared batches."""

    steps: int = 0
    tokens: int = 0
    shared_positions: int = 0  # prompt positions copied from another row's cache instead of prefilled
    batch_sizes: collections.deque = field(default_factory=lambda: collections.deque(maxlen=100_000))
    events: collections.deque = field(default_factory=lambda: collections.deque(maxlen=100_000))  # (step, kind, id)


class Engine:
    """Continuous batching over ``max_batch`` slots of ``max_len`` positions on a model step."""

    def __init__(
        self,
        step_model,
        eos_ids: Iterable[int],
        max_batch: int = 16,
        max_len: int = 1024,
        prefill_chunk: int = 256,
        max_queue: int = 1 << 30,
        share_prompts: bool | None = None,
    ) -> None:
        self.model = step_model
        self.eos = set(eos_ids)
        self.max_batch, self.max_len, self.prefill_chunk, self.max_queue = max_batch, max_len, prefill_chunk, max_queue
        # rows of one mix copy a context start another slot holds (_share_prompt); None: as the step says
        self.share_prompts = getattr(step_model, "shares_prompts", True) if share_prompts is None else share_prompts
        self.kept: dict[int, tuple[list[float], list[int]]] = {}  # free slot -> (mix, tokens) its cache still holds
        self.cache = step_model.new_cache(max_batch, max_len)
        self.device = step_model.device
        self.free = list(range(max_batch))
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.running: list[Sequence] = []
        self.stats = EngineStats()
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.thread: threading.Thread | None = None
        self.stopped = False

    # -- submission ---------------------------------------------------------------------------
    def check(self, seq: Sequence) -> None:
        """Raise LerpError if ``seq`` can never run here."""
        if not seq.prompt_ids:
            raise LerpError("the prompt is empty")
        seq.params.validate()
        outside = [t for t in seq.params.logit_bias if not 0 <= t < self.model.vocab]
        if outside:
            vocab = self.model.vocab
            raise LerpError(f"logit_bias names token {outside[0]}; this model's token ids lie in [0, {vocab})")
        need = len(seq.prompt_ids) + seq.params.max_new_tokens
        if need > self.max_len:
            raise LerpError(
                f"prompt ({len(seq.prompt_ids)} tokens) plus max_new_tokens ({seq.params.max_new_tokens}) "
                f"is {need} positions; this engine holds {self.max_len}"
            )

    def submit(self, seq: Sequence) -> None:
        self.check(seq)
        with self.lock:
            if len(self.waiting) >= self.max_queue:
                raise QueueFull
            self.waiting.append(seq)
        self.wake.set()

    @property
    def queue_depth(self) -> int:
        return len(self.waiting)

    @property
    def batch_size(self) -> int:
        return len(self.running)

    # -- running ------------------------------------------------------------------------------
    def run(self, seqs: list[Sequence]) -> list[Sequence]:
        """Run ``seqs`` to completion on the calling thread (the engine must not be started)."""
        for s in seqs:
            self.submit(s)
        while any(not s.done for s in seqs):
            self.step()
        return list(seqs)

    def start(self) -> Engine:
        """Run ``loop`` on a new thread."""
        self.thread = threading.Thread(target=self.loop, name="lerplm-engine", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped = True
        self.wake.set()
        if self.thread is not None:
            self.thread.join(timeout=10)

    def loop(self) -> None:
        """Serve submitted sequences until ``stop``."""
        while not self.stopped:
            try:
                if not self.step():
                    self.wake.wait(0.05)
                    self.wake.clear()
            except Exception as e:  # fail the rows in flight, keep serving the next requests
                for s in list(self.running):
                    self._finish(s, f"error: {type(e).__name__}: {e}")

    def step(self) -> bool:
        """One scheduler iteration; False if there was nothing to do."""
        for s in [s for s in self.running if s.cancelled]:
            self._finish(s, "cancelled")
        self._admit()
        if not self.running:
            return False
        plan, sampled = self._plan()
        logits = self.model(plan, self.cache)
        self._sample(logits, sampled)
        self.stats.steps += 1
        self.stats.batch_sizes.append(len(sampled))
        return True

    def _admit(self) -> None:
        with self.lock:
            while self.waiting and self.free:
                s = self.waiting.popleft()
                if s.cancelled:
                    self._finish(s, "cancelled")
                    continue
                s.slot = self._slot_for(s)
                self.running.append(s)
                self.stats.events.append((self.stats.steps, "join", s.id))

    def _plan(self) -> tuple[StepPlan, list[Sequence]]:
        tokens, positions, slots, rows, coeffs = [], [], [], [], []
        for s in self.running:  # a restarting row re-encodes its prompt and tokens under the new mix
            if s.restart_on_change and s.prefilled == s.target and s.changes_at(len(s.tokens)):
                s.prefilled, s.target = 0, len(s.prompt_ids) + len(s.tokens)
        decode = [s for s in self.running if s.prefilled == s.target]
        for s in decode:
            tokens.append(s.tokens[-1])
            positions.append(len(s.prompt_ids) + len(s.tokens) - 1)
            slots.append(s.slot)
            rows.append(len(coeffs))
            coeffs.append(s.coeffs_at(len(s.tokens)))
        sampled, logit_index = list(decode), list(range(len(decode)))
        prefill, budget = [], self.prefill_chunk
        written = {s.id: s.held for s in self.running}  # cache positions in place before this step
        for s in self.running:
            if budget <= 0:
                break
            if s.prefilled == s.target:
                continue
            if not s.prefilled and not s.tokens and self._share_prompt(s, written):
                continue  # waits one step for the row that is computing its prompt's start
            n = min(s.target - s.prefilled, budget)
            start = s.prefilled
            tokens += s.context[start : start + n]
            positions += range(start, start + n)
            slots += [s.slot] * n
            rows += [len(coeffs)] * n
            coeffs.append(s.coeffs_at(len(s.tokens)))
            prefill.append((s.slot, start, n))
            s.prefilled += n
            budget -= n
            if s.prefilled == s.target:
                sampled.append(s)
                logit_index.append(len(tokens) - 1)
        # where a dummy row may write in each slot that does not decode (the quantised step runs the decoding rows'
        # slot range in one call): after what a kept or prefilling slot holds (a prefill chunk writes after the
        # decoding rows, from its start), at 0 in an empty one, so that it attends to no more than that
        decoding = {s.slot for s in decode}
        starts = {slot: start for slot, start, _ in prefill}
        idle = dict.fromkeys(self.free, 0) | {slot: len(held) for slot, (_, held) in self.kept.items()}
        idle |= {s.slot: starts.get(s.slot, s.held) for s in self.running if s.slot not in decoding}
        nonzero = [k for k in range(len(coeffs[0])) if any(c[k] != 0 for c in coeffs)]
        dev = self.device
        coeff_t = None
        if nonzero:
            coeff_t = torch.tensor(coeffs, dtype=torch.float32, device=dev)[torch.tensor(rows, device=dev)]
        plan = StepPlan(
            tokens=torch.tensor(tokens, device=dev),
            positions=torch.tensor(positions, device=dev),
            slots=torch.tensor(slots, device=dev),
            coeffs=coeff_t,
            active=(nonzero[0], nonzero[-1] + 1) if nonzero else None,
            decode_slots=[s.slot for s in decode],
            decode_len=max(positions[: len(decode)], default=-1) + 1,
            prefill=prefill,
            logit_index=torch.tensor(logit_index, dtype=torch.long, device=dev),
            idle=idle,
        )
        return plan, sampled

    def _slot_for(self, s: Sequence) -> int:
        """A free slot for ``s``: one whose cache already starts ``s``'s prompt under its mix (nothing to copy),
        else the lowest (rows kept in low slots keep the quantised step's decode range short)."""
        best, n = _longest(self._kept_donors(s.mix_at(0)), s.prompt_ids)
        if self.share_prompts and n >= MIN_SHARED:
            slot, s.prefilled = best, n
            self.stats.shared_positions += n
        else:
            slot = self.free[0]
        self.free.remove(slot)
        heapq.heapify(self.free)
        self.kept.pop(slot, None)  # the new row writes over what it does not share
        return slot

    def _kept_donors(self, mix: list[float]) -> list[tuple[int, list[int], int]]:
        """Free slots whose cache still holds a finished row's context under ``mix``: (slot, tokens, positions)."""
        return [(slot, held, len(held)) for slot, (m, held) in self.kept.items() if m == mix]

    def _share_prompt(self, s: Sequence, written: dict[int, int]) -> bool:
        """Copy the start of ``s``'s prompt from a slot that holds it under the same coefficients: a running
        row, or a finished one whose slot is not yet reused (rows of one mix share a chat template's system
        turn, a sweep's rows their prompts, a chat's next turn the conversation so far). True when ``s`` should
        rather wait a step for a running row that is computing more of it."""
        copy = getattr(self.model, "copy_prefix", None)
        if copy is None or not self.share_prompts:
            return False
        mix = s.mix_at(0)
        donors = self._kept_donors(mix)
        coming = 0
        for d in self.running:  # one mix so far: every position in its cache was written under mix_log[0]
            if d is not s and len(d.mix_log) == 1 and d.mix_log[0][1] == mix:
                donors.append((d.slot, d.context, written[d.id]))
                if written[d.id] < len(d.prompt_ids):  # its prompt is being computed
                    coming = max(coming, _common(d.prompt_ids, s.prompt_ids))
        best, ready = _longest(donors, s.prompt_ids)
        if ready >= MIN_SHARED:
            copy(self.cache, best, s.slot, ready)
            s.prefilled = ready
            self.stats.shared_positions += ready
            return False
        return coming >= MIN_SHARED

    @torch.inference_mode()
    def _sample(self, logits: torch.Tensor, rows: list[Sequence]) -> None:
        if not rows:
            return
        dev = logits.device
        p = BatchParams.from_lists(
            [s.params.temperature for s in rows],
            [s.params.top_p for s in rows],
            [s.params.top_k for s in rows],
            [s.seed for s in rows],
            [len(s.tokens) for s in rows],
            dev,
        )
        want = [i for i, s in enumerate(rows) if s.logprobs is not None]
        with _torch_threads(getattr(self.model, "sampling_threads", None)):
            logprobs = torch.log_softmax(logits.float(), -1) if want else None  # the model's own, unadjusted
            self._adjust(logits, rows)
            tokens = sample(logits, p)
        tokens = tokens.tolist()  # the step's one host synchronisation
        for i in want:
            s, lp = rows[i], logprobs[i]
            top = torch.topk(lp, s.logprobs) if s.logprobs else None
            alts = list(zip(top.indices.tolist(), top.values.tolist())) if top is not None else []
            s.token_logprobs.append((float(lp[tokens[i]]), alts))
        for s, t in zip(rows, tokens):
            s.tokens.append(t)
            self.stats.tokens += 1
            if t in self.eos:
                self._finish(s, "stop")
                continue
            if s.on_event:
                s.on_event(s, t, None)
            if len(s.tokens) >= s.params.max_new_tokens:
                self._finish(s, "length")

    def _adjust(self, logits: torch.Tensor, rows: list[Sequence]) -> None:
        """Each row's logits before its draw, in place: the end tokens held back until ``min_new_tokens``, then
        OpenAI's presence and frequency penalties over the new text and ``logit_bias``; only rows that ask pay."""
        dev = logits.device
        early = [i for i, s in enumerate(rows) if len(s.tokens) < s.params.min_new_tokens]
        if early and self.eos:
            logits[torch.tensor(early, device=dev)[:, None], torch.tensor(sorted(self.eos), device=dev)] = float("-inf")
        penalised = [
            i for i, s in enumerate(rows) if s.tokens and (s.params.presence_penalty or s.params.frequency_penalty)
        ]
        if penalised:
            ps = [rows[i].params for i in penalised]
            texts = [rows[i].tokens for i in penalised]
            penalise(logits, penalised, texts, [q.presence_penalty for q in ps], [q.frequency_penalty for q in ps])
        biased = [i for i, s in enumerate(rows) if s.params.logit_bias]
        if biased:
            add_bias(logits, biased, [rows[i].params.logit_bias for i in biased])

    def _finish(self, s: Sequence, reason: str) -> None:
        s.finish_reason = reason
        if s.slot >= 0:
            self.running.remove(s)
            # its cache stays a donor until the slot is reused (not after a failed step, which may not have written)
            if len(s.mix_log) == 1 and not reason.startswith("error"):
                self.kept[s.slot] = (s.mix_log[0][1], s.context[: s.held])
            heapq.heappush(self.free, s.slot)
            self.stats.events.append((self.stats.steps, "leave", s.id))
            s.slot = -1
        if s.on_event:
            s.on_event(s, None, reason)
