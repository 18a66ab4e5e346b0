"""Batched generation with one mix per row, through the mixed runtime and a KV cache.

Sampling uses one torch.Generator per row, seeded by ``row_seed(seed, prompt, sample_index)``, so a
row's text depends on its prompt, mix and seed, not on which other rows share its batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .anchors import AnchorSet
from .errors import LerpError
from .mix import Mix
from .models import default_device, format_prompt, has_chat_template, load_model, load_tokenizer
from .runtime import MixedRuntime

MixLike = Mix | Mapping | str
SEEDING = "prompt-sample"  # recorded by sweeps: runs sampled under another seeding are not resumed into


def row_seed(seed: int, prompt: str, sample: int) -> int:
    """The random stream of one (prompt, sample). Different prompts get independent streams: one stream
    shared by every prompt (the earlier ``seed + sample``) correlates all their draws, so a batch's mean
    score moved far more between seeds than its interval said. One prompt keeps its stream under every
    mix, so differences between mixes are measured with common random numbers."""
    digest = hashlib.blake2b(f"{seed}\x00{sample}\x00{prompt}".encode(), digest_size=7).digest()
    return int.from_bytes(digest, "little")


@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 0
    seed: int = 0

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise LerpError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise LerpError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise LerpError(f"top_p must lie in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise LerpError(f"top_k must be >= 0 (0 = off), got {self.top_k}")


def to_mix(m: MixLike) -> Mix:
    if isinstance(m, str):
        return Mix.from_spec(m)
    return Mix.from_dict(m)


def sample_next(logits: torch.Tensor, p: SamplingParams, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """Next token per row from (B, V) logits: greedy at temperature 0, else top-k/top-p sampling."""
    if p.temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / p.temperature
    if p.top_k:
        kth = torch.topk(logits, min(p.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, -1)
    if p.top_p < 1:
        sorted_p, idx = probs.sort(-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > p.top_p  # keep the smallest set reaching top_p
        sorted_p = sorted_p.masked_fill(drop, 0)
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
    probs = probs.cpu()
    return torch.stack(
        [torch.multinomial(probs[i], 1, generator=g)[0] for i, g in enumerate(generators)]
    ).to(logits.device)


class LerpModel:
    """A base model with an anchor set attached: ``generate(prompts, mixes)`` with a mix per prompt."""

    def __init__(self, anchors: AnchorSet, model, tokenizer, runtime: MixedRuntime) -> None:
        self.anchors = anchors
        self.model = model
        self.tokenizer = tokenizer
        self.runtime = runtime

    @classmethod
    def load(cls, path: str | Path, device: str | None = None, dtype: torch.dtype = torch.float32) -> "LerpModel":
        anchors = AnchorSet.load(path)
        model = load_model(anchors.base_model, dtype=dtype, device=device or default_device())
        tok = load_tokenizer(anchors.base_model)
        tok.padding_side = "left"
        runtime = MixedRuntime.from_dirs(model, anchors.adapter_dirs())
        return cls(anchors, model, tok, runtime)

    def solve_target(self, targets: Mapping[str, float], calibration: str | Path | None = None, **kwargs):
        """The mix whose calibrated predicted scores hit ``targets`` (see ``lerplm.calibrate.solve``)."""
        from .calibrate import ResponseModel, solve

        return solve(ResponseModel.load_for(self.anchors, calibration), targets, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def coefficients(self, mixes: Sequence[MixLike], extrapolate: bool = False) -> torch.Tensor:
        """(B, K) adapter coefficients, one row per mix."""
        rows = [to_mix(m).coefficients(self.anchors.names, extrapolate) for m in mixes]
        return torch.tensor(rows, dtype=torch.float32, device=self.device)

    def encode(self, prompts: Sequence[str], chat: bool | None = None) -> dict[str, torch.Tensor]:
        """Left-padded ids and mask; prompts go through the chat template when the model has one."""
        use_chat = has_chat_template(self.tokenizer) if chat is None else chat
        enc = self.tokenizer(self.chat_prefixes(prompts, use_chat), return_tensors="pt", padding=True, add_special_tokens=not use_chat)
        return {k: v.to(self.device) for k, v in enc.items()}

    @torch.inference_mode()
    def logits(self, input_ids: torch.Tensor, coeffs: torch.Tensor | None, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Full-sequence logits under the given coefficients (None = base model)."""
        self.runtime.set_coefficients(coeffs)
        try:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        finally:
            self.runtime.set_coefficients(None)

    @torch.inference_mode()
    def nll(self, prefixes: Sequence[str], texts: Sequence[str], coeffs: torch.Tensor | None, batch_size: int = 16) -> list[float]:
        """Mean per-token negative log-likelihood of each text given its prefix (NaN for empty texts)."""
        tok = self.tokenizer
        out: list[float] = []
        for i in range(0, len(texts), batch_size):
            pre = tok(list(prefixes[i : i + batch_size]), add_special_tokens=False)["input_ids"]
            txt = tok(list(texts[i : i + batch_size]), add_special_tokens=False)["input_ids"]
            seqs = [(p or [tok.eos_token_id]) + t for p, t in zip(pre, txt)]
            width = max(map(len, seqs))
            ids = torch.full((len(seqs), width), tok.pad_token_id or 0, dtype=torch.long)
            mask = torch.zeros_like(ids)
            target = torch.zeros_like(ids, dtype=torch.bool)  # positions whose token is scored
            for r, (p, t) in enumerate(zip(pre, txt)):
                n_pre = max(len(p), 1)
                ids[r, : n_pre + len(t)] = torch.tensor(seqs[r])
                mask[r, : n_pre + len(t)] = 1
                target[r, n_pre : n_pre + len(t)] = True
            c = None if coeffs is None else coeffs[i : i + batch_size]
            logits = self.logits(ids.to(self.device), c, mask.to(self.device)).float()
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].transpose(1, 2), ids[:, 1:].to(self.device), reduction="none"
            ).cpu()
            tgt = target[:, 1:].float()
            per_row = (nll * tgt).sum(1) / tgt.sum(1)
            out += per_row.tolist()
        return out

    def chat_prefixes(self, prompts: Sequence[str], chat: bool | None = None) -> list[str]:
        use_chat = has_chat_template(self.tokenizer) if chat is None else chat
        return [format_prompt(self.tokenizer, p) if use_chat else p for p in prompts]

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[str],
        mixes: Sequence[MixLike] | MixLike,
        n: int = 1,
        params: SamplingParams | None = None,
        extrapolate: bool = False,
        chat: bool | None = None,
        **kwargs,
    ) -> list[list[str]]:
        """For each prompt (with its own mix; one mix is used for all), ``n`` sampled continuations."""
        params = params or SamplingParams(**kwargs)
        params.validate()
        if isinstance(mixes, (str, Mix, Mapping)):
            mixes = [mixes] * len(prompts)
        if len(mixes) != len(prompts):
            raise LerpError(f"got {len(prompts)} prompts but {len(mixes)} mixes; give one mix per prompt")
        if n < 1:
            raise LerpError(f"n must be >= 1, got {n}")
        coeffs = self.coefficients(mixes, extrapolate).repeat_interleave(n, 0)
        rows = [p for p in prompts for _ in range(n)]
        seeds = [row_seed(params.seed, p, j) for p in prompts for j in range(n)]
        out = self._decode(self.encode(rows, chat), coeffs, params, seeds)
        return [out[i * n : (i + 1) * n] for i in range(len(prompts))]

    def _decode(self, enc: dict, coeffs: torch.Tensor, p: SamplingParams, seeds: list[int]) -> list[str]:
        from transformers import DynamicCache

        ids, mask = enc["input_ids"], enc["attention_mask"]
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        eos = self.eos_ids()
        cache = DynamicCache()
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        new_tokens: list[torch.Tensor] = []
        step_ids, positions = ids, (mask.cumsum(-1) - 1).clamp(min=0)
        self.runtime.set_coefficients(coeffs)
        try:
            for _ in range(p.max_new_tokens):
                out = self.model(
                    input_ids=step_ids, attention_mask=mask, position_ids=positions,
                    past_key_values=cache, use_cache=True,
                )
                nxt = sample_next(out.logits[:, -1, :], p, gens)
                nxt = torch.where(done, torch.full_like(nxt, eos[0]), nxt)
                new_tokens.append(nxt)
                done |= torch.isin(nxt, torch.tensor(eos, device=nxt.device))
                if done.all():
                    break
                step_ids = nxt[:, None]
                positions = positions[:, -1:] + 1
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        finally:
            self.runtime.set_coefficients(None)
        tokens = torch.stack(new_tokens, 1).tolist()
        texts = []
        for row in tokens:
            cut = next((i for i, t in enumerate(row) if t in eos), len(row))
            texts.append(self.tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
        return texts

    def eos_ids(self) -> list[int]:
        """Token ids that end a generation: the model's generation config plus the tokenizer's EOS."""
        ids = self.model.generation_config.eos_token_id
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        return ids
