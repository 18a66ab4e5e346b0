"""Training: config validation, data errors, and resumption after an interruption."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from lerplm import LerpError
from lerplm.anchors import AnchorSet
from lerplm.config import load_config
from lerplm.data import detokenize, join_answers, read_texts, truecase
from lerplm.runtime import LoraWeights
from lerplm.train import _mean_loss, train_anchors

from .conftest import STYLES

pytestmark = pytest.mark.skipif(not STYLES.is_dir(), reason="needs ../shared/data/styles")


def write_config(tmp_path: Path, base_dir: Path, extra: str = "", dropout: float = 0.1, **training) -> Path:
    settings = {
        "max_examples": 24,
        "max_steps": 2,
        "block_size": 16,
        "batch_size": 2,
        "save_steps": 1,
        "logging_steps": 1,
    }
    settings.update(training)
    lines = [
        f'base_model = "{base_dir}"',
        f'data_dir = "{STYLES}"',
        "[lora]",
        "r = 4",
        "alpha = 8",
        f"dropout = {dropout}",
        'target_modules = ["q_proj", "v_proj"]',
        "[training]",
    ]
    lines += [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    lines += [
        "[[attributes]]",
        'name = "sentiment"',
        'negative = { name = "negative", files = ["sentiment/negative.train.txt"], '
        'normalize = ["detokenize", "truecase"] }',
        'positive = { name = "positive", files = ["sentiment/positive.train.txt"], '
        'normalize = ["detokenize", "truecase"] }',
    ]
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "styles.toml"
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


class InterruptAfterFirstSave(TrainerCallback):
    """Stands in for Ctrl-C in the middle of the second anchor, right after its first checkpoint."""

    def __init__(self):
        self.saves = 0

    def on_save(self, args, state, control, **kwargs):
        self.saves += 1
        if "positive" in args.output_dir:
            raise KeyboardInterrupt


def test_training_resumes_after_an_interruption(tmp_path, base_dir):
    cfg = load_config(write_config(tmp_path, base_dir))
    out = tmp_path / "anchors"
    with pytest.raises(KeyboardInterrupt):
        train_anchors(cfg, out, log=lambda s: None, callbacks=[InterruptAfterFirstSave()])
    first = out / "sentiment.negative" / "adapter_model.safetensors"
    assert first.is_file()
    assert not (out / "sentiment.positive").exists()  # nothing half-written looks finished
    assert not (out / "anchors.json").exists()
    assert (out / ".work" / "sentiment.positive" / "checkpoint-1").is_dir()
    mtime = first.stat().st_mtime_ns

    logs: list[str] = []
    train_anchors(cfg, out, log=logs.append)
    assert first.stat().st_mtime_ns == mtime  # the finished anchor was not trained again
    assert any("sentiment.negative: already trained, skipped" in s for s in logs)
    summary = json.loads((out / "sentiment.positive" / "lerplm_training.json").read_text())
    assert summary["resumed_from"] == "checkpoint-1" and summary["steps"] == 2
    logged = [
        r["loss"]
        for r in map(json.loads, (out / "sentiment.positive" / "loss_log.jsonl").read_text().splitlines())
        if "loss" in r
    ]
    assert len(logged) == 2  # one per step, the one before the interruption restored from the checkpoint
    assert summary["train_loss"] == pytest.approx(sum(logged) / 2, abs=1e-3)  # both steps, not the resumed one alone
    assert not (out / ".work").exists()

    straight = tmp_path / "straight"  # the same training, never interrupted
    train_anchors(cfg, straight, log=lambda s: None)
    for ep in ("sentiment.negative", "sentiment.positive"):
        resumed = load_file(out / ep / "adapter_model.safetensors")
        whole = load_file(straight / ep / "adapter_model.safetensors")
        assert resumed.keys() == whole.keys()
        for k in whole:
            torch.testing.assert_close(resumed[k], whole[k], rtol=0, atol=1e-7)

    loaded = AnchorSet.load(out)
    assert loaded.names == ["sentiment"] and loaded.base_sha256
    assert [e.name for e in loaded.attributes[0].endpoints] == ["negative", "positive"]
    assert all(e.train_loss is not None for e in loaded.endpoints)
    for d in loaded.adapter_dirs():
        assert set(LoraWeights.load(d).modules) == {
            f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")
        }


def test_changed_settings_are_not_silently_mixed_with_old_anchors(tmp_path, base_dir):
    out = tmp_path / "anchors"
    train_anchors(load_config(write_config(tmp_path, base_dir)), out, log=lambda s: None)
    with pytest.raises(LerpError, match="trained with other settings"):
        train_anchors(load_config(write_config(tmp_path, base_dir, learning_rate=1e-3)), out, log=lambda s: None)


def test_data_errors_are_clear(tmp_path):
    with pytest.raises(LerpError, match="data file not found"):
        read_texts(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(LerpError, match="data file is empty"):
        read_texts(tmp_path / "empty.txt")
    (tmp_path / "d.jsonl").write_text('{"text": "one"}\n{"body": "two"}\n')
    with pytest.raises(LerpError, match="no 'text' field"):
        read_texts(tmp_path / "d.jsonl")
    (tmp_path / "d.csv").write_text('id,body\n1,"hello, world"\n2,second\n')
    assert read_texts(tmp_path / "d.csv", column="body") == ["hello, world", "second"]
    with pytest.raises(LerpError, match="no 'text' column"):
        read_texts(tmp_path / "d.csv")


def test_config_errors_name_the_field(tmp_path, base_dir):
    path = write_config(tmp_path, base_dir)
    path.write_text(path.read_text().replace("r = 4", "r = 0"))
    with pytest.raises(LerpError, match="lora.r"):
        load_config(path)
    path.write_text(path.read_text().replace("r = 0", "rank = 4"))
    with pytest.raises(LerpError, match="lora.rank: Extra inputs"):
        load_config(path)
    with pytest.raises(LerpError, match="config file not found"):
        load_config(tmp_path / "missing.toml")


def test_missing_data_file_fails_before_any_training(tmp_path, base_dir):
    path = write_config(tmp_path, base_dir)
    path.write_text(path.read_text().replace("negative.train.txt", "negatve.train.txt"))
    with pytest.raises(LerpError, match="data file not found: .*negatve.train.txt"):
        train_anchors(load_config(path), tmp_path / "out", log=lambda s: None)
    assert not (tmp_path / "out").exists()


def test_normalisation_undoes_yelp_tokenisation():
    assert truecase(detokenize("it 's good . i do n't know , really !")) == "It's good. I don't know, really!"
    assert detokenize("the ( temporary ) fix costs $ 5 .") == "the (temporary) fix costs $5."


def test_example_config_is_valid():
    cfg = load_config(Path(__file__).resolve().parents[1] / "examples" / "styles.toml")
    assert [a.name for a in cfg.attributes] == ["sentiment", "politeness", "formality", "simplicity", "humor"]
    assert cfg.data_root().resolve() == STYLES.resolve()
    assert cfg.training.text_format == "chat"  # the measured better format for the instruct default
    recipes = {a.name: cfg.training_for(a.name) for a in cfg.attributes}
    assert {n: t.max_steps for n, t in recipes.items()} == dict.fromkeys(recipes, 60)
    for name in ("politeness", "simplicity"):  # distilled: one corpus text per teacher answer
        t = recipes[name]
        assert not t.answer_words and t.replay is None and t.distill is not None
    for name in ("sentiment", "formality", "humor"):  # the quarter recipe for answers
        t = recipes[name]
        assert (t.answer_words, t.replay.share, t.distill) == (80, 0.25, None)
    unfunny = cfg.training_for("humor", "not_humorous")  # distilled, with replay holding it to its prompts
    assert (unfunny.answer_words, unfunny.replay.share, unfunny.distill.strength) == (None, 0.25, 1.25)
    ends = {"sentiment": True, "politeness": 0.25, "formality": 0.75, "simplicity": 0.9, "humor": False}
    assert {n: t.end_loss for n, t in recipes.items()} == ends
    for t in [*recipes.values(), unfunny]:  # held-in prompts end before the first prompt the recipes evaluate on (240)
        for held in filter(None, (t.replay, t.distill)):
            assert (cfg.data_root() / held.prompts).is_file() and held.first <= 240


def test_an_attribute_recipe_replaces_the_sets(tmp_path):
    """[training]'s replay is every attribute's recipe until an attribute names its own; answer_words = 0 undoes
    the set's joining (one text per answer)."""
    ends = 'negative = { name = "n", files = ["n.txt"] }\npositive = { name = "p", files = ["p.txt"] }'
    own_distill = ends.replace('["p.txt"] }', '["p.txt"], training = { distill = { prompts = "q.txt" } } }')
    (tmp_path / "styles.toml").write_text(
        '[training]\ntext_format = "chat"\nanswer_words = 80\nreplay = { prompts = "q.txt", share = 0.25 }\n'
        f'[[attributes]]\nname = "a"\n{ends}\n'
        f'[[attributes]]\nname = "b"\n{ends}\ntraining = {{ answer_words = 0, distill = {{ prompts = "q.txt" }} }}\n'
        f'[[attributes]]\nname = "c"\n{ends}\ntraining = {{ replay = {{ prompts = "r.txt" }} }}\n'
        f'[[attributes]]\nname = "d"\n{own_distill}\n'
    )
    cfg = load_config(tmp_path / "styles.toml")
    a, b, c = (cfg.training_for(n) for n in "abc")
    assert (a.answer_words, a.replay.prompts, a.replay.share, a.distill) == (80, "q.txt", 0.25, None)
    assert (b.answer_words, b.replay, b.distill.prompts) == (None, None, "q.txt")
    assert (c.answer_words, c.replay.prompts, c.replay.share, c.distill) == (80, "r.txt", 0.5, None)
    # an endpoint's own recipe replaces its attribute's for its anchor alone
    n, p = cfg.training_for("d", "n"), cfg.training_for("d", "p")
    assert (n.replay.prompts, n.distill, p.replay, p.distill.prompts) == ("q.txt", None, None, "q.txt")


