"""The engine on the embedded default with an anchor set, for each base-weight scheme (fp32, int8,
int4; the quantised ones on ONNX Runtime), all in one run:

- one prompt under a two-attribute mix against the base model alone (no adapters attached): time to
  first token and decode tok/s, and their ratios; the same for the mix merged into the step's weights
  (``generate --merge``);
- a mix that changes at every token (a live slider) against an unchanged mix: tok/s ratio;
- 16 rows with 16 different mixes: decode tok/s;
- the model step alone, with adapters, without them and with the mix merged, every scheme's runs interleaved
  round by round (the least noisy comparison on a shared machine): median ms of a decode step at 1 and 16 rows
  and of a 42-token prefill;
- quality against fp32: teacher-forced greedy agreement on fp32's own continuations and perplexity on
  held-out corpus text, both under a mix (mixed and merged) and teacher-forced through decode steps.

The scheme ``int8-b128`` is int8 in blocks of 128 inputs where they divide a layer's inputs (the MLP's down
projection), the baseline for int8's blocks of 64; ``int8-blocks`` is int8 prefilling through its decode graph
(activations rounded per block of inputs, not per token in the integer products of the prefill graph), the baseline
for that graph. Quality also counts a held-out text's perplexity with the whole text in one prefill call
(``prefill_perplexity``).

python benchmarks/engine.py --anchors anchors/quickstart
"""

from __future__ import annotations

import argparse
import functools
import math
import random
import statistics
import time
from pathlib import Path

import torch
from common import save, taking_turns

ROOT = Path(__file__).resolve().parents[1]
STYLES = ROOT.parent / "shared" / "data" / "styles"
PROMPT = "Write two sentences about the restaurant you went to last night."


def timed_run(lm, step_model, seqs) -> tuple[float, float]:
    """(seconds to the first token of seqs[0], decode tok/s after it) on a fresh engine, after an untimed one-token
    run of the same step: ONNX Runtime's workers spin on the cores for a while after a call, and a session called
    right after another one waits for them (~30 ms on a first token here), where a generate call runs one step alone."""
    from lerplm.engine import Engine, SamplingParams, Sequence

    first = seqs[0]
    Engine(step_model, lm.eos_ids(), max_batch=1, max_len=512).run(
        [Sequence(first.prompt_ids, first.coeffs, SamplingParams(1, 0), 0)]
    )
    eng = Engine(step_model, lm.eos_ids(), max_batch=len(seqs), max_len=512)
    eng.eos = set()  # fixed lengths: every row runs its full course
    for s in seqs:
        eng.submit(s)
    t0 = time.perf_counter()
    first = None
    while any(not s.done for s in seqs):
        eng.step()
        if first is None and seqs[0].tokens:
            first = time.perf_counter()
    end = time.perf_counter()
    decoded = sum(len(s.tokens) for s in seqs) - len(seqs)
    return first - t0, decoded / (end - first)


def interleaved(fns: list, repeat: int) -> list[tuple[float, float]]:
    """(best time to first token, best tok/s) of each fn, its runs interleaved with the others' so that
    the machine's drift over a run falls on all of them alike."""
    runs = [[] for _ in fns]
    for _ in range(repeat):
        for out, fn in zip(runs, fns):
            out.append(fn())
    return [(min(r[0] for r in out), max(r[1] for r in out)) for out in runs]


def teacher_forced(model, ids: list[int], start: int, coeffs: list[float]) -> torch.Tensor:
    """Next-token logits at positions start-1 .. len-2: ids[:start] prefilled in one chunk, then one
    token per step (decode steps, which use the quantised kernels, as in generation); ``coeffs`` empty: a
    step without adapters."""
    from lerplm.engine.decoder import StepPlan

    cache = model.new_cache(1, len(ids))
    c = torch.tensor([coeffs]) if coeffs else None

    def plan(lo: int, hi: int) -> StepPlan:
        tokens, mix = torch.tensor(ids[lo:hi]), None if c is None else c.expand(hi - lo, -1)
        if hi - lo == 1 and lo > 0:
            return StepPlan.decoding(tokens, torch.tensor([lo]), [0], mix)
        return StepPlan.prefilling(tokens, [(0, lo, hi - lo)], mix)

    out = [model(plan(0, start), cache)]
    out += [model(plan(p, p + 1), cache) for p in range(start, len(ids) - 1)]
    return torch.cat(out)


