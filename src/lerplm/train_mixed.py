"""All anchors in one run: every batch carries a block of rows per anchor, and each block's loss
updates only its own adapter.

The K fresh adapters are stacked in the mixed runtime (grouped mode: block k of the rows goes
through adapter k alone), so one forward and backward of the frozen base serves every anchor. The
update is K independent LoRA trainings: the loss is the sum of per-anchor mean losses (each
adapter's gradient is what its own run would get), AdamW is elementwise, and gradient clipping is
done per adapter. What differs from the sequential path: every anchor takes the same number of
steps (the largest any anchor needs; smaller datasets are cycled), and there are no mid-run
checkpoints (an interrupted run starts again; anchors already finished are kept).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import StylesConfig
from .data import IGNORE, Block
from .errors import LerpError
from .runtime import PEFT_PREFIX, LoraWeights, MixedRuntime


def fresh_adapters(model: nn.Module, cfg: StylesConfig, k: int, seed: int) -> list[LoraWeights]:
    """K adapters initialised as PEFT does (A Kaiming-uniform, B zero), scaling 1: the LoRA scaling
    travels as the group scale, so B trains in PEFT's parametrisation."""
    lora = cfg.lora
    names = [
        n
        for n, m in model.named_modules()  # PEFT's rule for a list of targets: the name or a dotted suffix
        if isinstance(m, nn.Linear) and any(n == t or n.endswith("." + t) for t in lora.target_modules)
    ]
    if not names:
        raise LerpError(f"the base model has no linear layer named {lora.target_modules}")
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(k):
        modules = {}
        for n in names:
            w = model.get_submodule(n).weight
            a = torch.empty(lora.r, w.shape[1])
            bound = 1 / math.sqrt(w.shape[1])  # kaiming_uniform_(a=sqrt(5)) as nn.Linear and PEFT use
            a.uniform_(-bound, bound, generator=gen)
            modules[n] = (a, torch.zeros(w.shape[0], lora.r), 1.0)
        out.append(LoraWeights(modules))
    return out


LOSS_CHUNK_TOKENS = 2048  # logits held at once: 2048 x vocab floats (0.4 GB on the embedded model's 49k vocabulary)


def head_is_plain(model: nn.Module, ids: torch.Tensor) -> bool:
    """Whether the model's logits are its output embedding applied to its decoder's last hidden
    state (no soft-capping or logit scaling), checked on ``ids``: only then may the loss skip the
    full logits."""
    head, decoder = model.get_output_embeddings(), model.get_decoder()
    if head is None or decoder is None:
        return False
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        return logits.shape[-1] == head.out_features and torch.allclose(
            head(decoder(input_ids=ids).last_hidden_state), logits, atol=1e-4, rtol=1e-4
        )


