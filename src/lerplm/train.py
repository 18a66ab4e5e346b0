"""Anchor training: one LoRA adapter per endpoint with PEFT + the transformers Trainer.

Resumable at two grains: a finished anchor (its directory exists; it is renamed into place only
when complete) is never trained again, and an interrupted one resumes from its last checkpoint.
The Trainer makes ``accelerate launch`` work unchanged.
"""

from __future__ import annotations

import functools
import json
import os
import random
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from transformers.trainer_callback import ProgressCallback

from .anchors import MANIFEST, AnchorSet, Attribute, Endpoint
from .config import RECIPES, StylesConfig
from .data import Block, build_blocks, endpoint_texts, join_answers, read_prompts
from .errors import LerpError
from .files import atomic_file
from .models import (
    DEFAULT_NAMES,
    ModelRef,
    default_device,
    end_ids,
    format_prompt,
    load_model,
    load_tokenizer,
    resolve,
    weights_hash,
)


def is_main_process() -> bool:
    """Rank 0 under torchrun / accelerate launch (or a plain single process): the one that writes."""
    return int(os.environ.get("RANK", "0")) == 0


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


SUMMARY = "lerplm_training.json"  # sidecar inside each adapter dir: settings, loss, data
LOSS_LOG = "loss_log.jsonl"


def _chat_prompt(cfg: StylesConfig) -> str | None:
    return cfg.training.chat_prompt if cfg.training.text_format == "chat" else None


def _settings(cfg: StylesConfig) -> dict:
    """What makes an anchor what it is (compared on resume); optional fields only when used, so that anchors
    trained without them still match."""
    skip = {"save_steps", "logging_steps"} | ({"text_format", "chat_prompt"} if _chat_prompt(cfg) is None else set())
    skip |= {k for k in ("answer_words", *RECIPES) if getattr(cfg.training, k) is None}
    skip |= {"end_loss"} if cfg.training.end_loss is True else set()
    return {"lora": cfg.lora.model_dump(), **cfg.training.model_dump(exclude=skip)}


class QuietProgress(ProgressCallback):
    """The Trainer's progress bar without the log dicts it prints (the loss log keeps them)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass


@functools.lru_cache(maxsize=4)
def base_answers(
    base: ModelRef, prompts: tuple[str, ...], tokens: int, seed: int
) -> tuple[tuple[str, ...], tuple[bool, ...]]:
    """The base model's answers to ``prompts`` (through the chat template), sampled as generation samples
    (temperature 0.8, top-p 0.95): greedy answers of a small model loop, and an anchor trained on them would
    learn the loops. Also whether each ended before ``tokens``. Computed once per run."""
    import torch
    from tqdm.auto import tqdm

    tok = load_tokenizer(base)
    tok.padding_side = "left"
    model = load_model(base, dtype=torch.float32, device=default_device()).eval()
    end = torch.tensor(end_ids(tok, model), device=model.device)
    torch.manual_seed(seed)
    texts: list[str] = []
    ended: list[bool] = []
    for i in tqdm(range(0, len(prompts), 16), desc="base answers to replay", leave=False):
        batch = [format_prompt(tok, p) for p in prompts[i : i + 16]]
        enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        with torch.no_grad():
            ids = model.generate(
                **enc,
                max_new_tokens=tokens,
                do_sample=True,
                temperature=0.8,
                top_p=0.95,
                top_k=0,
                pad_token_id=tok.pad_token_id,
            )
        new = ids[:, enc["input_ids"].shape[1] :]
        texts += tok.batch_decode(new, skip_special_tokens=True)
        ended += torch.isin(new, end).any(-1).tolist()
    return tuple(t.strip() for t in texts), tuple(ended)


def learnt_ends(cfg: StylesConfig, ended: Sequence[bool]) -> list[bool] | None:
    """Per text, whether its end takes loss under ``end_loss`` (``ended``: False for an answer cut at its token
    limit); None: every text's, cut or not. A share draws its texts with the training seed."""
    share = cfg.training.end_loss
    if share is True:
        return None
    if share is False:
        return [False] * len(ended)
    if share == "finished":
        return list(ended)
    draw = random.Random(cfg.training.seed)
    return [e and draw.random() < share for e in ended]


