"""Exactness: the mixed runtime against merged weights, plain PEFT, and PEFT's A/B-separate mixing."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from lerplm import LerpError
from lerplm.anchors import AnchorSet
from lerplm.runtime import LoraWeights, MixedRuntime

from .conftest import make_adapter

PROMPTS = ["the food was great", "could you please take a look at this when you have time?", "worst"]
TOL = 1e-4


def reference_merged(anchor_dir, base_dir, coeffs):
    """The merged model computed independently of lerplm: W + Σ_k c_k (alpha_k / r_k) B_k A_k."""
    import json

    model = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    anchors = AnchorSet.load(anchor_dir)
    with torch.no_grad():
        for c, d in zip(coeffs, anchors.adapter_dirs()):
            cfg = json.loads((d / "adapter_config.json").read_text())
            state = load_file(str(d / "adapter_model.safetensors"))
            for key, a in state.items():
                if ".lora_A." in key:
                    b = state[key.replace(".lora_A.", ".lora_B.")]
                    name = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
                    w = model.get_submodule(name).weight
                    w += c * cfg["lora_alpha"] / cfg["r"] * (b @ a)
    return model


def encode(lm, prompts=PROMPTS):
    return lm.encode(prompts, chat=False)


def masked_max_diff(a, b, mask):
    return (a - b).abs()[mask.bool()].max().item()


def test_each_row_of_a_mixed_batch_equals_its_own_merged_model(lm, anchor_dir, base_dir):
    mixes = [
        {"sentiment": 0.9, "formality": 0.3},
        {"levels": {"sentiment": 0.1, "formality": 1.0}, "weights": {"sentiment": 1, "formality": 3}},
        {"formality": 0.5},
    ]
    enc = encode(lm)
    coeffs = lm.coefficients(mixes)
    batch = lm.logits(enc["input_ids"], coeffs, enc["attention_mask"])
    base = lm.logits(enc["input_ids"], None, enc["attention_mask"])
    for i in range(len(mixes)):
        ref = reference_merged(anchor_dir, base_dir, coeffs[i].tolist())
        with torch.no_grad():
            want = ref(input_ids=enc["input_ids"][i : i + 1], attention_mask=enc["attention_mask"][i : i + 1]).logits
        mask = enc["attention_mask"][i : i + 1]
        assert masked_max_diff(batch[i : i + 1], want, mask) < TOL
        assert masked_max_diff(base[i : i + 1], want, mask) > 1e-2  # the mix really changes the model


def test_per_token_coefficients_equal_per_row(lm):
    enc = encode(lm)
    coeffs = lm.coefficients([{"sentiment": 0.2}, {"formality": 0.7}, {"sentiment": 1.0}])
    per_row = lm.logits(enc["input_ids"], coeffs, enc["attention_mask"])
    per_tok = coeffs[:, None, :].expand(-1, enc["input_ids"].shape[1], -1).contiguous()
    assert torch.allclose(lm.logits(enc["input_ids"], per_tok, enc["attention_mask"]), per_row, atol=1e-6)


def test_switching_mixes_copies_no_weights(lm):
    before = {n: (layer.a_cat.data_ptr(), layer.b_cat.data_ptr()) for n, layer in lm.runtime.layers.items()}
    enc = encode(lm)
    lm.logits(enc["input_ids"], lm.coefficients([{"sentiment": 0.0}] * 3), enc["attention_mask"])
    lm.logits(enc["input_ids"], lm.coefficients([{"sentiment": 1.0}] * 3), enc["attention_mask"])
    assert before == {n: (layer.a_cat.data_ptr(), layer.b_cat.data_ptr()) for n, layer in lm.runtime.layers.items()}


def test_all_weight_on_one_endpoint_equals_that_adapter_in_plain_peft(lm, anchor_dir, base_dir):
    from peft import PeftModel

    enc = encode(lm)
    for mix, adapter in [({"sentiment": 1.0}, "sentiment.positive"), ({"formality": 0.0}, "formality.informal")]:
        peft_model = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(base_dir), anchor_dir / adapter
        ).eval()
        with torch.no_grad():
            want = peft_model(**enc).logits
        got = lm.logits(enc["input_ids"], lm.coefficients([mix] * len(PROMPTS)), enc["attention_mask"])
        assert masked_max_diff(got, want, enc["attention_mask"]) < TOL


def test_mixing_a_and_b_separately_is_a_different_model(base_dir, tmp_path):
    """PEFT's `linear` combination averages A's and B's; the product of averages is not the average of products."""
    from peft import PeftModel

    a = make_adapter(base_dir, tmp_path / "a", r=4, alpha=8, seed=1)
    b = make_adapter(base_dir, tmp_path / "b", r=4, alpha=8, seed=2)
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    with torch.no_grad():
        base_logits = base(input_ids=ids).logits

    peft_model = PeftModel.from_pretrained(copy.deepcopy(base), a, adapter_name="a")
    peft_model.load_adapter(b, adapter_name="b")
    peft_model.add_weighted_adapter(["a", "b"], [0.5, 0.5], "linear_mix", combination_type="linear")
    peft_model.add_weighted_adapter(["a", "b"], [0.5, 0.5], "cat_mix", combination_type="cat")
    with torch.no_grad():
        peft_model.set_adapter("linear_mix")
        linear = peft_model(input_ids=ids).logits
        peft_model.set_adapter("cat_mix")
        cat = peft_model(input_ids=ids).logits

    model = copy.deepcopy(base)
    runtime = MixedRuntime(model, [LoraWeights.load(a), LoraWeights.load(b)])
    runtime.set_coefficients([[0.5, 0.5]])
    with torch.no_grad():
        ours = model(input_ids=ids).logits
    assert (ours - cat).abs().max() < TOL  # PEFT's exact `cat` merge agrees with the runtime
    gap = (ours - linear).abs().max().item()
    assert gap > 100 * TOL and gap > 0.05 * (ours - base_logits).abs().max().item()


def test_different_target_modules_are_refused(base_dir, tmp_path):
    a = make_adapter(base_dir, tmp_path / "a", r=4, alpha=8, seed=1)
    b = make_adapter(base_dir, tmp_path / "b", r=4, alpha=8, seed=2, targets=("q_proj", "k_proj"))
    with pytest.raises(LerpError, match="target different modules"):
        MixedRuntime(AutoModelForCausalLM.from_pretrained(base_dir), [LoraWeights.load(a), LoraWeights.load(b)])


def test_detached_model_is_the_base_model(lm, base_dir):
    enc = encode(lm)
    base = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    with torch.no_grad():
        want = base(**enc).logits
    with lm.runtime.detached() as model, torch.no_grad():
        assert masked_max_diff(model(**enc).logits, want, enc["attention_mask"]) < 1e-6
    got = lm.logits(enc["input_ids"], None, enc["attention_mask"])
    assert masked_max_diff(got, want, enc["attention_mask"]) < 1e-6
