"""Training all anchors in one run equals training each alone (same batches, same optimiser)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, get_linear_schedule_with_warmup

from lerplm.config import StylesConfig
from lerplm.data import IGNORE, Block
from lerplm.runtime import LoraWeights, MixedRuntime
from lerplm.train_mixed import _cycle, fresh_adapters, head_is_plain, save_adapter, token_losses, train_mixed


def tiny_config(**training) -> StylesConfig:
    return StylesConfig.model_validate(
        {
            "base_model": "x",
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
            "training": {
                "batch_size": 2,
                "block_size": 12,
                "learning_rate": 5e-3,
                "max_steps": 4,
                "warmup_ratio": 0.25,
                "logging_steps": 1,
                **training,
            },
            "attributes": [
                {"name": "a", "negative": {"name": "n", "files": ["x"]}, "positive": {"name": "p", "files": ["y"]}}
            ],
        }
    )


def alone(model, adapter: LoraWeights, blocks, cfg: StylesConfig, seed: int):
    """One adapter trained the ordinary way: PEFT, mean loss, clip_grad_norm_, AdamW, linear schedule."""
    t = cfg.training
    peft_model = get_peft_model(
        copy.deepcopy(model),
        LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, target_modules=cfg.lora.target_modules),
    )
    with torch.no_grad():
        for name, (a, _, _) in adapter.modules.items():
            peft_model.base_model.model.get_submodule(name).lora_A["default"].weight.copy_(a)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=0.0)
    sched = get_linear_schedule_with_warmup(opt, math.ceil(t.warmup_ratio * t.max_steps), t.max_steps)
    stream = _cycle(blocks, t.batch_size, seed)
    losses = []
    for _ in range(t.max_steps):
        rows = next(stream)
        ids, labels = torch.tensor([r.ids for r in rows]), torch.tensor([r.labels for r in rows])
        logits = peft_model(input_ids=ids).logits[:, :-1]
        loss = F.cross_entropy(logits.flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(loss.item())
    out = {
        n: (
            peft_model.base_model.model.get_submodule(n).lora_A["default"].weight.detach(),
            peft_model.base_model.model.get_submodule(n).lora_B["default"].weight.detach(),
        )
        for n in adapter.modules
    }
    return out, losses


def test_mixed_training_equals_training_each_anchor_alone(base_dir, tmp_path):
    cfg = tiny_config()
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    rand = lambda: torch.randint(0, vocab, (12,), generator=g).tolist()  # noqa: E731
    # anchor 1 takes loss on the last 8 tokens only (a chat-formatted prompt would be masked like this)
    blocks = [
        [Block(ids, ids if k != 1 else [IGNORE] * 4 + ids[4:]) for ids in (rand() for _ in range(n))]
        for k, n in enumerate((5, 7, 6))
    ]
    init = fresh_adapters(model, cfg, 3, cfg.training.seed)
    reference = copy.deepcopy(model)
    adapters, log = train_mixed(model, blocks, cfg, progress=False)
    assert len(log) == 4 and all(isinstance(x, float) for x in log[-1]["loss"])
    assert type(model.get_submodule("model.layers.0.self_attn.q_proj")) is torch.nn.Linear  # base model restored
    for k in range(3):
        ref, losses = alone(reference, init[k], blocks[k], cfg, cfg.training.seed + k)
        assert [r["loss"][k] for r in log] == pytest.approx(losses, rel=1e-4)
        for name, (a, b) in ref.items():
            got_a, got_b, s = adapters[k].modules[name]
            assert s == pytest.approx(cfg.lora.alpha / cfg.lora.r)
            assert b.abs().max() > 0  # trained, not the zero init
            torch.testing.assert_close(got_a, a, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(got_b, b, atol=1e-5, rtol=1e-4)

    # saved as standard PEFT adapters that plain PEFT and lerplm read back identically
    save_adapter(adapters[1], cfg, str(base_dir), tmp_path / "a1")
    ids = torch.tensor([blocks[1][0].ids])
    peft_logits = PeftModel.from_pretrained(copy.deepcopy(reference), str(tmp_path / "a1")).eval()(input_ids=ids).logits
    runtime = MixedRuntime.from_dirs(reference, [tmp_path / "a1"])
    runtime.set_coefficients([[1.0]])
    with torch.no_grad():
        torch.testing.assert_close(reference(input_ids=ids).logits, peft_logits, atol=1e-4, rtol=1e-4)


def test_grouped_mode_equals_one_hot_rows_and_zero_blocks_are_skipped_exactly(base_dir):
    """Grouped mode (row block k -> adapter k) and the zero-skipping path compute the full product's function."""
    cfg = tiny_config()
    model = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    adapters = fresh_adapters(model, cfg, 3, 0)
    for ad in adapters:  # non-zero B so that every adapter changes the output
        for name, (a, b, s) in list(ad.modules.items()):
            ad.modules[name] = (a, torch.randn(b.shape, generator=torch.Generator().manual_seed(len(name))) * 0.1, s)
    runtime = MixedRuntime(model, adapters)
    ids = torch.randint(0, model.config.vocab_size, (6, 9), generator=torch.Generator().manual_seed(1))
    scale = torch.tensor([0.5, 2.0, 1.5])
    with torch.no_grad():
        runtime.set_coefficients(torch.eye(3).repeat_interleave(2, 0) * scale)  # rows 0-1 adapter 0, ...
        assert runtime.state.blocks is None  # every adapter is used by some row
        one_hot = model(input_ids=ids).logits
        runtime.state.set_groups(scale)
        grouped = model(input_ids=ids).logits
        torch.testing.assert_close(grouped, one_hot, atol=1e-5, rtol=1e-5)

        c = torch.tensor([[0.3, 0.0, 0.7], [0.0, 0.0, 1.0]])  # adapter 1 unused by the batch: skipped
        runtime.set_coefficients(c)
        assert runtime.state.blocks == [(0, 1), (2, 3)]
        skipped = model(input_ids=ids[:2]).logits
        runtime.set_coefficients(c + torch.tensor([0.0, 1e-30, 0.0]))  # same function, no adapter skipped
        assert runtime.state.blocks is None
        torch.testing.assert_close(skipped, model(input_ids=ids[:2]).logits, atol=1e-5, rtol=1e-5)
        runtime.set_coefficients(torch.zeros(2, 3))
        assert runtime.state.blocks == []
        with runtime.detached() as plain:
            base = plain(input_ids=ids[:2]).logits
        torch.testing.assert_close(model(input_ids=ids[:2]).logits, base)