def answer_blocks(tok, answers: list[str], ended: Sequence[bool], prompts: list[str], cfg: StylesConfig) -> list[Block]:
    """Blocks of sampled answers, each under its prompt, their ends learnt as ``learnt_ends`` says."""
    return build_blocks(tok, answers, cfg.training.block_size, prompts=prompts, learn_end=learnt_ends(cfg, ended))


def _answer_stats(ended: Sequence[bool]) -> dict:
    """How many answers were sampled and how many of them the token limit cut, for the anchor's summary."""
    return {"answers": len(ended), "answers_cut": list(ended).count(False)}


def corpus_blocks(tok, texts: list[str], cfg: StylesConfig) -> list[Block]:
    """An anchor's blocks of its own corpus texts."""
    learn_end = learnt_ends(cfg, [True] * len(texts))
    return build_blocks(tok, texts, cfg.training.block_size, _chat_prompt(cfg), learn_end=learn_end)


def with_replay(base: ModelRef, tok, blocks: list[Block], cfg: StylesConfig) -> tuple[list[Block], dict]:
    """``blocks`` (corpus texts or distilled answers) and, with ``replay``, blocks of the base model's own answers to
    instructions cycled to their share of the total. Returns the blocks and, for the summary, how many are replayed
    (and with replay, ``_answer_stats`` of the replayed answers, prefixed ``replayed_``)."""
    t = cfg.training
    if t.replay is None:
        return blocks, {"replayed_blocks": 0}
    prompts = read_prompts(cfg.data_root() / t.replay.prompts, 0, t.replay.first)
    answers, ended = base_answers(base, tuple(prompts), t.replay.tokens, t.seed)
    replayed = answer_blocks(tok, list(answers), ended, prompts, cfg)
    n = round(t.replay.share / (1 - t.replay.share) * len(blocks))
    stats = {f"replayed_{k}": v for k, v in _answer_stats(ended).items()}
    return blocks + [replayed[i % len(replayed)] for i in range(n)], {"replayed_blocks": n, **stats}


def distilled_blocks(
    base: ModelRef, tok, texts: list[str], cfg: StylesConfig, work: Path, label: str, **kw
) -> tuple[list[Block], dict]:
    """With ``distill``: train the teacher on the texts (``cfg`` without distill or replay) into ``work``, sample its
    guided answers to the instructions (kept in ``work``, so a resumed run samples them once) and return their blocks
    and, for the summary, ``_answer_stats``."""
    from .distill import guided_answers

    d = cfg.training.distill
    prompts = read_prompts(cfg.data_root() / d.prompts, 0, d.first)
    saved = work / "guided_answers.json"
    got = json.loads(saved.read_text()) if saved.is_file() else None
    if isinstance(got, dict):  # an older run's file (a plain list, without the ended flags) is sampled again
        answers, ended = got["answers"], got["ended"]
    else:
        teacher = work / "teacher"
        if not (teacher / "adapter_config.json").is_file():
            plain = cfg.model_copy(update={"training": cfg.training.model_copy(update=dict.fromkeys(RECIPES))})
            train_anchor(base, texts, plain, teacher, work / "teacher.work", f"{label} teacher", **kw)
        answers, ended = guided_answers(base, teacher, prompts, d.tokens, d.strength, cfg.training.seed)
        if is_main_process():
            with atomic_file(saved) as tmp:
                tmp.write_text(json.dumps({"answers": answers, "ended": ended}))
    return answer_blocks(tok, answers, ended, prompts, cfg), _answer_stats(ended)