def prefilled(model, ids: list[int], coeffs: list[float], last: bool = False) -> torch.Tensor:
    """Next-token logits at every position of ``ids`` (``last``: at the last one only, as the engine asks for a
    prompt), all of them in one prefill call."""
    from lerplm.engine.decoder import StepPlan

    n = len(ids)
    c = torch.tensor([coeffs]).expand(n, -1) if coeffs else None
    wanted = torch.tensor([n - 1]) if last else torch.arange(n)
    return model(StepPlan.prefilling(torch.tensor(ids), [(0, 0, n)], c, wanted), model.new_cache(1, n))


@torch.inference_mode()
def step_times(models: dict[str, tuple], adapters: int, rounds: int = 10) -> dict[str, dict[str, float]]:
    """Median ms of one step of each (mixed, bare, merged) step model: decode at 1 and 16 rows (at cache position
    80, random tokens and mixes) and a 42-token prefill; the models take turns, ``rounds`` times."""
    from lerplm.engine.decoder import StepPlan

    gen = torch.Generator().manual_seed(0)

    def plan(rows: int, n: int, mixed: bool) -> StepPlan:
        tokens = torch.randint(0, 1000, (max(rows, n),), generator=gen)
        coeffs = torch.rand(len(tokens), adapters, generator=gen) if mixed else None
        if n == 1:  # decoding rows in slots 0..rows-1
            return StepPlan.decoding(tokens, torch.full((rows,), 80), list(range(rows)), coeffs)
        return StepPlan.prefilling(tokens, [(0, 0, n)], coeffs)

    shapes = {"decode1_ms": (1, 1), "decode16_ms": (16, 1), "prefill42_ms": (1, 42)}
    steps = {f"{name}/{kind}": m for name, ms in models.items() for kind, m in zip(("mix", "base", "merged"), ms)}
    caches = {key: m.new_cache(16, 128) for key, m in steps.items()}
    times: dict[str, dict[str, float]] = {key: {} for key in steps}
    for shape, (rows, n) in shapes.items():
        plans = {key: plan(rows, n, key.endswith("/mix")) for key in steps}
        calls = {key: functools.partial(m, plans[key], caches[key]) for key, m in steps.items()}
        reps = 10 if n == 1 else 3
        for key, ms in taking_turns(calls, rounds, reps, reps).items():
            times[key][shape] = statistics.median(ms)
    return times


@torch.inference_mode()
def quality(lm, ref, model, coeffs, prompts, texts, tokens: int, merged: bool = False) -> dict:
    """Greedy agreement on ref's own continuations under ``coeffs`` and perplexity on ``texts``, both
    teacher-forced through decode steps of ``model`` (``merged``: with the mix in its weights)."""
    from lerplm.engine import Engine, SamplingParams, Sequence

    agree = total = 0
    for p in prompts:
        ids = lm.prompt_ids([p])[0]
        seq = Sequence(ids, coeffs, SamplingParams(tokens, 0), 0)
        Engine(ref, lm.eos_ids(), max_batch=1, max_len=len(ids) + tokens).run([seq])
        got = teacher_forced(model, ids + seq.tokens, len(ids), [] if merged else coeffs).argmax(-1)
        agree += int((got == torch.tensor(seq.tokens)).sum())
        total += len(seq.tokens)
    nll, whole, count = 0.0, 0.0, 0
    for t in texts:
        ids = lm.tokenizer(t)["input_ids"][:64]
        if len(ids) < 2:
            continue
        target = torch.tensor(ids[1:])[:, None]
        lp = torch.log_softmax(teacher_forced(model, ids, 1, [] if merged else coeffs), -1)
        nll -= float(lp.gather(1, target).sum())
        lp = torch.log_softmax(prefilled(model, ids, [] if merged else coeffs)[:-1], -1)
        whole -= float(lp.gather(1, target).sum())
        count += len(ids) - 1
    return {
        "greedy_agreement": agree / total if total else 1.0,
        "perplexity": math.exp(nll / count),
        "prefill_perplexity": math.exp(whole / count),
    }