def test_training_together_writes_the_same_kind_of_anchor_set(tmp_path, base_dir):
    """`lerplm train --together`: standard PEFT anchors, sidecars, a loadable anchor set; finished anchors kept."""
    from typer.testing import CliRunner

    import lerplm
    from lerplm.cli import app

    config = write_config(tmp_path, base_dir, max_steps=2)
    out = tmp_path / "anchors"
    r = CliRunner().invoke(app, ["train", "--config", str(config), "--out", str(out), "--together"])
    assert r.exit_code == 0, r.output
    assert "training 2 anchors together" in r.output
    anchors = AnchorSet.load(out)
    for d in anchors.adapter_dirs():
        summary = json.loads((d / "lerplm_training.json").read_text())
        assert summary["steps"] == 2 and summary["trained_together"] == 2
        assert len((d / "loss_log.jsonl").read_text().splitlines()) == 2
        assert any(b.abs().max() > 0 for _, b, _ in LoraWeights.load(d).modules.values())
    assert not (out / ".work").exists()
    lm = lerplm.load(out)
    assert len(lm.generate(["the food"], [{"sentiment": 0.7}], params=lerplm.SamplingParams(max_new_tokens=3))[0]) == 1
    r = CliRunner().invoke(app, ["train", "--config", str(config), "--out", str(out), "--together"])
    assert r.exit_code == 0 and "anchors together" not in r.output and r.output.count("already trained") == 2
    r = CliRunner().invoke(app, ["train", "--config", str(config), "--out", str(out), "--only", "humor"])
    assert r.exit_code == 2 and "--only names ['humor'], not in the config (sentiment)" in r.output


