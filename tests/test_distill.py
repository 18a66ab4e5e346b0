"""Distilled anchors: the guided distribution, its sampler on the engine step against uncached passes, and the
recipe."""

from __future__ import annotations

import json

import pytest
import torch

from lerplm import LerpError
from lerplm import distill as distill_mod
from lerplm.config import load_config
from lerplm.data import build_blocks, read_texts
from lerplm.distill import guided_logprobs
from lerplm.models import ModelRef, end_ids, format_prompt, load_tokenizer
from lerplm.train import train_anchors

from .conftest import STYLES
from .test_train import write_config

pytestmark = pytest.mark.skipif(not STYLES.is_dir(), reason="needs ../shared/data/styles")

DISTILL = '[training.distill]\nprompts = "prompts/writing_prompts.txt"\nfirst = 3\ntokens = 5\nstrength = 1.5\n'


def test_guided_distribution_keeps_the_base_models_end_probability():
    torch.manual_seed(0)
    base, teacher = torch.randn(3, 11), torch.randn(3, 11)
    end = torch.tensor([2, 7])
    for strength in (0.5, 1.0, 2.0):
        got = guided_logprobs(base, teacher, end, strength)
        assert torch.allclose(got.logsumexp(-1), torch.zeros(3), atol=1e-6)  # a distribution
        lb, lt = base.log_softmax(-1), teacher.log_softmax(-1)
        assert torch.allclose(got[:, end], lb[:, end])  # ends the answer as often as the base model
        rest = torch.ones(11, dtype=torch.bool)
        rest[end] = False
        want = ((1 - strength) * lb + strength * lt)[:, rest].log_softmax(-1)  # the product over the other tokens
        assert torch.allclose(got[:, rest].log_softmax(-1), want, atol=1e-5)
    assert torch.allclose(guided_logprobs(base, teacher, end, 1e-9), base.log_softmax(-1), atol=1e-6)


