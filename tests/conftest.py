"""Tiny models built locally: a random-init Llama, a byte-level BPE tokenizer with a chat template,
and random LoRA anchors (non-zero B, so that every mix really changes the model).

The suite writes nothing into the user's cache (LERPLM_CACHE points into a temporary directory), and with
LERPLM_NO_SKIPS=1 (set by CI, which has every optional part) a skipped test fails the run."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

from lerplm.anchors import AnchorSet, Attribute, Endpoint
from lerplm.models import ModelRef

REPO = Path(__file__).resolve().parents[1]
os.environ["LERPLM_CACHE"] = tempfile.mkdtemp(prefix="lerplm-test-cache-")
STYLES = REPO.parent / "shared" / "data" / "styles"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "the food was great and the staff were friendly.",
    "worst service ever, the soup was cold.",
    "could you please take a look at this when you have time?",
    "what do you mean? that makes no sense at all.",
    "it is a minor nuisance, nothing more.",
    "we will have to come back here next time we are in town!",
] * 20


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(vocab_size: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=2,
        pad_token_id=0,
        bos_token_id=None,
    )
    return LlamaForCausalLM(cfg).eval()


def make_adapter(
    base_dir: Path, out: Path, r: int, alpha: float, seed: int, targets=("q_proj", "v_proj", "o_proj"), **lora
):
    """A PEFT LoRA adapter with random A and B (PEFT initialises B to zero, which would hide bugs)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(
        model, LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0, **lora)
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    peft_model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("base")
    tok = build_tokenizer()
    model = build_model(len(tok))
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def make_anchor_set(base_dir: Path, root: Path, specs: list[tuple]) -> Path:
    """specs: (attribute, endpoint, r, alpha, extra LoraConfig kwargs), two endpoints per attribute in order."""
    attrs: dict[str, list[Endpoint]] = {}
    for i, (attr, ep, r, alpha, extra) in enumerate(specs):
        make_adapter(base_dir, root / f"{attr}.{ep}", r, alpha, seed=100 + i, **extra)
        attrs.setdefault(attr, []).append(Endpoint(ep, f"{attr}.{ep}"))
    AnchorSet(
        root=root, base_model=ModelRef(str(base_dir)), attributes=[Attribute(a, *eps) for a, eps in attrs.items()]
    ).save()
    return root


@pytest.fixture(scope="session")
def anchor_dir(base_dir, tmp_path_factory) -> Path:
    """Two attributes, four anchors, ranks 4/8/4/6 and different alphas."""
    return make_anchor_set(
        base_dir,
        tmp_path_factory.mktemp("anchors"),
        [
            ("sentiment", "negative", 4, 8, {}),
            ("sentiment", "positive", 8, 16, {}),
            ("formality", "informal", 4, 4, {}),
            ("formality", "formal", 6, 12, {}),
        ],
    )


@pytest.fixture(scope="session")
def lm(anchor_dir):
    import lerplm

    return lerplm.load(anchor_dir, device="cpu")


def pytest_sessionfinish(session, exitstatus):
    """Fail a run that skipped tests where nothing may be skipped (CI)."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter else []
    if os.environ.get("LERPLM_NO_SKIPS") == "1" and skipped and session.exitstatus == 0:
        reporter.write_line(f"LERPLM_NO_SKIPS=1: {len(skipped)} test(s) skipped, which CI must run", red=True)
        session.exitstatus = 1