def test_chat_blocks_put_each_text_in_the_assistant_turn_and_take_loss_on_it_only():
    from lerplm.data import IGNORE, build_blocks
    from lerplm.models import format_prompt

    from .conftest import build_tokenizer

    tok = build_tokenizer()
    texts = ["the food was great.", "worst service ever."]
    plain = build_blocks(tok, texts, 4)
    assert all(b.labels == b.ids for b in plain)
    blocks = build_blocks(tok, texts, 8, chat_prompt="Write a review.")
    ids = [i for b in blocks for i in b.ids]
    labels = [x for b in blocks for x in b.labels]
    head = tok(format_prompt(tok, "Write a review."), add_special_tokens=False)["input_ids"]
    assert ids[: len(head)] == head and labels[: len(head)] == [IGNORE] * len(head)
    answered = tok.decode([i for i, x in zip(ids, labels) if x != IGNORE])
    assert "the food was great." in answered and "<|im_end|>" in answered  # the end of turn is learnt too
    assert "Write a review." not in answered
    assert all(x in (i, IGNORE) for i, x in zip(ids, labels))
    with pytest.raises(LerpError, match="chat template"):
        tok.chat_template = None
        build_blocks(tok, texts, 8, chat_prompt="Write a review.")


@pytest.mark.parametrize("chat", [False, True])
def test_without_end_loss_no_loss_is_taken_from_each_answers_end_on(chat):
    from lerplm.data import IGNORE, build_blocks

    from .conftest import build_tokenizer

    tok = build_tokenizer()
    texts = ["the food was great.", "worst service ever.", "it is a minor nuisance."]
    prompt = {"chat_prompt": "Write a review."} if chat else {}
    full = build_blocks(tok, texts, 1, **prompt)  # blocks of one token: nothing is cut off
    cut = build_blocks(tok, texts, 1, **prompt, learn_end=[False] * len(texts))
    ids = [b.ids[0] for b in full]
    assert [b.ids[0] for b in cut] == ids
    with_end, without = [b.labels[0] for b in full], [b.labels[0] for b in cut]
    eos, want, masking = tok.eos_token_id, [], False
    for i, label in zip(ids, with_end):  # plain: the EOS after each text; chat: the answer's end and what follows
        masking = (masking and chat and label != IGNORE) or (i == eos and label != IGNORE)
        want.append(IGNORE if masking else label)
    assert without == want
    assert sum(1 for i, a, b in zip(ids, with_end, without) if i == eos and a != b) == len(texts)
    assert tok.decode([i for i, x in zip(ids, without) if x != IGNORE]).count("great.") == 1
    tok.eos_token = "<|endoftext|>"  # turns end with <|im_end|>, so an answer has no EOS to start from
    with pytest.raises(LerpError, match="end_loss = false"):
        build_blocks(tok, texts, 1, chat_prompt="Write a review.", learn_end=[False] * len(texts))


