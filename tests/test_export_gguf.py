"""Exports of a causal LM loaded from a ``.gguf`` file (dequantised by transformers), on a tiny
Llama GGUF written here (PyPI ``gguf``)."""

from __future__ import annotations

from pathlib import Path

import helpers
import pytest
import torch

from lsframe.__main__ import main

LORA = {"r": 2, "target_modules": ["q_proj", "v_proj"]}


def write_tiny_llama_gguf(path: Path, vocab: int = 32, dim: int = 16, ff: int = 32) -> Path:
    """A one-layer Llama in float32 GGUF, with a vocabulary of ``vocab`` made-up tokens."""
    gguf = pytest.importorskip("gguf")
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(32)
    writer.add_embedding_length(dim)
    writer.add_block_count(1)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(2)
    writer.add_head_count_kv(2)
    writer.add_rope_dimension_count(dim // 2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("llama")
    writer.add_token_list([f"t{i}".encode() for i in range(vocab)])
    writer.add_token_scores([0.0] * vocab)
    writer.add_token_types([1] * vocab)
    shapes = {"token_embd": (vocab, dim), "output_norm": (dim,), "output": (vocab, dim)}
    for name, shape in (("attn_q", (dim, dim)), ("attn_k", (dim, dim)), ("attn_v", (dim, dim)),
                        ("attn_output", (dim, dim)), ("ffn_gate", (ff, dim)),
                        ("ffn_up", (ff, dim)), ("ffn_down", (dim, ff)), ("attn_norm", (dim,)),
                        ("ffn_norm", (dim,))):  # fmt: skip
        shapes[f"blk.0.{name}"] = shape
    rng = np.random.default_rng(0)
    for name, shape in shapes.items():
        writer.add_tensor(f"{name}.weight", (rng.standard_normal(shape) * 0.1).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_the_adapter_alone_of_a_lora_model_on_a_gguf_base_exports_and_reloads(tmp_path, capsys):
    # export rebuilt type(model)(config) for the PeftModel itself: a TypeError traceback
    pytest.importorskip("peft")
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    from lsframe.modules import CausalLMModule

    gguf = write_tiny_llama_gguf(tmp_path / "tiny.gguf")
    module = CausalLMModule(str(gguf), lora=LORA)
    with torch.no_grad():  # trained adapters: lora_B off its zero start
        for name, parameter in module.model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    path = helpers.lightning_checkpoint(
        module, tmp_path / "lm.ckpt", model_name_or_path=str(gguf), lora=LORA
    )
    main(["export", str(path), str(tmp_path / "adapter"), "--lora", "adapter"])
    hint = capsys.readouterr().out.splitlines()[-1].removeprefix("  load it with: ")
    # the adapter's base_model_name_or_path names only the directory: the base needs gguf_file
    assert f'gguf_file="{gguf.name}"' in hint
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= files
    assert "model.safetensors" not in files
    names = {"PeftModel": PeftModel, "LlamaForCausalLM": LlamaForCausalLM}
    reloaded = eval(hint, names).eval()  # noqa: S307
    ids = torch.tensor([[1, 5, 7, 2, 30]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, module.model.eval()(ids).logits)
