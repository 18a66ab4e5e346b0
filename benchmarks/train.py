"""Anchor training throughput (tokens/s): the ten anchors one after another (PEFT, one adapter per
run, the sequential path's work) against all ten in one run (lerplm.train_mixed: each batch carries
a block of rows per anchor, one base forward/backward serves them all). Same optimiser, same loss,
same per-anchor batch; the sequential time is per anchor times K (every anchor has the same shapes).

python benchmarks/train.py                               # CPU, embedded default, styles.toml's LoRA
python benchmarks/train.py --shape llama-1b --dtype bf16  # on a GPU
"""

from __future__ import annotations

import argparse
import resource

import torch
import torch.nn.functional as F
from common import base_model, median, save, sync

from lerplm.config import StylesConfig
from lerplm.data import Block
from lerplm.train_mixed import train_mixed

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def config(args) -> StylesConfig:
    return StylesConfig.model_validate(
        {
            "base_model": "x",
            "lora": {"r": args.r, "alpha": 16, "dropout": 0.1, "target_modules": TARGETS},
            "training": {
                "batch_size": args.batch,
                "block_size": args.block,
                "learning_rate": 5e-4,
                "max_steps": args.steps,
                "logging_steps": 1,
            },
            "attributes": [
                {"name": "a", "negative": {"name": "n", "files": ["x"]}, "positive": {"name": "p", "files": ["y"]}}
            ],
        }
    )


def sequential_step_s(model, cfg: StylesConfig, steps: int, device: str) -> list[float]:
    """Seconds per optimiser step of one PEFT adapter (forward, backward, clip, AdamW), after one warm-up step."""
    import copy
    import time

    from peft import LoraConfig, get_peft_model

    t = cfg.training
    peft_model = get_peft_model(
        copy.deepcopy(model),
        LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout, target_modules=TARGETS),
    )
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=t.learning_rate)
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(steps + 1):
        ids = torch.randint(0, model.config.vocab_size, (t.batch_size, t.block_size), generator=g).to(device)
        sync(device)
        t0 = time.perf_counter()
        logits = peft_model(input_ids=ids).logits[:, :-1]
        F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten()).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if i:
            out.append(time.perf_counter() - t0)
    del peft_model
    return out


def mixed_step_s(
    model, cfg: StylesConfig, k: int, steps: int, device: str, chunked_loss: bool, recompute: bool
) -> list[float]:
    """Seconds per optimiser step of K adapters trained together (first step dropped as warm-up)."""
    import time

    g = torch.Generator().manual_seed(0)
    blocks = [
        [
            Block(ids, ids)
            for ids in torch.randint(
                0, model.config.vocab_size, (cfg.training.batch_size * 2, cfg.training.block_size), generator=g
            ).tolist()
        ]
        for _ in range(k)
    ]
    stamps = []

    def on_log(rec):
        sync(device)
        stamps.append(time.perf_counter())

    sync(device)
    stamps.append(time.perf_counter())
    train_mixed(
        model,
        blocks,
        cfg,
        steps=steps + 1,
        progress=False,
        on_log=on_log,
        chunked_loss=chunked_loss,
        activation_checkpointing=recompute,
    )
    return [b - a for a, b in zip(stamps[1:], stamps[2:])]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="default", help="default | llama-1b | llama-8b")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--anchors", type=int, default=10)
    ap.add_argument("--r", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8, help="rows per anchor per step (styles.toml: 8)")
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per path (after one warm-up step)")
    ap.add_argument("--full-logits", action="store_true", help="train together with the full logits (no chunked loss)")
    ap.add_argument(
        "--activation-checkpointing", action="store_true", help="train together recomputing each layer in backward"
    )
    args = ap.parse_args()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    model = base_model(args.shape, dtype, args.device)
    for p in model.parameters():
        p.requires_grad_(False)
    cfg = config(args)
    tokens_per_anchor_step = args.batch * args.block
    seq = median(sequential_step_s(model, cfg, args.steps, args.device))
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    mixed = median(
        mixed_step_s(
            model, cfg, args.anchors, args.steps, args.device, not args.full_logits, args.activation_checkpointing
        )
    )
    res = {
        "args": vars(args),
        "sequential_step_s_per_anchor": seq,
        "mixed_step_s_all_anchors": mixed,
        "sequential_tokens_per_s": tokens_per_anchor_step / seq,
        "mixed_tokens_per_s": args.anchors * tokens_per_anchor_step / mixed,
    }
    res["speedup"] = res["mixed_tokens_per_s"] / res["sequential_tokens_per_s"]
    # peak memory: the mixed run's on a GPU; on CPU the process's peak RSS, which the mixed run sets
    res["peak_memory_gb"] = (
        torch.cuda.max_memory_allocated()
        if args.device.startswith("cuda")
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    ) / 2**30
    print(
        f"anchor training, {args.anchors} anchors, r={args.r}, {args.batch}x{args.block} tokens per anchor per step "
        f"({args.shape}, {args.dtype}, {args.device}):"
    )
    print(f"  one after another (PEFT): {seq:.2f} s/step per anchor, {res['sequential_tokens_per_s']:.0f} tokens/s")
    print(
        f"  all together (lerplm):    {mixed:.2f} s/step for all {args.anchors}, "
        f"{res['mixed_tokens_per_s']:.0f} tokens/s"
    )
    print(
        f"  peak memory: {res['peak_memory_gb']:.1f} GiB ({'full logits' if args.full_logits else 'chunked loss'}"
        f"{', activation checkpointing' if args.activation_checkpointing else ''})"
    )
    print(
        f"  speed-up of training together: {res['speedup']:.2f}x"
        f" ({args.anchors} anchors x 60 steps: {args.anchors * seq:.1f} min one after another"
        f" vs {mixed:.1f} min together)"
    )
    print(f"wrote {save(f'train-{args.shape}-{args.dtype}-{args.device}', res)}")


if __name__ == "__main__":
    main()
