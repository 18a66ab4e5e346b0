"""Decode step time with K=10 rank-32 anchors: lerplm (every row a different mix) against the base
model alone (the limit), lerplm with rows that differ in one attribute's level (8 of the 10 adapters
have zero coefficients and are skipped), lerplm with one mix merged, PEFT with ten adapters active, PEFT with one
`cat` adapter; and the time from a new mix to its first token (lerplm vs PEFT add_weighted_adapter).

python benchmarks/decode.py                          # CPU, embedded default, fp32
python benchmarks/decode.py --shape llama-8b --dtype bf16 --batch 1 32    # on a GPU
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch
from common import base_model, median, random_anchors, save, sync, timed

from lerplm.runtime import MixedRuntime


@torch.inference_mode()
def step_time(
    model, batch: int, prompt: int, steps: int, vocab: int, device: str, repeat: int, before_step=None
) -> float:
    """Median seconds per decode step after a ``prompt``-token prefill, KV cache on."""
    from transformers import DynamicCache

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, prompt), generator=g).to(device)
    nxt = torch.randint(0, vocab, (batch, 1), generator=g).to(device)

    def run():
        cache = DynamicCache()
        model(input_ids=ids, past_key_values=cache, use_cache=True)
        times = []
        for _ in range(steps):
            if before_step:
                before_step()
            sync(device)
            t0 = time.perf_counter()
            model(input_ids=nxt, past_key_values=cache, use_cache=True)
            sync(device)
            times.append(time.perf_counter() - t0)
        return times

    run()  # warm-up
    return median([median(run()) for _ in range(repeat)])


@torch.inference_mode()
def profile_step(model, batch: int, prompt: int, vocab: int, device: str) -> dict[str, float]:
    """Self time (ms) per operator over 4 decode steps, printed as a table and returned."""
    from torch.profiler import ProfilerActivity, profile
    from transformers import DynamicCache

    ids = torch.randint(0, vocab, (batch, prompt), generator=torch.Generator().manual_seed(0)).to(device)
    cache = DynamicCache()
    model(input_ids=ids, past_key_values=cache, use_cache=True)
    nxt = ids[:, -1:]
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=acts) as prof:
        for _ in range(4):
            model(input_ids=nxt, past_key_values=cache, use_cache=True)
    print(f"batch {batch}, where 4 decode steps spend their time:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    return {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="default", help="default | llama-1b | llama-8b")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8, help="decode steps timed per repeat")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-peft", action="store_true")
    ap.add_argument(
        "--profile", action="store_true", help="print where a decode step's time goes (lerplm, a mix per row)"
    )
    args = ap.parse_args()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    dev = args.device

    model = base_model(args.shape, dtype, dev)
    vocab = model.config.vocab_size
    tmp = Path(tempfile.mkdtemp())
    dirs = random_anchors(model, tmp)
    k = len(dirs)
    runtime = MixedRuntime.from_dirs(model, dirs)
    results: dict = {"args": vars(args), "step_s": {}, "ratio_to_base": {}}
    # A decode step must read every weight once: (base + stacked adapters) / base is the floor of the ratio
    base_params = sum(p.numel() for p in model.parameters())  # a tied lm_head counts once, as it is read once
    adapter_params = sum(layer.a_cat.numel() + layer.b_cat.numel() for layer in runtime.layers.values())
    results["weight_read_floor"] = 1 + adapter_params / base_params
    print(
        f"weights read per decode step: base {base_params / 1e6:.1f}M, stacked adapters {adapter_params / 1e6:.1f}M "
        f"-> floor for a mix per row {results['weight_read_floor']:.3f}x the base",
        flush=True,
    )

    def per_row(batch: int) -> torch.Tensor:
        c = torch.rand(batch, k, generator=torch.Generator().manual_seed(batch))
        return (c / c.sum(1, keepdim=True)).to(dev)

    for b in args.batch:
        row = {}
        with runtime.detached() as plain:
            row["base"] = step_time(plain, b, args.prompt, args.steps, vocab, dev, args.repeat)
        runtime.set_coefficients(per_row(b))
        row["lerplm_rows"] = step_time(model, b, args.prompt, args.steps, vocab, dev, args.repeat)
        if args.profile:
            results.setdefault("profile", {})[b] = profile_step(model, b, args.prompt, vocab, dev)
        one_attr = torch.zeros(b, k, device=dev)  # one slider: every row a different level of the same attribute
        one_attr[:, 1] = torch.linspace(0, 1, b, device=dev)
        one_attr[:, 0] = 1 - one_attr[:, 1]
        runtime.set_coefficients(one_attr)
        row["lerplm_rows_one_attribute"] = step_time(model, b, args.prompt, args.steps, vocab, dev, args.repeat)
        runtime.set_coefficients(None)
        with runtime.detached() as plain:  # one mix merged into the weights, restored afterwards
            deltas = runtime.delta_weights(per_row(1)[0].cpu())
            saved = {n: plain.get_submodule(n).weight.detach().clone() for n in deltas}
            for n, d in deltas.items():
                plain.get_submodule(n).weight.add_(d.to(dev, dtype))
            row["lerplm_merged"] = step_time(plain, b, args.prompt, args.steps, vocab, dev, args.repeat)
            for n, w in saved.items():
                plain.get_submodule(n).weight.copy_(w)
        results["step_s"][b] = row
        print(f"batch {b}: " + ", ".join(f"{n} {v * 1e3:.1f} ms" for n, v in row.items()), flush=True)

    if not args.skip_peft:
        from peft import PeftModel

        with runtime.detached() as plain:
            peft_model = PeftModel.from_pretrained(copy.deepcopy(plain), str(dirs[0]), adapter_name="a0")
        for i, d in enumerate(dirs[1:], 1):
            peft_model.load_adapter(str(d), adapter_name=f"a{i}")
        names = [f"a{i}" for i in range(k)]
        for b in args.batch:
            peft_model.base_model.set_adapter(names)
            results["step_s"][b]["peft_10_active"] = step_time(
                peft_model, b, args.prompt, args.steps, vocab, dev, args.repeat
            )
        t_merge = timed(
            lambda: (
                peft_model.add_weighted_adapter(names, [1 / k] * k, "cat_mix", combination_type="cat"),
                peft_model.set_adapter("cat_mix"),
                peft_model.delete_adapter("cat_mix"),
            ),
            dev,
            1,
            0,
        )
        peft_model.add_weighted_adapter(names, [1 / k] * k, "cat_mix", combination_type="cat")
        peft_model.set_adapter("cat_mix")
        for b in args.batch:
            results["step_s"][b]["peft_cat"] = step_time(
                peft_model, b, args.prompt, args.steps, vocab, dev, args.repeat
            )
        results["new_mix_s"] = {"peft_add_weighted_adapter_cat": median(t_merge)}
        del peft_model

    # new mix -> first token: set coefficients + prefill + one decode step, vs the same with an unchanged mix
    ids = torch.randint(0, vocab, (1, args.prompt), generator=torch.Generator().manual_seed(1)).to(dev)

    @torch.inference_mode()
    def first_token(new_mix: bool):
        if new_mix:
            runtime.set_coefficients(per_row(1) * torch.rand(1, device=dev))
        return model(input_ids=ids).logits[:, -1].argmax(-1)

    runtime.set_coefficients(per_row(1))
    same = median(timed(lambda: first_token(False), dev, 5))
    new = median(timed(lambda: first_token(True), dev, 5))
    results.setdefault("new_mix_s", {}).update({"lerplm_same_mix_first_token": same, "lerplm_new_mix_first_token": new})
    runtime.set_coefficients(None)

    for b, row in results["step_s"].items():
        results["ratio_to_base"][b] = {n: v / row["base"] for n, v in row.items()}
    print(
        f"\ndecode step time relative to the base model alone ({args.shape}, {args.dtype}, {dev}; "
        f"prompt {args.prompt}):"
    )
    cols = list(next(iter(results["step_s"].values())))
    print("batch | " + " | ".join(cols))
    for b, r in results["ratio_to_base"].items():
        print(f"{b:>5} | " + " | ".join(f"{r.get(c, float('nan')):.2f}x" for c in cols))
    nm = results["new_mix_s"]
    new, same = nm["lerplm_new_mix_first_token"], nm["lerplm_same_mix_first_token"]
    print(
        f"new mix -> first token: lerplm {new * 1e3:.1f} ms vs same mix {same * 1e3:.1f} ms (ratio {new / same:.3f})"
        + (
            f"; PEFT add_weighted_adapter(cat)+set_adapter: {nm['peft_add_weighted_adapter_cat']:.3f} s"
            if "peft_add_weighted_adapter_cat" in nm
            else ""
        )
    )
    print(f"wrote {save(f'decode-{args.shape}-{args.dtype}-{dev}', results)}")


if __name__ == "__main__":
    main()