def token_losses(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor, chunked: bool) -> torch.Tensor:
    """Cross entropy of every next-token prediction (rows x (T-1)); ``labels`` already shifted.

    Chunked, the output embedding and the loss run on LOSS_CHUNK_TOKENS positions at a time under
    activation checkpointing (recomputed in backward), so the logits of all K·b rows never exist at
    once; without it they do (K·b·T·vocab floats: 2 GB for ten anchors on the embedded model)."""
    if not chunked:
        logits = model(input_ids=ids).logits[:, :-1]
        return F.cross_entropy(
            logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE, reduction="none"
        ).view(labels.shape)
    head = model.get_output_embeddings()
    hidden = model.get_decoder()(input_ids=ids).last_hidden_state[:, :-1].flatten(0, 1)
    y = labels.flatten()

    def part(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(head(h).float(), t, ignore_index=IGNORE, reduction="none")

    parts = [
        checkpoint(part, hidden[i : i + LOSS_CHUNK_TOKENS], y[i : i + LOSS_CHUNK_TOKENS], use_reentrant=False)
        for i in range(0, len(y), LOSS_CHUNK_TOKENS)
    ]
    return torch.cat(parts).view(labels.shape)


def set_activation_checkpointing(model: nn.Module, on: bool) -> None:
    """transformers' activation checkpointing of the decoder layers, under its new name (5.x) or its old
    one. Non-reentrant: the frozen base's inputs need no grad, and the recompute replays dropout's RNG."""
    if not model.supports_gradient_checkpointing:
        raise LerpError(f"{type(model).__name__} does not support activation checkpointing")
    new = hasattr(model, "activation_checkpointing_enable")
    if on and new:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        (model.activation_checkpointing_disable if new else model.gradient_checkpointing_disable)()


def _cycle(blocks: Sequence[Block], batch: int, seed: int):
    """Endless shuffled batches of one anchor's blocks (reshuffled every epoch)."""
    rng = random.Random(seed)
    order: list[int] = []
    while True:
        take = []
        while len(take) < batch:
            if not order:
                order = list(range(len(blocks)))
                rng.shuffle(order)
            take.append(blocks[order.pop()])
        yield take


def train_mixed(
    model: nn.Module,
    blocks: Sequence[Sequence[Block]],
    cfg: StylesConfig,
    steps: int | None = None,
    progress: bool = True,
    on_log: Callable[[dict], None] | None = None,
    chunked_loss: bool = True,
    activation_checkpointing: bool = False,
) -> tuple[list[LoraWeights], list[dict]]:
    """Train len(blocks) adapters together on ``model`` (frozen); return them and the loss log.
    ``chunked_loss`` skips the full logits where the model's head allows it (see token_losses);
    ``activation_checkpointing`` keeps only each decoder layer's input and recomputes the layer in
    backward (transformers' own mechanism), trading one more forward for the activations of K·b rows."""
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    t = cfg.training
    k = len(blocks)
    per_step = t.batch_size * t.gradient_accumulation
    if steps is None:
        steps = t.max_steps or max(math.ceil(t.epochs * len(b) / per_step) for b in blocks)
    device = next(model.parameters()).device
    for p in model.parameters():
        p.requires_grad_(False)
    chunked = chunked_loss and head_is_plain(model, torch.tensor([blocks[0][0].ids], device=device))
    runtime = MixedRuntime(model, fresh_adapters(model, cfg, k, t.seed))
    params = runtime.trainable(cfg.lora.dropout)
    opt = torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=0.0)
    warmup = math.ceil(t.warmup_ratio * steps) if t.warmup_ratio < 1 else int(t.warmup_ratio)
    sched = get_linear_schedule_with_warmup(opt, warmup, steps)
    scaling = cfg.lora.alpha / cfg.lora.r  # B trains unscaled (PEFT's parametrisation); s rides as the group scale
    scale = torch.full((k,), scaling, device=device)
    streams = [_cycle(b, t.batch_size, t.seed + i) for i, b in enumerate(blocks)]
    log: list[dict] = []
    model.train()
    try:
        if activation_checkpointing:  # inside the try: whatever fails, the model is left as it came
            set_activation_checkpointing(model, True)
        for step in tqdm(range(1, steps + 1), desc=f"{k} anchors together", disable=not progress):
            losses = torch.zeros(k)
            for _ in range(t.gradient_accumulation):
                rows = [row for s in streams for row in next(s)]
                ids = torch.tensor([r.ids for r in rows], device=device)
                labels = torch.tensor([r.labels for r in rows], device=device)[:, 1:]
                runtime.state.set_groups(scale)
                tok = token_losses(model, ids, labels, chunked)
                counted = (labels != IGNORE).view(k, -1).sum(1).clamp(min=1)
                per_anchor = tok.view(k, -1).sum(1) / counted  # block k = anchor k; mean over tokens with loss
                (per_anchor.sum() / t.gradient_accumulation).backward()
                losses += per_anchor.detach().cpu() / t.gradient_accumulation
            runtime.clip_per_adapter(1.0)  # the Trainer's max_grad_norm, per adapter
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if step % t.logging_steps == 0 or step == steps:
                rec = {"step": step, "loss": losses.tolist(), "learning_rate": sched.get_last_lr()[0]}
                log.append(rec)
                if on_log:
                    on_log(rec)
    finally:
        runtime.state.set(None)
        if activation_checkpointing:
            set_activation_checkpointing(model, False)
        model.eval()
    adapters = runtime.export_adapters(scaling)
    runtime.detach()
    return adapters, log


def save_adapter(weights: LoraWeights, cfg: StylesConfig, base_name: str, out: Path) -> None:
    """A standard PEFT adapter directory (PeftModel.from_pretrained and lerplm load it)."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    cfg.lora.peft_config(base_model_name_or_path=base_name).save_pretrained(str(out))
    state = {}
    for name, (a, b, _) in weights.modules.items():
        state[f"{PEFT_PREFIX}{name}.lora_A.weight"] = a.contiguous()
        state[f"{PEFT_PREFIX}{name}.lora_B.weight"] = b.contiguous()
    save_file(state, str(out / "adapter_model.safetensors"))
