from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from lerplm import LerpError
from lerplm.export import export, export_grid, export_peft
from lerplm.generate import row_seed

from .conftest import make_anchor_set

PROMPTS = ["the food was great", "could you please take a look?"]
MIXES = [{"sentiment": 0.9, "formality": 0.2}, {"formality": 1.0}]


def test_same_seed_same_output_and_batching_changes_nothing(lm):
    a = lm.generate(PROMPTS, MIXES, n=2, max_new_tokens=12, seed=7)
    b = lm.generate(PROMPTS, MIXES, n=2, max_new_tokens=12, seed=7)
    assert a == b
    alone = lm.generate(PROMPTS[1:], MIXES[1:], n=2, max_new_tokens=12, seed=7)
    assert alone[0] == a[1]
    assert lm.generate(PROMPTS, MIXES, n=2, max_new_tokens=12, seed=8) != a


def test_every_prompt_samples_from_its_own_stream(lm, monkeypatch):
    """Rows of different prompts must not share a random stream (that correlated every prompt's draws);
    a prompt keeps its stream under every mix; the seed is a stable hash, not Python's salted hash()."""
    assert row_seed(0, "hi", 0) == 69468440113006373
    seen = []
    run = lm._run
    monkeypatch.setattr(lm, "_run", lambda seqs: seen.append([s.seed for s in seqs]) or run(seqs))
    lm.generate(PROMPTS + PROMPTS[:1], MIXES + [{"sentiment": 0.1}], n=2, max_new_tokens=2, seed=7)
    assert seen[0] == [row_seed(7, p, j) for p in PROMPTS + PROMPTS[:1] for j in range(2)]
    assert (
        len(set(seen[0])) == 4 and seen[0][4:] == seen[0][:2]
    )  # distinct per prompt and sample; same prompt, same stream


def test_mix_changes_generation(lm):
    outs = lm.generate(
        PROMPTS[:1] * 3, [{"sentiment": 0}, {"sentiment": 1}, {"formality": 1}], max_new_tokens=16, temperature=0
    )
    assert len({o[0] for o in outs}) > 1


def test_greedy_decode_with_kv_cache_matches_transformers_generate(lm, base_dir):
    """Our left-padded, per-row decode loop against HF generate on each prompt alone."""
    ref = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    ours = lm.generate(PROMPTS, [{"sentiment": 0.5}] * 2, max_new_tokens=10, temperature=0, chat=False)
    coeffs = lm.coefficients([{"sentiment": 0.5}])
    # merge the same mix into the reference model, then use transformers' own generate
    with torch.no_grad():
        for name, delta in lm.runtime.delta_weights(coeffs[0]).items():
            ref.get_submodule(name).weight += delta
        for prompt, (text,) in zip(PROMPTS, ours):
            ids = lm.tokenizer(prompt, return_tensors="pt")
            out = ref.generate(**ids, max_new_tokens=10, do_sample=False, eos_token_id=lm.eos_ids(), pad_token_id=0)
            want = lm.tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
            assert text == want


def test_no_mix_is_the_base_model_alone(lm, base_dir):
    ref = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    ours = lm.generate(PROMPTS, None, max_new_tokens=10, temperature=0, chat=False)
    assert ours != lm.generate(PROMPTS, {"sentiment": 1.0}, max_new_tokens=10, temperature=0, chat=False)
    for prompt, (text,) in zip(PROMPTS, ours):
        ids = lm.tokenizer(prompt, return_tensors="pt")
        out = ref.generate(**ids, max_new_tokens=10, do_sample=False, eos_token_id=lm.eos_ids(), pad_token_id=0)
        assert text == lm.tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def test_nll_is_each_texts_own_likelihood_under_its_prefix_and_mix(lm):
    """Batched by length, output layer on scored positions only: the same numbers as one unpadded row at a
    time through the full logits (empty texts NaN, an empty prefix scores from an end token)."""
    prefixes = ["the food was", "", "could you please take a look at the long request here", "ok", "the", "a b c"]
    texts = [" great and warm", "fine", " now please", "", " x y z w v u t s", " d"]
    mixes = [{"sentiment": 0.9}, {"formality": 0.3, "sentiment": 0.5}, {"sentiment": 0.0}, {"formality": 1.0}]
    coeffs = lm.coefficients(mixes + mixes[:2])
    got = lm.nll(prefixes, texts, coeffs, batch_size=4)
    tok = lm.tokenizer
    for r, (p, t) in enumerate(zip(prefixes, texts)):
        pre = tok(p, add_special_tokens=False)["input_ids"] or [tok.eos_token_id]
        ids = torch.tensor([pre + tok(t, add_special_tokens=False)["input_ids"]])
        if ids.shape[1] == len(pre):
            assert got[r] != got[r]  # NaN
            continue
        logp = lm.logits(ids, coeffs[r : r + 1]).log_softmax(-1)[0, :-1]
        want = -logp[len(pre) - 1 :].gather(1, ids[0, len(pre) :, None]).mean().item()
        assert got[r] == pytest.approx(want, rel=1e-5, abs=1e-6)
    base = lm.nll(prefixes, texts, None)
    assert base[0] != pytest.approx(got[0], rel=1e-3)  # the mix is applied
    cache: dict = {}  # the base model's prefixes computed once: the same numbers, first call and later ones
    for swapped in (False, True, False):
        pre = prefixes[1:] + prefixes[:1] if swapped else prefixes
        want = lm.nll(pre, texts, None, batch_size=3)
        assert lm.nll(pre, texts, None, batch_size=3, prefix_cache=cache) == pytest.approx(want, rel=1e-5, nan_ok=True)
    lengths = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prefixes]
    assert len(cache) == sum(n > 1 for n in lengths) >= 3  # once each prefix whose tokens before its last exist