@pytest.mark.parametrize("recompute", [False, True])
def test_engine_step_sampler_matches_uncached_passes(monkeypatch, base_dir, tmp_path, recompute):
    """Prompts of different lengths, positions, the engine's cache, base and teacher rows in one batch (the fast
    decoder, or the recompute step other architectures take): with the draw replaced by an argmax, each answer
    equals one computed prompt by prompt from full, uncached passes of the base model and of the PEFT teacher."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    peft = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    peft.save_pretrained(tmp_path / "teacher")
    base = ModelRef(str(base_dir))
    tok = load_tokenizer(base)
    teacher = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), tmp_path / "teacher").eval()
    if recompute:  # as for an architecture the fast decoder does not support
        monkeypatch.setattr("lerplm.engine.unsupported_reason", lambda model, adapters: "a test")
    step, _ = distill_mod.teacher_step(base, tmp_path / "teacher")
    assert type(step).__name__ == ("RecomputeStep" if recompute else "FastDecoder")
    seen = []  # each step's guided log-probabilities, (prompts, vocab)

    def argmax(logp, t, p, gen):
        seen.append(logp)
        return logp.argmax(-1)

    monkeypatch.setattr(distill_mod, "_top_p", argmax)
    prompts = ["Write a poem.", "Explain how a refrigerator keeps food cold, in detail please."]
    end = torch.tensor(sorted(end_ids(tok, teacher)))
    got = distill_mod._batch(step, tok, prompts, 6, 1.7, torch.Generator(), end)
    for r, (prompt, (answer, ended)) in enumerate(zip(prompts, got)):
        ids = tok(format_prompt(tok, prompt), return_tensors="pt", add_special_tokens=False)["input_ids"]
        out = []
        for _ in range(6):
            with torch.no_grad():
                lt = teacher(input_ids=ids).logits[:, -1]
                with teacher.disable_adapter():
                    lb = teacher(input_ids=ids).logits[:, -1]
            want = guided_logprobs(lb, lt, end, 1.7)
            assert torch.allclose(seen[len(out)][r], want[0], atol=1e-4)  # the same distribution, step by step
            nxt = want.argmax(-1)
            if nxt.item() in end.tolist():
                break
            out.append(nxt.item())
            ids = torch.cat([ids, nxt[:, None]], -1)
        assert answer == tok.decode(out, skip_special_tokens=True).strip()
        assert ended == (len(out) < 6)  # an answer that reached the token limit was cut, not ended


def test_distill_trains_the_anchor_on_guided_answers_to_the_prompts(monkeypatch, tmp_path, base_dir):
    cfg = load_config(write_config(tmp_path, base_dir, text_format="chat", extra=DISTILL))
    seen = {}
    real = distill_mod.guided_answers

    def recording(base, teacher, prompts, tokens, strength, seed):
        assert (teacher / "adapter_config.json").is_file() and (tokens, strength) == (5, 1.5)
        seen[teacher.parent.name] = answers = real(base, teacher, prompts, tokens, strength, seed)
        return answers

    monkeypatch.setattr(distill_mod, "guided_answers", recording)
    anchors = tmp_path / "anchors"
    train_anchors(cfg, anchors, log=lambda s: None)
    tok = load_tokenizer(ModelRef(str(base_dir)))
    prompts = read_texts(STYLES / "prompts" / "writing_prompts.txt")[:3]
    for name in ("sentiment.negative", "sentiment.positive"):
        summary = json.loads((anchors / name / "lerplm_training.json").read_text())
        assert summary["settings"]["distill"]["strength"] == 1.5
        assert summary["blocks"] == len(build_blocks(tok, seen[name][0], 16, prompts=prompts))
        assert (summary["answers"], summary["answers_cut"]) == (3, seen[name][1].count(False))
    assert not (anchors / ".work").exists()  # the teacher and the answers go once the anchor is in place


def test_saved_guided_answers_are_not_sampled_again(monkeypatch, tmp_path, base_dir):
    cfg = load_config(write_config(tmp_path, base_dir, text_format="chat", extra=DISTILL))
    for name in ("sentiment.negative", "sentiment.positive"):
        work = tmp_path / "anchors" / ".work" / name
        work.mkdir(parents=True)
        saved = {"answers": ["A kind answer.", "Another one.", "A third."], "ended": [True, False, True]}
        (work / "guided_answers.json").write_text(json.dumps(saved))
    monkeypatch.setattr(distill_mod, "guided_answers", lambda *a: pytest.fail("sampled again"))
    train_anchors(cfg, tmp_path / "anchors", log=lambda s: None)
    assert (tmp_path / "anchors" / "anchors.json").is_file()


def test_guided_answers_saved_without_their_ended_flags_are_sampled_again(monkeypatch, tmp_path, base_dir):
    cfg = load_config(write_config(tmp_path, base_dir, text_format="chat", extra=DISTILL))
    for name in ("sentiment.negative", "sentiment.positive"):
        work = tmp_path / "anchors" / ".work" / name
        work.mkdir(parents=True)
        (work / "guided_answers.json").write_text(json.dumps(["A kind answer.", "Another one.", "A third."]))
    calls = []
    monkeypatch.setattr(
        distill_mod, "guided_answers", lambda *a: calls.append(a) or (["A kind answer."] * 3, [True, False, True])
    )
    train_anchors(cfg, tmp_path / "anchors", log=lambda s: None)
    assert len(calls) == 2  # one teacher's answers per anchor
    summary = json.loads((tmp_path / "anchors" / "sentiment.positive" / "lerplm_training.json").read_text())
    assert (summary["answers"], summary["answers_cut"]) == (3, 1)


def test_replay_joins_the_distilled_answers_and_stays_out_of_the_teacher(monkeypatch, tmp_path, base_dir):
    replay = '[training.replay]\nprompts = "prompts/writing_prompts.txt"\nfirst = 4\ntokens = 6\nshare = 0.25\n'
    cfg = load_config(write_config(tmp_path, base_dir, text_format="chat", extra=DISTILL + replay))
    teachers, real = [], distill_mod.guided_answers

    def recording(base, teacher, *args):
        teachers.append(json.loads((teacher / "lerplm_training.json").read_text()))
        return real(base, teacher, *args)

    monkeypatch.setattr(distill_mod, "guided_answers", recording)
    anchors = tmp_path / "anchors"
    train_anchors(cfg, anchors, log=lambda s: None)
    for t in teachers:  # the teacher learns the corpus's style alone
        assert "replay" not in t["settings"] and "distill" not in t["settings"] and t["replayed_blocks"] == 0
    summary = json.loads((anchors / "sentiment.positive" / "lerplm_training.json").read_text())
    assert summary["settings"]["replay"]["share"] == 0.25 and summary["settings"]["distill"]["first"] == 3
    distilled = summary["blocks"] - summary["replayed_blocks"]
    assert summary["replayed_blocks"] == round(distilled / 3) > 0  # a quarter of all blocks
    assert (summary["answers"], summary["replayed_answers"]) == (3, 4)


def test_distill_settings_are_checked(tmp_path, base_dir):
    with pytest.raises(LerpError, match="text_format"):
        load_config(write_config(tmp_path, base_dir, extra=DISTILL))
    cfg = load_config(write_config(tmp_path, base_dir, text_format="chat", extra=DISTILL))
    with pytest.raises(LerpError, match="without --together"):
        train_anchors(cfg, tmp_path / "anchors", log=lambda s: None, together=True)
