"""Styled answers to instructions, for anchors that keep the base model's answers while they move the style.

An anchor trained on a style corpus (the *teacher*) writes in its style, but one-line corpus texts also teach it
to stop after one line, and texts that answer no instruction teach it to ignore the task. Sampling from the
product of the base model and the teacher, p_base^(1-s) * p_teacher^s (``s`` the strength) over every token but
the end of the answer, with the end-of-answer probability of the base model alone, gives answers as long as the
base model's, to the instruction, in the teacher's style; the anchor is then trained on those answers.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .models import ModelRef, default_device, end_ids, format_prompt, load_model, load_tokenizer

BATCH = 32  # prompts per generation batch (each runs twice: base and teacher rows)


def guided_logprobs(base: torch.Tensor, teacher: torch.Tensor, end: torch.Tensor, strength: float) -> torch.Tensor:
    """Log-probabilities of the next token: the strength-weighted product of the two models' distributions over
    all tokens but ``end``, which keep the base model's probability of ending the answer."""
    lb, lt = base.log_softmax(-1), teacher.log_softmax(-1)
    prod = lb + strength * (lt - lb)
    prod[:, end] = -torch.inf
    p_end = lb[:, end].exp().sum(-1, keepdim=True).clamp(max=1 - 1e-6)
    out = prod.log_softmax(-1) + torch.log1p(-p_end)
    out[:, end] = lb[:, end]
    return out


def _top_p(logp: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator) -> torch.Tensor:
    probs = (logp / temperature).softmax(-1)
    sorted_p, order = probs.sort(-1, descending=True)
    sorted_p = sorted_p * (sorted_p.cumsum(-1) - sorted_p < top_p)  # the nucleus; the top token always stays
    return order.gather(-1, torch.multinomial(sorted_p, 1, generator=gen)).squeeze(-1)


def teacher_step(base: ModelRef, teacher: Path):
    """The engine's model step over the base model with the teacher as its one adapter: the fast decoder, or the
    exact recompute step for architectures it does not support."""
    from .engine import FastDecoder, unsupported_reason
    from .engine.recompute import RecomputeStep
    from .runtime import LoraWeights, MixedRuntime

    model = load_model(base, dtype=torch.float32, device=default_device())
    adapters = [LoraWeights.load(teacher)]
    if unsupported_reason(model, adapters) is None:
        return FastDecoder(model, adapters), model
    return RecomputeStep(model, MixedRuntime(model, adapters)), model


@torch.inference_mode()
def _batch(
    step, tok, prompts: list[str], tokens: int, strength: float, gen: torch.Generator, end
) -> list[tuple[str, bool]]:
    """Guided answers to ``prompts`` and whether each ended before ``tokens``: rows 0..b-1 run the base model
    (teacher coefficient 0), rows b..2b-1 the teacher (coefficient 1), every prompt in both, in one cache of the
    engine's step. Sampling stays on the CPU with ``gen``, so the answers do not depend on the device the step
    runs on."""
    from .engine import StepPlan

    dev = step.device

    ids = [tok(format_prompt(tok, p), add_special_tokens=False)["input_ids"] for p in prompts]
    b = len(ids)
    lens = torch.tensor([len(r) for r in ids + ids])
    coeffs = torch.tensor([0.0] * b + [1.0] * b, device=dev)[:, None]
    cache = step.new_cache(2 * b, int(lens.max()) + tokens)
    plan = StepPlan.prefilling(  # every prompt as one prefill chunk; logits of each prompt's last token
        torch.tensor([t for r in ids + ids for t in r], device=dev),
        [(j, 0, n) for j, n in enumerate(lens.tolist())],
        coeffs.repeat_interleave(lens.to(dev), 0),
    )
    out = torch.full((b, tokens), tok.pad_token_id)
    done = torch.zeros(b, dtype=torch.bool)
    for t in range(tokens):
        logits = step(plan, cache).cpu()
        nxt = _top_p(guided_logprobs(logits[:b].float(), logits[b:].float(), end, strength), 0.8, 0.95, gen)
        nxt = torch.where(done, tok.pad_token_id, nxt)
        out[:, t] = nxt
        done |= torch.isin(nxt, end)
        if done.all():
            break
        positions = lens + t  # the token just sampled goes in after the prompt and the t tokens before it
        plan = StepPlan.decoding(nxt.repeat(2).to(dev), positions.to(dev), list(range(2 * b)), coeffs)
    answers, stop = [], set(end.tolist())
    for row in out.tolist():
        cut = next((i for i, x in enumerate(row) if x in stop), None)
        answers.append((tok.decode(row[:cut], skip_special_tokens=True).strip(), cut is not None))
    return answers


def guided_answers(
    base: ModelRef, teacher: Path, prompts: list[str], tokens: int, strength: float, seed: int
) -> tuple[list[str], list[bool]]:
    """One answer per prompt sampled (temperature 0.8, top-p 0.95) from base x teacher as the module says, and
    whether each ended on its own (False: cut at ``tokens``)."""
    from tqdm.auto import tqdm

    tok = load_tokenizer(base)
    step, model = teacher_step(base, teacher)
    end = torch.tensor(sorted(end_ids(tok, model)))
    gen = torch.Generator().manual_seed(seed)
    out: list[tuple[str, bool]] = []
    for i in tqdm(range(0, len(prompts), BATCH), desc="guided answers", leave=False):
        out += _batch(step, tok, prompts[i : i + BATCH], tokens, strength, gen, end)
    return [t for t, _ in out], [e for _, e in out]