def step_models(lm, scheme: str, mix: list[float]):
    """(mixed, bare, merged) steps for ``scheme``; ``int8-b128``: int8 with 128-input blocks where they divide;
    ``int8-blocks``: int8 prefilling through its decode graph."""
    from lerplm.engine import ortstep
    from lerplm.generate import CALIBRATION_PROMPTS

    if scheme == "fp32":
        with lm.runtime.merged(mix) as merged:
            merged_step = ortstep.fast_step(merged, [])
        return ortstep.fast_step(lm.model, lm.adapters), ortstep.fast_step(lm.model, []), merged_step
    calibration = lm.prompt_ids(CALIBRATION_PROMPTS)
    blocks, integer_prefill = ortstep.INT8_BLOCKS, scheme != "int8-blocks"
    if scheme == "int8-b128":
        ortstep.INT8_BLOCKS = (128, *blocks)

    def step(model, adapters):
        fast = ortstep.FastDecoder(model, adapters)
        return ortstep.OrtDecoder(fast, scheme[:4], calibration, integer_prefill)

    try:
        with lm.runtime.merged(mix) as merged:
            merged_step = step(merged, [])
        return step(lm.model, lm.adapters), step(lm.model, []), merged_step
    finally:
        ortstep.INT8_BLOCKS = blocks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--anchors", required=True)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--schemes", nargs="+", default=["fp32", "int8", "int8-blocks", "int8-b128", "int4"])
    ap.add_argument("--quality-prompts", type=int, default=16)
    args = ap.parse_args()

    import lerplm
    from lerplm.engine import SamplingParams, Sequence

    lm = lerplm.load(args.anchors)
    names = lm.anchors.names
    mix = lerplm.Mix({names[0]: 0.8, names[-1]: 0.3}).coefficients(names)
    ids = lm.prompt_ids([PROMPT])[0]
    prompts = [p.strip() for p in (STYLES / "prompts" / "writing_prompts.txt").read_text().splitlines() if p.strip()]
    sample = random.Random(0).sample(prompts, args.quality_prompts)  # every scheme on the same prompts
    held = [t.strip() for t in (STYLES / "sentiment" / "positive.test.txt").read_text().splitlines() if t.strip()][:24]
    ref = lm.step_model
    results = {"anchors": args.anchors, "tokens": args.tokens, "mix": mix, "schemes": {}}
    models = {scheme: step_models(lm, scheme, mix) for scheme in args.schemes}
    results["step_ms"] = step_times(models, len(lm.adapters))
    for key, row in results["step_ms"].items():
        print(f"step {key}: " + "  ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)
    for scheme, (mixed, bare, merged) in models.items():
        params = SamplingParams(args.tokens, 0)

        def one(model, coeffs, schedule=None):
            return lambda: timed_run(lm, model, [Sequence(ids, coeffs, params, 0, schedule=schedule)])

        def live(i):  # a new random two-attribute mix at every token
            r = random.Random(i)
            return lerplm.Mix({names[0]: r.random(), names[-1]: r.random()}).coefficients(names)

        (base_ttft, base_tps), (ttft, tps), (_, live_tps), (merged_ttft, merged_tps) = interleaved(
            [one(bare, []), one(mixed, mix), one(mixed, mix, live), one(merged, [])], args.repeat
        )
        batch = [Sequence(ids, live(i), params, i) for i in range(16)]
        _, batch_tps = timed_run(lm, mixed, [Sequence(s.prompt_ids, s.coeffs, params, s.seed) for s in batch])
        row = {
            "base_ttft_s": base_ttft,
            "base_tok_s": base_tps,
            "mix_ttft_s": ttft,
            "mix_tok_s": tps,
            "ttft_ratio": ttft / base_ttft,
            "tok_s_ratio": base_tps / tps,
            "merged_ttft_s": merged_ttft,
            "merged_tok_s": merged_tps,
            "merged_ttft_ratio": merged_ttft / base_ttft,
            "merged_tok_s_ratio": base_tps / merged_tps,
            "live_mix_tok_s": live_tps,
            "live_cost_ratio": tps / live_tps,
            "batch16_tok_s": batch_tps,
        }
        if scheme != "fp32":
            row |= quality(lm, ref, mixed, mix, sample, held, 32)
        else:
            row |= quality(lm, ref, ref, mix, [], held, 32)
        merged_quality = quality(lm, ref, merged, mix, sample, held, 32, merged=True)
        row |= {f"merged_{k}": v for k, v in merged_quality.items()}
        results["schemes"][scheme] = row
        print(f"{scheme}: " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
    print("wrote", save("engine", results))


if __name__ == "__main__":
    main()