def test_chunked_loss_equals_full_logits_and_is_refused_for_other_heads(base_dir, monkeypatch):
    """The chunked loss (no full logits) gives the full-logit loss and gradients; a model whose logits
    are not head(decoder(x)) (soft-capping, scaling) keeps the full-logit path."""
    import types

    import lerplm.train_mixed as tm

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    adapters = fresh_adapters(model, tiny_config(), 2, 0)
    for ad in adapters:  # non-zero B, so that A's gradients are not zero too
        for name, (a, b, s) in list(ad.modules.items()):
            ad.modules[name] = (a, torch.randn(b.shape, generator=torch.Generator().manual_seed(len(name))) * 0.1, s)
    runtime = MixedRuntime(model, adapters)
    params = runtime.trainable(0.0)
    ids = torch.randint(0, model.config.vocab_size, (4, 9), generator=torch.Generator().manual_seed(2))
    labels = ids[:, 1:].clone()
    labels[0, :3] = IGNORE
    runtime.state.set_groups(torch.tensor([0.5, 2.0]))
    monkeypatch.setattr(tm, "LOSS_CHUNK_TOKENS", 5)  # 32 positions in 7 chunks
    got = []
    for chunked in (False, True):
        loss = token_losses(model, ids, labels, chunked)
        (loss.view(2, -1).sum(1) * torch.tensor([1.0, 3.0])).sum().backward()
        got.append((loss.detach(), [p.grad.clone() for p in params]))
        for p in params:
            p.grad = None
    assert got[0][0][0, :3].eq(0).all() and got[0][0].shape == labels.shape
    torch.testing.assert_close(got[1][0], got[0][0], atol=1e-5, rtol=1e-5)
    assert all(g.abs().max() > 0 for g in got[0][1])
    for g_chunk, g_full in zip(got[1][1], got[0][1]):
        torch.testing.assert_close(g_chunk, g_full, atol=1e-6, rtol=1e-4)
    runtime.state.set(None)
    runtime.detach()

    assert head_is_plain(model, ids[:1])
    forward = model.forward
    model.forward = lambda **kw: types.SimpleNamespace(logits=forward(**kw).logits * 2.0)  # a scaled head
    assert not head_is_plain(model, ids[:1])


def test_gradient_checkpointing_trains_the_same_adapters_with_dropout(base_dir):
    """Recomputing each layer in backward (dropout's RNG replayed) changes memory, not the result."""
    cfg = tiny_config(max_steps=3)
    cfg.lora.dropout = 0.2
    g = torch.Generator().manual_seed(0)
    blocks = [[Block(ids, ids) for ids in torch.randint(0, 100, (4, 12), generator=g).tolist()] for _ in range(2)]
    results, calls = [], []
    for ckpt in (False, True):
        torch.manual_seed(0)  # dropout masks
        model = AutoModelForCausalLM.from_pretrained(base_dir)
        n = [0]
        model.model.layers[0].input_layernorm.register_forward_pre_hook(lambda *_: n.__setitem__(0, n[0] + 1))
        results.append(train_mixed(model, blocks, cfg, progress=False, activation_checkpointing=ckpt))
        calls.append(n[0])
        assert not any(getattr(m, "gradient_checkpointing", False) for m in model.modules())  # switched off again
    assert calls[1] == calls[0] + 3  # layer 0 ran once more per step: recomputed in backward
    (plain, log_plain), (ckpt, log_ckpt) = results
    flat = lambda log: [x for r in log for x in r["loss"]]  # noqa: E731
    assert flat(log_ckpt) == pytest.approx(flat(log_plain), rel=1e-5)
    for k in range(2):
        for name, (a, b, _) in plain[k].modules.items():
            assert b.abs().max() > 0
            torch.testing.assert_close(ckpt[k].modules[name][0], a, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(ckpt[k].modules[name][1], b, atol=1e-6, rtol=1e-5)