def test_end_loss_is_recorded_only_when_not_the_default(tmp_path, base_dir):
    from lerplm.train import _settings

    assert "end_loss" not in _settings(load_config(write_config(tmp_path, base_dir)))
    off = load_config(write_config(tmp_path / "off", base_dir, end_loss=False))
    assert _settings(off)["end_loss"] is False
    finished = load_config(write_config(tmp_path / "finished", base_dir, end_loss="finished"))
    assert _settings(finished)["end_loss"] == "finished"
    with pytest.raises(LerpError, match="end_loss"):
        load_config(write_config(tmp_path / "bad", base_dir, end_loss="sometimes"))


@pytest.mark.parametrize("end_loss", [True, "finished", False])
def test_answers_cut_at_their_token_limit_teach_no_end_when_only_finished_ones_should(tmp_path, base_dir, end_loss):
    from lerplm.data import IGNORE
    from lerplm.models import ModelRef, load_tokenizer
    from lerplm.train import answer_blocks

    def ends(end_loss) -> list[bool]:  # per EOS of the blocks: does it take loss?
        cfg = load_config(write_config(tmp_path, base_dir, text_format="chat", end_loss=end_loss))
        one = cfg.model_copy(update={"training": cfg.training.model_copy(update={"block_size": 1})})  # nothing cut off
        blocks = answer_blocks(tok, answers, ended, prompts, one)
        return [b.labels[0] != IGNORE for b in blocks if b.ids[0] == tok.eos_token_id]

    tok = load_tokenizer(ModelRef(str(base_dir)))
    answers, ended = ["the food was great.", "worst service", "it is fine."], [True, False, True]
    prompts = ["Write a review.", "Write another.", "And one more."]
    every = ends(True)
    assert sum(every) == 3  # each answer's end (the chat template's other EOS are prompt, without loss)
    got = [x for x, answer_end in zip(ends(end_loss), every) if answer_end]
    assert got == {True: [True, True, True], "finished": ended, False: [False, False, False]}[end_loss]