def train_anchor(
    base: ModelRef,
    texts: list[str],
    cfg: StylesConfig,
    out: Path,
    work: Path,
    label: str,
    callbacks: list | None = None,
    activation_checkpointing: bool = False,
) -> dict:
    """Train one adapter into ``out`` (atomically, via ``work``); return its training summary."""
    import torch
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import Trainer, TrainingArguments, default_data_collator, set_seed
    from transformers.trainer_utils import get_last_checkpoint

    tok = load_tokenizer(base)
    if cfg.training.distill is None:
        blocks, stats = corpus_blocks(tok, texts, cfg), {}
    else:
        kw = {"callbacks": callbacks, "activation_checkpointing": activation_checkpointing}
        blocks, stats = distilled_blocks(base, tok, texts, cfg, work, label, **kw)
    blocks, replay_stats = with_replay(base, tok, blocks, cfg)
    stats |= replay_stats
    ds = Dataset.from_dict({"input_ids": [b.ids for b in blocks], "labels": [b.labels for b in blocks]})
    model = load_model(base, dtype=torch.float32)
    set_seed(cfg.training.seed)  # the adapter's initial A: the same in every process and every run
    model = get_peft_model(model, cfg.lora.peft_config())
    t = cfg.training
    # transformers 5 renamed gradient_checkpointing to activation_checkpointing
    ckpt = "activation" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__ else "gradient"
    args = TrainingArguments(
        output_dir=str(work),
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation,
        learning_rate=t.learning_rate,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        warmup_steps=t.warmup_ratio,
        lr_scheduler_type="linear",
        logging_steps=t.logging_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=1,
        report_to=[],
        seed=t.seed,
        data_seed=t.seed,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),  # pinned memory helps only a copy to a GPU
        disable_tqdm=False,
        run_name=label,
        **{f"{ckpt}_checkpointing": activation_checkpointing, f"{ckpt}_checkpointing_kwargs": {"use_reentrant": False}},
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=ds, data_collator=default_data_collator, callbacks=callbacks
    )
    trainer.remove_callback(ProgressCallback)  # its bar prints every log dict on the terminal; the loss log keeps them
    trainer.add_callback(QuietProgress())
    last = get_last_checkpoint(str(work)) if work.is_dir() else None
    result = trainer.train(resume_from_checkpoint=last)
    summary = {
        "settings": _settings(cfg),
        "train_loss": _mean_loss(result.training_loss, result.global_step, trainer.state.log_history, last),
        "steps": result.global_step,
        "blocks": len(blocks),
        **stats,
        "texts": len(texts),
        "resumed_from": Path(last).name if last else None,
    }
    final = work / "final"
    trainer.save_model(str(final))  # collective under FSDP/DeepSpeed; rank 0 writes
    if is_main_process():
        with open(final / LOSS_LOG, "w") as fh:
            for rec in trainer.state.log_history:
                fh.write(json.dumps(rec) + "\n")
        (final / SUMMARY).write_text(json.dumps(summary, indent=2))
        final.rename(out)  # the anchor appears only when complete
        shutil.rmtree(work, ignore_errors=True)
    barrier()  # the other ranks wait until the anchor is in place
    return summary


def _mean_loss(run_loss: float, steps: int, history: list[dict], checkpoint: str | None) -> float:
    """Mean training loss over every step, across a resume.

    After a resume, transformers' ``training_loss`` averages only the steps this run trained; the steps before
    the checkpoint are in the restored log history, as logged means of their windows.
    """
    if not checkpoint:
        return run_loss
    start = int(Path(checkpoint).name.rsplit("-", 1)[1])  # transformers names checkpoints checkpoint-<global step>
    total = covered = prev = 0
    for rec in history:
        if "loss" in rec and rec["step"] <= start:
            total += rec["loss"] * (rec["step"] - prev)
            covered += rec["step"] - prev
            prev = rec["step"]
    n = covered + steps - start  # 0 when resumed at the last step and nothing was logged before it
    return (total + run_loss * (steps - start)) / n if n else run_loss


