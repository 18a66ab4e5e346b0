"""The int8 prefill graph's attention output and down projections: int8 x int8 per token with their widest input
channels in fp32 (the default) against ``MatMulNBits`` blocks (the baseline: the same calibration without outlier
channels). Both graphs of the same weights, under a two-attribute mix: the time of a prefill call of each
``--tokens`` length with the last token's logits, as the engine calls it (the two graphs taking turns), and, with
each text prefilled whole, the mean KL divergence of each position's next-token distribution from the exact fp32
step's, the share of positions whose most likely token is fp32's, and the perplexity of held-out corpus texts
(their first 64 tokens) and of chat prompts.

python benchmarks/prefill_graph.py --anchors anchors/quickstart
"""

from __future__ import annotations

import argparse
import functools
import math
import random
import statistics

import torch
from common import save, taking_turns
from engine import STYLES, prefilled

TEXTS = ("sentiment/positive", "sentiment/negative", "formality/formal", "humor/humorous")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--anchors", required=True)
    ap.add_argument(
        "--tokens",
        type=int,
        nargs="+",
        default=[16, 59, 256],
        help="prefill lengths timed (59: the mean served prompt)",
    )
    ap.add_argument("--texts", type=int, default=64, help="held-out texts per corpus file, and chat prompts")
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()

    import lerplm
    from lerplm.engine import ortstep
    from lerplm.generate import CALIBRATION_PROMPTS

    lm = lerplm.load(args.anchors)
    names = lm.anchors.names
    mix = lerplm.Mix({names[0]: 0.8, names[-1]: 0.3}).coefficients(names)
    texts = []
    for name in TEXTS:
        lines = (STYLES / f"{name}.test.txt").read_text().splitlines()
        texts += [lm.tokenizer(t.strip())["input_ids"][:64] for t in lines if t.strip()][: args.texts]
    prompts = [p.strip() for p in (STYLES / "prompts" / "writing_prompts.txt").read_text().splitlines() if p.strip()]
    chats = lm.prompt_ids(random.Random(1).sample(prompts, args.texts))
    exact = ortstep.FastDecoder(lm.model, lm.adapters)
    calibration = ortstep.calibrate(exact, lm.prompt_ids(CALIBRATION_PROMPTS))
    blocks = ortstep.Calibration({k: s for k, s in calibration.smooth.items() if k[1] in ortstep.NORMED})
    steps = {}
    for name, prefill in (("o/down in blocks", blocks), ("o/down int8, outliers in fp32", calibration)):
        step = ortstep.OrtDecoder(exact, "int8")
        step.prefill_session = ortstep.new_session(ortstep.build_graph(exact, 8, prefill), torch.get_num_threads())
        steps[name] = step
    results = {"anchors": args.anchors, "mix": mix, "tokens": args.tokens, "texts": len(texts), "chats": len(chats)}
    results["graphs"] = {name: {} for name in steps}
    stream = [t for ids in chats for t in ids]
    for n in args.tokens:
        calls = {k: functools.partial(prefilled, s, stream[:n], mix, last=True) for k, s in steps.items()}
        for name, ms in taking_turns(calls, args.rounds, 2, 3).items():
            results["graphs"][name][f"prefill_{n}_ms"] = statistics.median(ms)
    for kind, seqs in (("texts", texts), ("chats", chats)):
        ref = [torch.log_softmax(prefilled(exact, ids, mix).float(), -1) for ids in seqs]
        positions = sum(len(ids) for ids in seqs)
        targets = [torch.tensor(ids[1:])[:, None] for ids in seqs]
        nll = -sum(float(r[:-1].gather(1, t).sum()) for r, t in zip(ref, targets))
        results[f"fp32_perplexity_{kind}"] = math.exp(nll / (positions - len(seqs)))
        for name, step in steps.items():
            kl = agree = nll = 0.0
            for ids, r, t in zip(seqs, ref, targets):
                lp = torch.log_softmax(prefilled(step, ids, mix).float(), -1)
                kl += float((r.exp() * (r - lp)).sum())
                agree += int((lp.argmax(-1) == r.argmax(-1)).sum())
                nll -= float(lp[:-1].gather(1, t).sum())
            results["graphs"][name] |= {
                f"kl_{kind}": kl / positions,
                f"top1_agreement_{kind}": agree / positions,
                f"perplexity_{kind}": math.exp(nll / (positions - len(seqs))),
            }
    for name, row in results["graphs"].items():
        print(f"{name}: " + "  ".join(f"{k} {v:.4g}" for k, v in row.items()))
    print(
        f"fp32 perplexity: texts {results['fp32_perplexity_texts']:.4g}, chats {results['fp32_perplexity_chats']:.4g}"
    )
    print("wrote", save("prefill_graph", results))


if __name__ == "__main__":
    main()