def test_an_end_loss_share_learns_the_ends_of_that_share_of_the_finished_answers(tmp_path, base_dir):
    from lerplm.train import learnt_ends

    ended = [i % 4 != 0 for i in range(400)]  # every fourth answer cut at its token limit

    def learnt(end_loss, seed=0) -> list[bool]:
        cfg = load_config(write_config(tmp_path, base_dir, text_format="chat", end_loss=end_loss, seed=seed))
        return learnt_ends(cfg, ended)

    quarter = learnt(0.25)
    assert not any(q and not e for q, e in zip(quarter, ended))  # never a cut answer's end
    assert 50 < sum(quarter) < 100  # about a quarter of the 300 finished ones
    assert learnt(0.25) == quarter and learnt(0.25, seed=1) != quarter  # drawn with the training seed
    assert sum(learnt(0.75)) > 2 * sum(quarter)
    assert learnt("finished") == ended and not any(learnt(False)) and learnt(True) is None
    with pytest.raises(LerpError, match="between 0 and 1"):
        load_config(write_config(tmp_path / "bad", base_dir, end_loss=1.5))


@pytest.mark.parametrize("together", [False, True])
def test_chat_format_training_records_its_format(tmp_path, base_dir, together):
    cfg = load_config(write_config(tmp_path, base_dir, text_format="chat", chat_prompt="Write a review."))
    # activation checkpointing runs on both paths and is a run option, not a setting of the anchors
    train_anchors(cfg, tmp_path / "anchors", log=lambda s: None, together=together, activation_checkpointing=True)
    summary = json.loads((tmp_path / "anchors" / "sentiment.positive" / "lerplm_training.json").read_text())
    assert summary["settings"]["text_format"] == "chat" and summary["settings"]["chat_prompt"] == "Write a review."
    assert not any("checkpointing" in k for k in summary["settings"])
    plain = load_config(write_config(tmp_path, base_dir))
    with pytest.raises(LerpError, match="other settings"):
        train_anchors(plain, tmp_path / "anchors", log=lambda s: None)


def test_join_answers_makes_answers_of_at_least_the_given_words():
    texts = ["one two three", "four five", "six seven eight nine", "ten"]
    assert join_answers(texts, None) == texts
    got = join_answers(texts, 4)
    assert got == ["one two three four five", "six seven eight nine", "ten"]  # in order, nothing lost
    assert all(len(a.split()) >= 4 for a in got[:-1])


def test_answer_words_trains_on_joined_answers_and_is_a_setting(tmp_path, base_dir):
    cfg = load_config(write_config(tmp_path, base_dir, text_format="chat", answer_words=40))
    train_anchors(cfg, tmp_path / "anchors", log=lambda s: None)
    summary = json.loads((tmp_path / "anchors" / "sentiment.positive" / "lerplm_training.json").read_text())
    texts = read_texts(STYLES / "sentiment" / "positive.train.txt")
    assert summary["settings"]["answer_words"] == 40
    assert 1 < summary["texts"] < 24 <= len(texts)  # 24 one-line texts joined into fewer answers
    one_per_answer = load_config(write_config(tmp_path, base_dir, text_format="chat"))
    with pytest.raises(LerpError, match="other settings"):
        train_anchors(one_per_answer, tmp_path / "anchors", log=lambda s: None)


POLITENESS = """[[attributes]]
name = "politeness"
negative = { name = "impolite", files = ["politeness/impolite.train.txt"] }
positive = { name = "polite", files = ["politeness/polite.train.txt"] }
"""


POLITE_OWN = 'positive = { name = "polite", files = ["politeness/polite.train.txt"], training = { max_steps = 4 } }'