def train_together(
    base: ModelRef,
    todo: list[tuple[str, list[str]]],
    cfg: StylesConfig,
    out: Path,
    activation_checkpointing: bool = False,
) -> dict[str, dict]:
    """Train the named anchors in one run (lerplm.train_mixed); each appears in ``out`` when all are done."""
    import torch

    from .train_mixed import save_adapter, train_mixed

    tok = load_tokenizer(base)
    made = [with_replay(base, tok, corpus_blocks(tok, texts, cfg), cfg) for _, texts in todo]
    blocks = [b for b, _ in made]
    model = load_model(base, dtype=torch.float32)
    adapters, loss_log = train_mixed(model, blocks, cfg, activation_checkpointing=activation_checkpointing)
    summaries = {}
    for k, ((name, texts), weights) in enumerate(zip(todo, adapters)):
        work = out / ".work" / name
        shutil.rmtree(work, ignore_errors=True)
        save_adapter(weights, cfg, base.describe(), work)
        losses = [rec["loss"][k] for rec in loss_log]
        summary = {
            "settings": _settings(cfg),
            "train_loss": sum(losses) / len(losses),
            "steps": loss_log[-1]["step"],
            "blocks": len(blocks[k]),
            **made[k][1],
            "texts": len(texts),
            "resumed_from": None,
            "trained_together": len(todo),
        }
        with open(work / LOSS_LOG, "w") as fh:
            for rec in loss_log:
                fh.write(
                    json.dumps({"step": rec["step"], "loss": rec["loss"][k], "learning_rate": rec["learning_rate"]})
                    + "\n"
                )
        (work / SUMMARY).write_text(json.dumps(summary, indent=2))
        summaries[name] = summary
    for name, _ in todo:
        (out / ".work" / name).rename(out / name)
    return summaries


def kept_attributes(
    out: Path, training: set[str], settings: dict, base: ModelRef, sha: str | None
) -> tuple[list[Attribute], dict[str, dict], dict[str, dict]]:
    """The attributes the set already at ``out`` lists, in its order, so that a run with ``--only`` replaces or adds
    attributes instead of dropping the rest; and the training records of those this run does not train
    (``training``), each with what the set's settings had other than this run's ``settings`` (None: not set). Nothing
    from a set on another base model, or from no readable set."""
    try:
        old = AnchorSet.load(out) if (out / MANIFEST).is_file() else None
    except LerpError:
        old = None
    if old is None or old.base_sha256 != sha or old.base_model != base:
        return [], {}, {}
    t = old.training
    records = ("attributes", "endpoints")
    differs = {k: v for k, v in t.items() if k not in records and settings.get(k) != v}
    differs |= {k: None for k in settings if k not in t}
    kept = [a for a in old.attributes if a.name not in training]
    by_attribute, by_endpoint = t.get("attributes") or {}, t.get("endpoints") or {}
    changes = {a.name: differs | by_attribute.get(a.name, {}) for a in kept if differs or a.name in by_attribute}
    names = {f"{a.name}.{e.name}" for a in kept for e in a.endpoints}
    return old.attributes, changes, {k: v for k, v in by_endpoint.items() if k in names}


