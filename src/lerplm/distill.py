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

from .models import ModelRef, format_prompt, load_model, load_tokenizer

BATCH = 32  # prompts per generation batch (each runs twice: base and teacher rows)


def _end_ids(tok, model) -> torch.Tensor:
    """Every token that ends an answer: the tokenizer's EOS and the generation config's."""
    ids = model.generation_config.eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    return torch.tensor(sorted({tok.eos_token_id, *ids}))


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


@torch.no_grad()
def _batch(model, tok, prompts: list[str], tokens: int, strength: float, gen: torch.Generator) -> list[str]:
    from transformers import DynamicCache

    enc = tok([format_prompt(tok, p) for p in prompts], return_tensors="pt", padding=True, add_special_tokens=False)
    b = len(prompts)
    mask = enc["attention_mask"].repeat(2, 1)
    pos = mask.cumsum(-1) - 1
    names = ["__base__"] * b + ["default"] * b  # PEFT's mixed batch: the first rows without the adapter
    end = _end_ids(tok, model)
    cache = DynamicCache()
    inp = enc["input_ids"].repeat(2, 1)
    out = torch.full((b, tokens), tok.pad_token_id)
    done = torch.zeros(b, dtype=torch.bool)
    for t in range(tokens):
        step_pos = pos[:, -inp.shape[1] :].clamp(min=0)
        logits = model(
            input_ids=inp,
            attention_mask=mask,
            position_ids=step_pos,
            cache=cache,
            use_cache=True,
            adapter_names=names,
        ).logits[:, -1]
        nxt = _top_p(guided_logprobs(logits[:b].float(), logits[b:].float(), end, strength), 0.8, 0.95, gen)
        nxt = torch.where(done, tok.pad_token_id, nxt)
        out[:, t] = nxt
        done |= torch.isin(nxt, end)
        if done.all():
            break
        inp = nxt.repeat(2)[:, None]
        mask = torch.cat([mask, mask.new_ones(2 * b, 1)], -1)
        pos = torch.cat([pos, pos[:, -1:] + 1], -1)
    texts = []
    for row in out.tolist():
        cut = next((i for i, x in enumerate(row) if x in set(end.tolist())), len(row))
        texts.append(tok.decode(row[:cut], skip_special_tokens=True).strip())
    return texts


def guided_answers(
    base: ModelRef, teacher: Path, prompts: list[str], tokens: int, strength: float, seed: int
) -> list[str]:
    """One answer per prompt sampled (temperature 0.8, top-p 0.95) from base x teacher as the module says."""
    from peft import PeftModel
    from tqdm.auto import tqdm

    tok = load_tokenizer(base)
    tok.padding_side = "left"
    model = PeftModel.from_pretrained(load_model(base, dtype=torch.float32), str(teacher)).eval()
    gen = torch.Generator().manual_seed(seed)
    out: list[str] = []
    for i in tqdm(range(0, len(prompts), BATCH), desc="guided answers", leave=False):
        out += _batch(model, tok, prompts[i : i + BATCH], tokens, strength, gen)
    return out
