"""Which LoRA targets give stronger control on the embedded default: attention only, or attention + MLP?

Trains the sentiment and simplicity anchors a second time with the MLP projections added (same data,
steps and settings otherwise), then measures, on held-out test texts of each endpoint, how much better
the matching anchor predicts them than the opposite anchor:

    margin = mean over test texts of [NLL(text | opposite anchor) - NLL(text | own anchor)]  (nats/token)

A larger margin means the two endpoints pull the model further apart: more room for control.

python experiments/target_modules.py --attn anchors/styles --out docs/target_modules.md
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch

import lerplm
from lerplm.config import load_config
from lerplm.data import normalize, read_texts
from lerplm.train import train_anchors

MLP = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@torch.inference_mode()
def token_nll(lm, texts: list[str], coeffs: list[float], batch: int = 16) -> torch.Tensor:
    """Mean per-token NLL of each text under one coefficient vector."""
    out = []
    tok = lm.tokenizer
    for i in range(0, len(texts), batch):
        chunk = texts[i : i + batch]
        enc = tok(chunk, return_tensors="pt", padding=True, truncation=True, max_length=128)
        c = torch.tensor([coeffs] * len(chunk))
        logits = lm.logits(enc["input_ids"], c, enc["attention_mask"])[:, :-1].float()
        target = enc["input_ids"][:, 1:]
        mask = enc["attention_mask"][:, 1:].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
        out.append((nll * mask).sum(1) / mask.sum(1).clamp(min=1))
    return torch.cat(out)


def margins(lm, cfg, attrs: list[str], n: int) -> dict:
    res = {}
    for a in attrs:
        ac = next(x for x in cfg.attributes if x.name == a)
        k = lm.anchors.names.index(a)
        one_hot = lambda j: [1.0 if i == 2 * k + j else 0.0 for i in range(2 * len(lm.anchors.names))]  # noqa: E731
        per_ep = {}
        for j, ep in enumerate((ac.negative, ac.positive)):
            test = cfg.data_root() / ep.data_files()[0].path.replace(".train.", ".test.")
            texts = normalize(random.Random(0).sample(read_texts(test), n), ep.normalize)
            own, other = token_nll(lm, texts, one_hot(j)), token_nll(lm, texts, one_hot(1 - j))
            base = token_nll(lm, texts, [0.0] * len(one_hot(0)))
            per_ep[ep.name] = {
                "margin": (other - own).mean().item(),
                "own_nll": own.mean().item(),
                "base_nll": base.mean().item(),
                "acc": (own < other).float().mean().item(),
            }
        res[a] = per_ep
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="examples/styles.toml")
    ap.add_argument("--attn", default="anchors/styles")
    ap.add_argument("--mlp", default="anchors/styles_mlp")
    ap.add_argument("--attributes", default="sentiment,simplicity")
    ap.add_argument("--n", type=int, default=200, help="test texts per endpoint")
    ap.add_argument("--out", default="docs/target_modules.md")
    args = ap.parse_args()
    attrs = args.attributes.split(",")

    cfg = load_config(args.config)
    mlp_cfg = cfg.model_copy(deep=True)
    mlp_cfg.attributes = [a for a in cfg.attributes if a.name in attrs]
    mlp_cfg.lora.target_modules = MLP
    train_anchors(mlp_cfg, args.mlp)

    results = {}
    for label, path in (("attention (q,k,v,o)", args.attn), ("attention + MLP", args.mlp)):
        results[label] = margins(lerplm.load(path, device="cpu"), cfg, attrs, args.n)
    Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=2))

    lines = [
        "# LoRA targets: attention only vs attention + MLP (embedded default)",
        "",
        "Same data, settings and step budget as `examples/styles.toml`; only `target_modules` differs.",
        f"Measured on {args.n} held-out test texts per endpoint. *margin*: mean per-token NLL under the opposite "
        "anchor minus under the own anchor (nats/token; larger = endpoints further apart). *pairwise acc*: share "
        "of test texts that the own anchor predicts better than the opposite one.",
        "",
        "```bash",
        f"python experiments/target_modules.py --attn {args.attn} --mlp {args.mlp} --out {args.out}",
        "```",
        "",
        "| targets | attribute | endpoint | margin | pairwise acc | NLL own anchor | NLL base |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, per_attr in results.items():
        for a, eps in per_attr.items():
            for ep, r in eps.items():
                cells = [f"{r['margin']:.3f}", f"{r['acc']:.2f}", f"{r['own_nll']:.3f}", f"{r['base_nll']:.3f}"]
                lines.append(f"| {label} | {a} | {ep} | " + " | ".join(cells) + " |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