def test_bad_generation_arguments(lm):
    with pytest.raises(LerpError, match="one mix per prompt"):
        lm.generate(PROMPTS, MIXES[:1] * 3)
    with pytest.raises(LerpError, match="max_new_tokens"):
        lm.generate(PROMPTS, MIXES, max_new_tokens=0)
    with pytest.raises(LerpError, match="top_p"):
        lm.generate(PROMPTS, MIXES, top_p=0)
    with pytest.raises(LerpError, match="unknown attribute"):
        lm.generate(PROMPTS, {"humor": 1})
    with pytest.raises(LerpError, match="a mix is a mapping"):
        lm.generate(PROMPTS, 5)
    with pytest.raises(LerpError, match="temperature must be a finite number"):
        lm.generate(PROMPTS, MIXES, temperature=float("nan"))


def test_a_string_is_one_prompt(lm):
    one = lm.generate(PROMPTS[0], MIXES[0], max_new_tokens=3, temperature=0)
    assert one == lm.generate(PROMPTS[:1], MIXES[0], max_new_tokens=3, temperature=0) and len(one) == 1


def _logits(model, enc):
    with torch.no_grad():
        return model(**enc).logits


def test_exports_load_in_plain_peft_and_transformers_with_the_same_logits(lm, base_dir, tmp_path):
    from peft import PeftModel

    mix = {"levels": {"sentiment": 0.7, "formality": 0.4}, "weights": {"sentiment": 2, "formality": 1}}
    enc = lm.encode(PROMPTS, chat=False)
    want = lm.logits(enc["input_ids"], lm.coefficients([mix] * 2), enc["attention_mask"])
    mask = enc["attention_mask"].bool()

    export(lm, mix, tmp_path / "peft", "peft")
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), tmp_path / "peft").eval()
    assert (_logits(peft_model, enc) - want).abs()[mask].max() < 1e-4
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["r"] == 4 + 8 + 4 + 6

    export(lm, mix, tmp_path / "merged", "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert (_logits(merged, enc) - want).abs()[mask].max() < 1e-4
    # the runtime is untouched by the export
    assert torch.equal(lm.logits(enc["input_ids"], lm.coefficients([mix] * 2), enc["attention_mask"]), want)


def test_peft_export_drops_adapters_with_zero_coefficient(lm, base_dir, tmp_path):
    from peft import PeftModel

    export(lm, {"sentiment": 1.0}, tmp_path / "pos", "peft")
    assert json.loads((tmp_path / "pos" / "adapter_config.json").read_text())["r"] == 8
    enc = lm.encode(PROMPTS, chat=False)
    want = lm.logits(enc["input_ids"], lm.coefficients([{"sentiment": 1.0}] * 2), enc["attention_mask"])
    got = _logits(
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), tmp_path / "pos").eval(), enc
    )
    assert (got - want).abs()[enc["attention_mask"].bool()].max() < 1e-4


def test_export_never_overwrites(lm, tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(LerpError, match="already exists"):
        export(lm, {"sentiment": 1.0}, tmp_path / "x", "peft")
    with pytest.raises(LerpError, match="unknown export format"):
        export(lm, {"sentiment": 1.0}, tmp_path / "y", "onnx")


def _peft_logits(base_dir, adapter, enc):
    from peft import PeftModel

    return _logits(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter).eval(), enc)


def test_per_layer_ranks_and_rslora_export_exactly(base_dir, tmp_path):
    """Adapters with rank_pattern / alpha_pattern / rsLoRA: the runtime and the export both follow them."""
    import lerplm

    root = make_anchor_set(
        base_dir,
        tmp_path / "anchors",
        [
            ("tone", "low", 4, 8, {"rank_pattern": {"q_proj": 2}, "alpha_pattern": {"v_proj": 3}}),
            ("tone", "high", 6, 6, {"use_rslora": True}),
        ],
    )
    lm = lerplm.load(root, device="cpu")
    enc = lm.encode(PROMPTS, chat=False)
    mask = enc["attention_mask"].bool()
    for level, adapter in [(0.0, "tone.low"), (1.0, "tone.high")]:
        want = _peft_logits(base_dir, root / adapter, enc)
        got = lm.logits(enc["input_ids"], lm.coefficients([{"tone": level}] * 2), enc["attention_mask"])
        assert (got - want).abs()[mask].max() < 1e-4
    export_peft(lm, {"tone": 0.3}, tmp_path / "mix")
    cfg = json.loads((tmp_path / "mix" / "adapter_config.json").read_text())
    assert cfg["r"] == 10 and set(cfg["rank_pattern"].values()) == {8}  # q_proj layers: 2 + 6
    want = lm.logits(enc["input_ids"], lm.coefficients([{"tone": 0.3}] * 2), enc["attention_mask"])
    assert (_peft_logits(base_dir, tmp_path / "mix", enc) - want).abs()[mask].max() < 1e-4