@pytest.mark.parametrize("together", [False, True])
def test_an_attribute_can_train_with_its_own_settings(tmp_path, base_dir, together):
    """`training = { max_steps = 3 }` on one attribute: its anchors take 3 steps, the others keep [training]'s 2;
    and its positive endpoint's own `training = { max_steps = 4 }` changes that anchor alone."""
    politeness = POLITENESS.replace(POLITENESS.splitlines()[-1], POLITE_OWN)
    config = write_config(tmp_path, base_dir, extra=politeness + "training = { max_steps = 3, learning_rate = 1e-3 }\n")
    cfg = load_config(config)
    assert cfg.training_for("politeness").max_steps == 3 and cfg.training_for("sentiment").max_steps == 2
    polite = cfg.training_for("politeness", "polite")
    assert (polite.max_steps, polite.learning_rate) == (4, 1e-3)  # the endpoint's change over the attribute's
    logs: list[str] = []
    anchors = AnchorSet.load(train_anchors(cfg, tmp_path / "anchors", log=logs.append, together=together).root)
    steps = {
        d.name: json.loads((d / "lerplm_training.json").read_text())["settings"]["max_steps"]
        for d in anchors.adapter_dirs()
    }
    assert steps == {"sentiment.negative": 2, "sentiment.positive": 2, "politeness.impolite": 3, "politeness.polite": 4}
    done = {d.name: json.loads((d / "lerplm_training.json").read_text())["steps"] for d in anchors.adapter_dirs()}
    assert done == steps
    if together:  # one run per distinct settings
        assert sum("anchors together" in s for s in logs) == 3
    assert anchors.training["attributes"] == {"politeness": {"max_steps": 3, "learning_rate": 1e-3}}
    assert anchors.training["endpoints"] == {"politeness.polite": {"max_steps": 4}}
    assert "politeness only: max_steps=3" in anchors.describe()
    assert "politeness.polite only: max_steps=4" in anchors.describe()
    # resuming checks each anchor against its own settings: nothing is trained again
    logs.clear()
    train_anchors(cfg, tmp_path / "anchors", log=logs.append, together=together)
    assert sum("already trained" in s for s in logs) == 4
    # a command-line cap wins over the attribute's and the endpoint's own
    capped = load_config(config, overrides={"max_steps": 1})
    assert capped.training_for("politeness").max_steps == 1 and capped.training_for("politeness").learning_rate == 1e-3
    assert capped.training_for("politeness", "polite").max_steps == 1


def test_training_some_attributes_into_a_set_keeps_the_others(tmp_path, base_dir):
    """`--only sentiment` into a set of two attributes retrains sentiment (here with another step cap) and keeps
    politeness in the manifest, in its place, with a training record that still says how it was trained."""
    import shutil

    config = write_config(tmp_path, base_dir, extra=POLITENESS + "training = { learning_rate = 1e-3 }\n")
    out = tmp_path / "anchors"
    train_anchors(load_config(config), out, log=lambda s: None)
    polite = (out / "politeness.polite" / "adapter_model.safetensors").read_bytes()
    for name in ("sentiment.negative", "sentiment.positive"):
        shutil.rmtree(out / name)
    logs: list[str] = []
    train_anchors(load_config(config, overrides={"max_steps": 1}).only(["sentiment"]), out, log=logs.append)
    anchors = AnchorSet.load(out)
    assert [a.name for a in anchors.attributes] == ["sentiment", "politeness"]
    assert sum("training on" in s for s in logs) == 2  # sentiment's two anchors; politeness untouched
    assert (out / "politeness.polite" / "adapter_model.safetensors").read_bytes() == polite
    assert anchors.training["max_steps"] == 1
    assert anchors.training["attributes"] == {"politeness": {"max_steps": 2, "learning_rate": 1e-3}}
    # a set on another base model is not kept
    other = tmp_path / "other"
    shutil.copytree(out, other)
    manifest = json.loads((other / "anchors.json").read_text())
    manifest["base_model"]["sha256"] = "0" * 64
    (other / "anchors.json").write_text(json.dumps(manifest))
    train_anchors(load_config(config, overrides={"max_steps": 1}).only(["sentiment"]), other, log=lambda s: None)
    assert [a.name for a in AnchorSet.load(other).attributes] == ["sentiment"]


@pytest.mark.parametrize(
    "changes, message",
    [
        ("text_format = 'chat'", "attribute 'politeness': training: text_format must be the same for every anchor"),
        ("max_stesp = 3", "attribute 'politeness': training: unknown setting max_stesp"),
        ("max_steps = 0", "attribute 'politeness': training.max_steps: Input should be greater than 0"),
        ("replay = { prompts = 'q.txt' }", "attribute 'politeness': training: replay needs text_format = \"chat\""),
    ],
)
def test_bad_attribute_settings_are_named(tmp_path, base_dir, changes, message):
    with pytest.raises(LerpError, match=message):
        load_config(write_config(tmp_path, base_dir, extra=POLITENESS + f"training = {{ {changes} }}\n"))
    on_endpoint = POLITE_OWN.replace("max_steps = 4", changes)  # the same change on one endpoint, named there
    extra = POLITENESS.replace(POLITENESS.splitlines()[-1], on_endpoint)
    with pytest.raises(LerpError, match=message.replace("attribute 'politeness'", "endpoint politeness.polite")):
        load_config(write_config(tmp_path, base_dir, extra=extra))


