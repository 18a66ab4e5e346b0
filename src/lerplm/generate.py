"""Generation with a mix per row (or per token) through the engine (``lerplm.engine``).

Each row's random stream is seeded by ``row_seed(seed, prompt, sample_index)``, so a row's text
depends on its prompt, mix and seed, never on which other rows share its batch.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from .anchors import AnchorSet
from .engine import Engine, SamplingParams, unsupported_reason
from .engine import Sequence as EngineSequence
from .engine.ortstep import SCHEMES, fast_step
from .engine.recompute import RecomputeStep
from .errors import LerpError
from .mix import Mix, Schedule
from .models import default_device, end_ids, format_prompt, has_chat_template, load_model, load_tokenizer
from .runtime import LoraWeights, MixedRuntime

MixLike = Mix | Mapping | str
MixOrSchedule = MixLike | Schedule
SEEDING = "prompt-sample-icdf"  # recorded by sweeps: runs sampled under another seeding are not resumed into
MAX_BATCH = 64  # generate()'s rows in flight at once
# Requests whose tokens calibrate the quantised steps' prefill (ortstep.calibrate: each input channel's range)
CALIBRATION_PROMPTS = (
    "Write a short e-mail to a colleague asking to move tomorrow's meeting to Friday.",
    "Explain in a few sentences why the sky is blue.",
    "Tell me a funny story about a cat who wants to become a chef.",
    "Summarise the main causes of the French Revolution.",
    "Reply politely to a customer whose order arrived damaged.",
    "List five tips for staying focused while working from home.",
    "Describe a rainy afternoon in a small coastal town.",
    "What is the difference between weather and climate? Answer simply.",
)


def _padded(tensors: list[torch.Tensor | None], width: int) -> torch.Tensor:
    """(heads, length, dim) keys or values of rows stacked into (rows, heads, width, dim), zeros after each row's
    own length and for rows without any (None)."""
    ref = next(t for t in tensors if t is not None)
    out = ref.new_zeros((len(tensors), ref.shape[0], width, ref.shape[2]))
    for j, t in enumerate(tensors):
        if t is not None:
            out[j, :, : t.shape[1]] = t
    return out


def row_seed(seed: int, prompt: str, sample: int) -> int:
    """The random stream of one (prompt, sample). Each prompt gets an independent stream, so draws are
    not correlated across a batch's prompts; one prompt keeps its stream under every mix, so
    differences between mixes are measured with common random numbers."""
    digest = hashlib.blake2b(f"{seed}\x00{sample}\x00{prompt}".encode(), digest_size=7).digest()
    return int.from_bytes(digest, "little")


def to_mix(m: MixLike) -> Mix:
    if isinstance(m, str):
        return Mix.from_spec(m)
    return Mix.from_dict(m)


class LerpModel:
    """A base model with an anchor set attached: ``generate(prompts, mixes)`` with a mix per prompt."""

    def __init__(
        self,
        anchors: AnchorSet,
        model,
        tokenizer,
        runtime: MixedRuntime,
        adapters: Sequence[LoraWeights],
        quantize: str = "fp32",
    ) -> None:
        self.anchors = anchors
        self.model = model
        self.tokenizer = tokenizer
        self.runtime = runtime
        self.adapters = list(adapters)
        self.quantize = quantize
        self._step_model = None
        self.merged: list[float] | None = None  # the coefficients merged into the step's weights (``merge``)

    @classmethod
    def load(
        cls, path: str | Path, device: str | None = None, dtype: torch.dtype = torch.float32, quantize: str = "fp32"
    ) -> LerpModel:
        """``quantize`` ("fp32", "int8", "int4") sets the base weights of the generation step (CPU);
        likelihoods (``logits``, ``nll``) always use the exact model."""
        anchors = AnchorSet.load(path)
        model = load_model(anchors.base_model, dtype=dtype, device=device or default_device())
        tok = load_tokenizer(anchors.base_model)
        tok.padding_side = "left"
        adapters = [LoraWeights.load(d) for d in anchors.adapter_dirs()]
        if quantize not in SCHEMES:
            raise LerpError(f"unknown quantisation {quantize!r}; choose from: {', '.join(SCHEMES)}")
        if quantize != "fp32" and (model.device.type != "cpu" or unsupported_reason(model, adapters)):
            raise LerpError(f"quantize={quantize} needs the CPU and a model the fast decoder supports")
        return cls(anchors, model, tok, MixedRuntime(model, adapters), adapters, quantize)

    @property
    def step_model(self):
        """The engine's model step, built on first use (likelihoods, export and calibration never need it):
        the fast decoder (on ONNX Runtime for a quantised base), or the exact recompute step for other
        architectures."""
        if self._step_model is None:
            reason = unsupported_reason(self.model, self.adapters)
            if reason is None:
                self._step_model = fast_step(self.model, self.adapters, self.quantize, self._calibration())
            else:
                if self.quantize != "fp32":
                    raise LerpError(f"quantize={self.quantize} needs the fast decoder, which does not support {reason}")
                warnings.warn(
                    f"generation recomputes every step (slow): the fast decoder does not support {reason}", stacklevel=2
                )
                self._step_model = RecomputeStep(self.model, self.runtime)
        return self._step_model

    def merge(self, mix: MixLike, extrapolate: bool = False) -> None:
        """Build the engine's step with ``mix`` merged into its base weights (ΔW added before quantisation, as
        ``export --format merged`` writes it): the base model's speed for one fixed mix, where the mixed step
        reads every anchor at every token. Generation then takes that mix only; likelihoods stay exact."""
        if reason := self.merge_refusal():
            raise LerpError(reason)
        coeffs = to_mix(mix).coefficients(self.anchors.names, extrapolate)
        with self.runtime.merged(coeffs) as model:
            self._step_model = fast_step(model, [], self.quantize, self._calibration())
        self.merged = coeffs

    def _calibration(self) -> list[list[int]]:
        """Token ids the quantised steps calibrate their prefill on (none for fp32, which needs none)."""
        return self.prompt_ids(CALIBRATION_PROMPTS) if self.quantize != "fp32" else []

    def merge_refusal(self) -> str | None:
        """Why this model's step cannot take a merged mix, or None when it can."""
        if reason := unsupported_reason(self.model, self.adapters):
            return f"merging a mix into the step needs the fast decoder, which does not support {reason}"
        if self.quantize == "int4":
            return (
                "int4 keeps the GGUF's own 4-bit grid, which merged weights leave, and much of the model's quality with"
                " it (docs/performance.md); merge with int8 or fp32"
            )
        return None

    def engine(self, max_batch: int = 16, max_len: int | None = None, **kwargs) -> Engine:
        """A new engine over this model's step: ``max_batch`` slots of ``max_len`` positions (prompt sharing as the
        step says: not on the quantised steps, docs/performance.md)."""
        limit = getattr(self.model.config, "max_position_embeddings", 2048)
        return Engine(
            self.step_model, self.eos_ids(), max_batch=max_batch, max_len=min(max_len or limit, limit), **kwargs
        )

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
        enc = self.tokenizer(
            self.chat_prefixes(prompts, use_chat), return_tensors="pt", padding=True, add_special_tokens=not use_chat
        )
        return {k: v.to(self.device) for k, v in enc.items()}

    def prompt_ids(self, prompts: Sequence[str], chat: bool | None = None) -> list[list[int]]:
        """Token ids of each prompt (through the chat template when the model has one), unpadded."""
        use_chat = has_chat_template(self.tokenizer) if chat is None else chat
        ids = self.tokenizer(self.chat_prefixes(prompts, use_chat), add_special_tokens=not use_chat)["input_ids"]
        return [list(x) for x in ids]

    @torch.inference_mode()
    def logits(
        self, input_ids: torch.Tensor, coeffs: torch.Tensor | None, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Full-sequence logits under the given coefficients (None = base model)."""
        with self.runtime.coefficients(coeffs):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    @torch.inference_mode()
    def nll(
        self,
        prefixes: Sequence[str],
        texts: Sequence[str],
        coeffs: torch.Tensor | None,
        batch_size: int = 16,
        prefix_cache: dict | None = None,
    ) -> list[float]:
        """Mean per-token negative log-likelihood of each text given its prefix (NaN for empty texts).

        Rows are batched by length (little padding) and the output layer runs on the scored positions only:
        a sweep scores short answers under long chat prefixes, and the vocabulary projection of every prefix
        position would be most of the work. With ``prefix_cache`` (a dict the caller keeps) and the base model
        (``coeffs`` None), each prefix's keys and values are computed once and reused by later calls."""
        tok = self.tokenizer
        pre = [p or [tok.eos_token_id] for p in tok(list(prefixes), add_special_tokens=False)["input_ids"]]
        txt = tok(list(texts), add_special_tokens=False)["input_ids"]
        cached = prefix_cache is not None and coeffs is None
        if cached:  # the prefix but its last token comes from the cache; that token predicts the text's first
            self._cache_prefixes(prefix_cache, {tuple(p[:-1]) for p in pre if len(p) > 1}, batch_size)
        out = [math.nan] * len(pre)
        order = sorted(range(len(pre)), key=lambda r: len(txt[r]) + (1 if cached else len(pre[r])))
        for i in range(0, len(order), batch_size):
            rows = order[i : i + batch_size]
            if cached:
                ids, mask, scored, forward = self._rows_after_cached_prefixes(prefix_cache, rows, pre, txt)
            else:
                ids, mask, scored = self._rows([pre[r] + txt[r] for r in rows], [len(pre[r]) for r in rows])
                forward = {}
            c = None if coeffs is None else coeffs[rows]
            nll = self._next_token_nll(ids, c, mask, scored, **forward).cpu()
            counts = scored.sum(1).cpu()
            sums = torch.zeros(len(rows), dtype=nll.dtype).index_add_(0, scored.nonzero()[:, 0].cpu(), nll)
            for j, r in enumerate(rows):
                if counts[j]:
                    out[r] = (sums[j] / counts[j]).item()
        return out

    def _rows(self, seqs: list[list[int]], starts: list[int]) -> tuple:
        """Right-padded ids, mask and the positions whose next token is scored (from ``starts``)."""
        ids = torch.full((len(seqs), max(map(len, seqs))), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros_like(ids)
        scored = torch.zeros_like(ids, dtype=torch.bool)
        for j, (seq, start) in enumerate(zip(seqs, starts)):
            ids[j, : len(seq)] = torch.tensor(seq)
            mask[j, : len(seq)] = 1
            scored[j, start - 1 : len(seq) - 1] = True
        return ids.to(self.device), mask.to(self.device), scored.to(self.device)

    def _cache_prefixes(self, cache: dict, prefixes: set[tuple[int, ...]], batch_size: int) -> None:
        """The base model's keys and values of each new prefix, per layer."""
        todo = sorted((p for p in prefixes if p not in cache), key=len)
        for i in range(0, len(todo), batch_size):
            chunk = todo[i : i + batch_size]
            ids, mask, _ = self._rows([list(p) for p in chunk], [1] * len(chunk))
            kv = self.model.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=True).cache
            for j, p in enumerate(chunk):
                cache[p] = [(lay.keys[j, :, : len(p)].clone(), lay.values[j, :, : len(p)].clone()) for lay in kv.layers]

    def _rows_after_cached_prefixes(self, cache: dict, rows: list[int], pre: list, txt: list) -> tuple:
        """Each row's last prefix token and text after its cached prefix: the cached keys and values padded to
        one length (masked), positions continuing each row's own prefix."""
        from transformers import DynamicCache

        past = [cache.get(tuple(pre[r][:-1]), []) for r in rows]
        width = max(p[0][0].shape[1] if p else 0 for p in past)  # keys are (heads, length, dim)
        ids, mask, scored = self._rows([pre[r][-1:] + txt[r] for r in rows], [1] * len(rows))
        n_pre = torch.tensor([len(pre[r]) - 1 for r in rows], device=self.device)
        forward = {"position_ids": n_pre[:, None] + torch.arange(ids.shape[1], device=self.device)}
        if width:
            kv = DynamicCache(config=self.model.config)
            pad_mask = torch.arange(width, device=self.device)[None, :] < n_pre[:, None]
            layers = len(next(p for p in past if p))
            for layer in range(layers):
                k, v = (_padded([p[layer][x] if p else None for p in past], width) for x in (0, 1))
                kv.update(k, v, layer)
            mask = torch.cat([pad_mask.long(), mask], 1)
            forward["cache"] = kv
        return ids, mask, scored, forward

    def _next_token_nll(
        self, ids: torch.Tensor, coeffs: torch.Tensor | None, mask: torch.Tensor, scored: torch.Tensor, **forward
    ) -> torch.Tensor:
        """-log p(next token) at the ``scored`` positions, in row-major order."""
        targets = ids[:, 1:][scored[:, :-1]]
        with self.runtime.coefficients(coeffs):
            # models whose forward scales or caps the logits: the output layer is not one projection
            if any(getattr(self.model.config, k, None) for k in ("final_logit_softcapping", "logit_scale")):
                logits = self.model(input_ids=ids, attention_mask=mask, **forward).logits[scored].float()
            else:
                hidden = self.model.get_decoder()(input_ids=ids, attention_mask=mask, **forward).last_hidden_state
                logits = self.model.get_output_embeddings()(hidden[scored]).float()
        return torch.nn.functional.cross_entropy(logits, targets, reduction="none")

    def chat_prefixes(self, prompts: Sequence[str], chat: bool | None = None) -> list[str]:
        use_chat = has_chat_template(self.tokenizer) if chat is None else chat
        return [format_prompt(self.tokenizer, p) if use_chat else p for p in prompts]

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[str] | str,
        mixes: Sequence[MixOrSchedule | None] | MixOrSchedule | None,
        n: int = 1,
        params: SamplingParams | None = None,
        extrapolate: bool = False,
        chat: bool | None = None,
        **kwargs,
    ) -> list[list[str]]:
        """For each prompt (a string is one prompt; with its own mix or schedule; one is used for all; None is
        the base model alone), ``n`` sampled continuations."""
        params = params or SamplingParams(**kwargs)
        params.validate()
        if isinstance(prompts, str):  # one prompt, not its characters
            prompts = [prompts]
        if mixes is None or isinstance(mixes, (str, Mix, Mapping, Schedule)):
            mixes = [mixes] * len(prompts)
        if not isinstance(mixes, Sequence):
            raise LerpError(f"a mix is a mapping, a spec string or a Schedule, got {type(mixes).__name__}")
        if len(mixes) != len(prompts):
            raise LerpError(f"got {len(prompts)} prompts but {len(mixes)} mixes; give one mix per prompt")
        if n < 1:
            raise LerpError(f"n must be >= 1, got {n}")
        if not prompts:
            return []
        ids = self.prompt_ids(prompts, chat)
        seqs = [
            self.sequence(ids[i], mixes[i], params, row_seed(params.seed, p, j), extrapolate)
            for i, p in enumerate(prompts)
            for j in range(n)
        ]
        out = [self.text(s.tokens) for s in self._run(seqs)]
        return [out[i * n : (i + 1) * n] for i in range(len(prompts))]

    def sequence(
        self,
        prompt_ids: list[int],
        mix: MixOrSchedule | None,
        params: SamplingParams,
        seed: int,
        extrapolate: bool = False,
        **kwargs,
    ) -> EngineSequence:
        """An engine sequence under a mix or a schedule (validated against this anchor set); ``None``: the
        base model alone."""
        if self.merged is not None:
            self._require_merged(mix, extrapolate)
            return EngineSequence(prompt_ids, [], params, seed, **kwargs)
        if mix is None:
            return EngineSequence(prompt_ids, [0.0] * len(self.adapters), params, seed, **kwargs)
        if isinstance(mix, Schedule):
            fn = mix.coefficient_fn(self.anchors.names, extrapolate)
            return EngineSequence(
                prompt_ids, fn(0), params, seed, schedule=fn, restart_on_change=mix.interpolate == "step", **kwargs
            )
        return EngineSequence(
            prompt_ids, to_mix(mix).coefficients(self.anchors.names, extrapolate), params, seed, **kwargs
        )

    def _require_merged(self, mix: MixOrSchedule | None, extrapolate: bool) -> None:
        """Refuse what a step with a merged mix cannot run: another mix, a schedule, the base model alone."""
        fixed = isinstance(mix, (str, Mix, Mapping))
        got = to_mix(mix).coefficients(self.anchors.names, extrapolate) if fixed else None
        if got is None or not all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(got, self.merged)):
            raise LerpError("this model's step has one mix merged into its weights; it generates under that mix only")

    def _run(self, seqs: list[EngineSequence]) -> list[EngineSequence]:
        """Run sequences to completion on an engine sized for them."""
        need = max(len(s.prompt_ids) + s.params.max_new_tokens for s in seqs)
        return self.engine(max_batch=min(len(seqs), MAX_BATCH), max_len=need).run(seqs)

    def text(self, tokens: Sequence[int]) -> str:
        """Generated tokens as text, cut at the first end token."""
        eos = set(self.eos_ids())
        cut = next((i for i, t in enumerate(tokens) if t in eos), len(tokens))
        return self.tokenizer.decode(list(tokens[:cut]), skip_special_tokens=True).strip()

    def eos_ids(self) -> list[int]:
        """Token ids that end a generation: the model's generation config plus the tokenizer's EOS."""
        return end_ids(self.tokenizer, self.model)