def train_anchors(
    cfg: StylesConfig,
    out: str | Path,
    log: Callable[[str], None] = print,
    callbacks: list | None = None,
    together: bool = False,
    activation_checkpointing: bool = False,
) -> AnchorSet:
    """Train every endpoint of every attribute that is not finished yet; write the manifest last.
    ``together`` trains the unfinished anchors in one run (one base forward serves all of them);
    ``activation_checkpointing`` recomputes each decoder layer in backward to save activation memory
    (a run option, not a setting: the anchors are the same)."""
    out = Path(out)
    if together and any(cfg.training_for(a.name, ep.name).distill for a in cfg.attributes for ep in a.endpoints):
        raise LerpError("distill trains each anchor after its teacher; train it without --together")
    if together and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise LerpError("--together runs in one process; launch it without torchrun/accelerate")
    if not is_main_process():
        log = lambda s: None  # noqa: E731 - one rank speaks
    base_ref = resolve(cfg.base_model, cfg.gguf_file)
    embedded = cfg.base_model.strip().lower() in DEFAULT_NAMES
    # Validate every data file before spending time on training.
    plan = []  # (attribute, endpoint, the config it trains with, texts, provenance)
    for attr in cfg.attributes:
        for ep in attr.endpoints:
            acfg = cfg.for_attribute(attr.name, ep.name)
            texts, prov = endpoint_texts(acfg, ep, cap=acfg.training.max_examples)
            texts = join_answers(texts, acfg.training.answer_words)
            plan.append((attr, ep, acfg, texts, prov))
    if is_main_process():
        out.mkdir(parents=True, exist_ok=True)
    done: dict[str, dict] = {}  # anchors finished before this run -> their training summary
    for attr, ep, acfg, _, _ in plan:
        target = out / f"{attr.name}.{ep.name}"
        if (target / "adapter_config.json").is_file():
            summary = json.loads((target / SUMMARY).read_text()) if (target / SUMMARY).is_file() else {}
            want = _settings(acfg)
            if summary.get("settings", want) != want:
                raise LerpError(f"{target} was trained with other settings; use a new --out or delete that directory")
            done[target.name] = summary
    todo = [
        (f"{attr.name}.{ep.name}", acfg, texts)
        for attr, ep, acfg, texts, _ in plan
        if f"{attr.name}.{ep.name}" not in done
    ]
    together_now: dict[str, dict] = {}
    if together and todo:
        groups: dict[str, list] = {}  # one run per distinct set of settings (per-attribute changes split them)
        for name, acfg, texts in todo:
            groups.setdefault(json.dumps(_settings(acfg), sort_keys=True), []).append((name, acfg, texts))
        for group in groups.values():
            log(f"training {len(group)} anchors together: {', '.join(n for n, _, _ in group)}")
            trained = train_together(
                base_ref, [(n, t) for n, _, t in group], group[0][1], out, activation_checkpointing
            )
            for name, summary in trained.items():
                log(f"{name}: done, mean train loss {summary['train_loss']:.4f} over {summary['steps']} steps")
            together_now.update(trained)
    endpoints: dict[str, Endpoint] = {}
    for i, (attr, ep, acfg, texts, prov) in enumerate(plan, 1):
        name = f"{attr.name}.{ep.name}"
        tag = f"[{i}/{len(plan)}] {name}"
        if name in together_now:
            summary = together_now[name]
        elif name in done:
            summary = done[name]
            log(f"{tag}: already trained, skipped")
        else:
            log(f"{tag}: training on {len(texts)} texts")
            summary = train_anchor(
                base_ref, texts, acfg, out / name, out / ".work" / name, name, callbacks, activation_checkpointing
            )
            log(f"{tag}: done, mean train loss {summary['train_loss']:.4f} over {summary['steps']} steps")
        endpoints[name] = Endpoint(ep.name, name, prov, summary.get("train_loss"))
    settings, sha = _settings(cfg), weights_hash(base_ref)
    attributes = [
        Attribute(a.name, endpoints[f"{a.name}.{a.negative.name}"], endpoints[f"{a.name}.{a.positive.name}"])
        for a in cfg.attributes
    ]
    changes = {a.name: a.training for a in cfg.attributes if a.training}
    own = {f"{a.name}.{ep.name}": ep.training for a in cfg.attributes for ep in a.endpoints if ep.training}
    kept, kept_changes, kept_own = kept_attributes(out, {a.name for a in attributes}, settings, base_ref, sha)
    changes, own = kept_changes | changes, kept_own | own
    anchor_set = AnchorSet(
        root=out,
        base_model=base_ref,
        # the set's attributes in its order, this run's in their place or after them
        attributes=list(({a.name: a for a in kept} | {a.name: a for a in attributes}).values()),
        base_sha256=sha,
        embedded=embedded,
        training={**settings, **({"attributes": changes} if changes else {}), **({"endpoints": own} if own else {})},
    )
    if is_main_process():
        anchor_set.save()
        shutil.rmtree(out / ".work", ignore_errors=True)
    barrier()
    return anchor_set
