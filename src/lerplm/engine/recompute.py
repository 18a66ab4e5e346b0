"""The step for architectures the fast decoder does not cover: any transformers causal LM through
the mixed runtime, with no KV cache. Each step runs the rows that need logits over their whole
history, each token under its own coefficients. Exact and general, and O(length²): the engine
uses it only where ``decoder.unsupported_reason`` names a reason."""

from __future__ import annotations

import torch
from torch import nn

from ..runtime import MixedRuntime
from .decoder import StepPlan


class RecomputeStep:
    def __init__(self, model: nn.Module, runtime: MixedRuntime) -> None:
        self.model, self.runtime = model, runtime
        self.device = next(model.parameters()).device
        self.vocab = model.get_output_embeddings().weight.shape[0]

    def new_cache(self, slots: int, length: int) -> list[list]:
        """Per slot: its token ids and each token's coefficients, by position."""
        return [[[], []] for _ in range(slots)]

    @staticmethod
    def copy_prefix(cache: list[list], src: int, dst: int, n: int) -> None:
        cache[dst] = [cache[src][0][:n], cache[src][1][:n]]

    @torch.inference_mode()
    def __call__(self, plan: StepPlan, cache: list[list]) -> torch.Tensor:
        k = self.runtime.num_adapters
        coeffs = plan.coeffs.tolist() if plan.coeffs is not None else [[0.0] * k] * len(plan.tokens)
        token_slots = plan.slots.tolist()
        for tok, slot, pos, c in zip(plan.tokens.tolist(), token_slots, plan.positions.tolist(), coeffs):
            ids, cs = cache[slot]
            del ids[pos:], cs[pos:]
            ids.append(tok)
            cs.append(c)
        slots = [token_slots[i] for i in plan.logit_index.tolist()]
        width = max(len(cache[s][0]) for s in slots)
        ids = torch.zeros(len(slots), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        per_token = torch.zeros(len(slots), width, k)
        for r, s in enumerate(slots):
            n = len(cache[s][0])
            ids[r, width - n :] = torch.tensor(cache[s][0])
            mask[r, width - n :] = 1
            per_token[r, width - n :] = torch.tensor(cache[s][1])
        with self.runtime.coefficients(per_token.to(self.device)):
            out = self.model(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=(mask.cumsum(-1) - 1).clamp(min=0).to(self.device),
            )
        return out.logits[:, -1].float()