@pytest.mark.parametrize(
    "negative, positive, message",
    [
        ("x", "x", "attributes.0: its two endpoints are both named 'x'"),  # one anchor directory for two anchors
        ("x/y", "p", "attributes.0.negative.name: names must be non-empty"),
        ("n", "", "attributes.0.positive.name: names must be non-empty"),
        ("n", ".p", "attributes.0.positive.name: names must be non-empty"),
    ],
)
def test_bad_endpoint_names_are_errors(tmp_path, negative, positive, message):
    (tmp_path / "styles.toml").write_text(
        f'[[attributes]]\nname = "a"\nnegative = {{ name = "{negative}", files = ["n.txt"] }}\n'
        f'positive = {{ name = "{positive}", files = ["p.txt"] }}\n'
    )
    with pytest.raises(LerpError, match=message):
        load_config(tmp_path / "styles.toml")


def test_mean_loss_across_a_resume_weights_each_logged_window_by_its_steps():
    history = [{"step": 10, "loss": 4.0}, {"step": 20, "loss": 3.0}, {"step": 30, "loss": 2.0}]
    # resumed at step 20 and trained 20 more steps at a mean of 1.0: (10*4 + 10*3 + 20*1) / 40
    assert _mean_loss(1.0, 40, history, "work/checkpoint-20") == pytest.approx(2.25)
    assert _mean_loss(1.5, 40, history, None) == 1.5  # not resumed: transformers' mean covers every step
    assert _mean_loss(0.0, 5, [], "work/checkpoint-5") == 0.0  # resumed at the last step, nothing logged


REPLAY = '[training.replay]\nprompts = "prompts/writing_prompts.txt"\nfirst = 4\ntokens = 6\n'


def test_replay_mixes_the_base_models_own_answers_into_training(tmp_path, base_dir):
    from transformers import AutoModelForCausalLM

    from lerplm.data import build_blocks
    from lerplm.models import ModelRef, format_prompt, load_tokenizer
    from lerplm.train import base_answers, corpus_blocks, with_replay

    cfg = load_config(write_config(tmp_path, base_dir, text_format="chat", extra=REPLAY))
    base, tok = ModelRef(str(base_dir)), load_tokenizer(ModelRef(str(base_dir)))
    texts = read_texts(STYLES / "sentiment" / "positive.train.txt")[:24]
    style = build_blocks(tok, texts, 16, cfg.training.chat_prompt)
    blocks, stats = with_replay(base, tok, corpus_blocks(tok, texts, cfg), cfg)
    replayed = stats["replayed_blocks"]
    assert replayed == len(style) and blocks[: len(style)] == style  # share 0.5: as many replayed as style blocks
    prompts = read_texts(STYLES / "prompts" / "writing_prompts.txt")[:4]
    answers, ended = base_answers(base, tuple(prompts), 6, cfg.training.seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    tok.padding_side = "left"
    enc = tok([format_prompt(tok, p) for p in prompts], return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(cfg.training.seed)  # the same draws: the base model's own sampled answers
    sampled = model.generate(
        **enc, max_new_tokens=6, do_sample=True, temperature=0.8, top_p=0.95, top_k=0, pad_token_id=tok.pad_token_id
    )
    new = sampled[:, enc["input_ids"].shape[1] :]
    want = tok.batch_decode(new, skip_special_tokens=True)
    assert list(answers) == [t.strip() for t in want]
    assert list(ended) == [tok.eos_token_id in row for row in new.tolist()]
    assert (stats["replayed_answers"], stats["replayed_answers_cut"]) == (4, list(ended).count(False))
    rep = build_blocks(tok, list(answers), 16, prompts=prompts)  # each answer under its own prompt, cycled
    assert blocks[len(style) :] == [rep[i % len(rep)] for i in range(replayed)]

    train_anchors(cfg, tmp_path / "anchors", log=lambda s: None)
    summary = json.loads((tmp_path / "anchors" / "sentiment.negative" / "lerplm_training.json").read_text())
    assert summary["settings"]["replay"]["first"] == 4 and summary["replayed_blocks"] > 0
    assert "training    replay: prompts=" in AnchorSet.load(tmp_path / "anchors").describe()  # `lerplm info` shows it
    with pytest.raises(LerpError, match="text_format"):  # answers to instructions live in the chat format only
        load_config(write_config(tmp_path / "plain", base_dir, extra=REPLAY))