def test_export_grid_manifest_and_every_adapter_reproduces_its_mix(lm, base_dir, tmp_path):
    from lerplm.evaluate.grids import parse_grid

    mixes = {p.id: p.mix for p in parse_grid("single:formality", lm.anchors.names, 3)}
    manifest = export_grid(lm, mixes, tmp_path / "grid")
    assert set(manifest["adapters"]) == set(mixes) and manifest["max_rank"] == 10
    assert manifest["adapters"]["single-formality-0.5"]["mix"] == {
        "levels": {"formality": 0.5},
        "weights": {"formality": 1.0},
    }
    enc = lm.encode(PROMPTS, chat=False)
    for name, mix in mixes.items():
        want = lm.logits(enc["input_ids"], lm.coefficients([mix] * 2), enc["attention_mask"])
        assert (_peft_logits(base_dir, tmp_path / "grid" / name, enc) - want).abs()[
            enc["attention_mask"].bool()
        ].max() < 1e-4


def test_rank_reduced_export_reports_its_true_error(lm, base_dir, tmp_path):
    mix = {"sentiment": 0.6, "formality": 0.2}
    coeffs = lm.coefficients([mix])[0]
    exact = lm.runtime.delta_weights(coeffs)
    full = export_peft(lm, mix, tmp_path / "full", rank=22)
    assert full["rank"] == 22 and full["relative_error"]["max"] < 1e-5
    low = export_peft(lm, mix, tmp_path / "low", rank=3)
    from safetensors.torch import load_file

    state = load_file(tmp_path / "low" / "adapter_model.safetensors")
    for name, delta in exact.items():
        a = state[f"base_model.model.{name}.lora_A.weight"]
        b = state[f"base_model.model.{name}.lora_B.weight"]
        assert a.shape[0] == 3
        err = ((delta - b @ a).norm() / delta.norm()).item()
        assert err == pytest.approx(low["relative_error"]["per_layer"][name], rel=1e-3, abs=1e-6)
        assert err > 0.01
        # the truncated SVD is optimal: no rank-3 factorisation of the exact pair does better
        u, s, vh = torch.linalg.svd(delta.double())
        assert err == pytest.approx((s[3:].pow(2).sum() / s.pow(2).sum()).sqrt().item(), rel=1e-3)


def test_gguf_export_holds_each_anchor_as_llama_cpp_reads_it(lm, tmp_path):
    """Read the files back with the gguf package: B·A (scaling folded in, alpha 0) equals the PEFT
    adapter's s·B·A, with q/k rows in llama.cpp's order (transformers' GGUF loader undoes it)."""
    import gguf
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    from lerplm.export import export_gguf, llama_lora_field

    manifest = export_gguf(lm, tmp_path / "gguf")
    assert manifest["adapters"] == [f"{e.adapter}.gguf" for e in lm.anchors.endpoints]
    cfg = lm.model.config
    unpermute = LlamaTensorProcessor(
        {"num_attention_heads": cfg.num_attention_heads, "num_key_value_heads": cfg.num_key_value_heads}
    )
    for file, adapter in zip(manifest["adapters"], lm.adapters):
        reader = gguf.GGUFReader(tmp_path / "gguf" / file)
        fields = {f.name: f for f in reader.fields.values()}
        assert bytes(fields["general.type"].parts[-1]).decode() == "adapter"
        assert float(fields["adapter.lora.alpha"].parts[-1][0]) == 0.0
        tensors = {
            t.name: torch.from_numpy(t.data.copy()).reshape(list(reversed(t.shape.tolist()))) for t in reader.tensors
        }
        assert len(tensors) == 2 * len(adapter.modules)
        for module, (a, b, s) in adapter.modules.items():
            layer, kind = module.split(".")[2], module.rpartition(".")[2]
            short = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output"}[kind]
            ga, gb = tensors[f"blk.{layer}.{short}.weight.lora_a"], tensors[f"blk.{layer}.{short}.weight.lora_b"]
            if kind in ("q_proj", "k_proj"):
                gb = torch.from_numpy(unpermute.process(gb.numpy(), f"blk.{layer}.{short}.weight").weights.copy())
            assert torch.allclose(gb @ ga, s * b @ a, atol=1e-6)
    field = llama_lora_field(lm, {"sentiment": 0.8})
    assert [f["id"] for f in field] == [0, 1, 2, 3]
    assert [f["scale"] for f in field] == pytest.approx(lm.coefficients([{"sentiment": 0.8}])[0].tolist())
