"""The causal-LM path: how TextFileLMDataModule reads its files and how CausalLMModule checks
and builds its model, each bad input said in one line at its key."""

from __future__ import annotations

import pytest

from lsframe.data import TextFileLMDataModule
from lsframe.data.lm import read_text, tokenize_text

#: CRLF line ends, a BOM mid-text and a lone CR at the end: text mode turned both ends into \n.
CRLF_AND_CR = b"line one\r\nline two\r\n\xef\xbb\xbfx\r"


def char_tokenizer(chunk: str, **_: object) -> dict[str, list[int]]:
    """A tokenizer of the Hugging Face calling convention: one id per character."""
    return {"input_ids": [ord(c) for c in chunk]}


def test_text_files_are_read_as_their_bytes_say_without_newline_translation(tmp_path):
    text = tmp_path / "crlf.txt"
    text.write_bytes(CRLF_AND_CR * 4)
    data = TextFileLMDataModule(str(text), str(text), tokenizer="bytes", block_size=5)
    data.setup("fit")
    whole = len(CRLF_AND_CR * 4) // 5 * 5
    assert bytes(data.blocks["train"].flatten().tolist()) == (CRLF_AND_CR * 4)[:whole]
    # a tokenizer's text is the file's too: the CRs stay, each line keeps its own end
    ids = tokenize_text(read_text(str(text)), char_tokenizer, lines_per_chunk=1)
    assert "".join(map(chr, ids.tolist())) == (CRLF_AND_CR * 4).decode("utf-8")


def test_a_model_path_that_exists_but_does_not_load_says_so(tmp_path):
    from transformers import AutoModelForCausalLM

    from lsframe.errors import DataError, MissingFileError
    from lsframe.hub import load_pretrained

    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"not a gguf file at all")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    for path in (not_gguf, broken):
        with pytest.raises(DataError, match="exists but could not be loaded") as error:
            load_pretrained(AutoModelForCausalLM, str(path))
        assert str(path) in str(error.value) and "no such" not in str(error.value)
        assert not isinstance(error.value, MissingFileError)
    with pytest.raises(MissingFileError, match="no such local file or directory"):
        load_pretrained(AutoModelForCausalLM, str(tmp_path / "absent"))


def test_a_data_tokenizer_that_does_not_resolve_is_one_error_at_its_key(tmp_path):
    from lsframe.config_checks import build_datamodule
    from lsframe.errors import DataError, MissingFileError

    text = tmp_path / "text.txt"
    text.write_text("to be or not to be " * 20)
    init_args = {"train_file": str(text), "tokenizer": str(tmp_path / "no_tokenizer")}
    # refused with the config's checks, before the model loads
    with pytest.raises(MissingFileError, match="tokenizer '.*no_tokenizer': no such") as error:
        build_datamodule("data", TextFileLMDataModule, init_args, "fit")
    assert error.value.where == "data.init_args.tokenizer"
    not_a_tokenizer = tmp_path / "empty"
    not_a_tokenizer.mkdir()
    data = TextFileLMDataModule(str(text), tokenizer=str(not_a_tokenizer))
    with pytest.raises(DataError, match="tokenizer .* exists but could not be loaded") as error:
        data.setup("fit")
    assert error.value.argument == "data.tokenizer"


TINY = {"model_type": "gpt2", "vocab_size": 64, "n_positions": 16, "n_layer": 1, "n_head": 2,
        "n_embd": 16, "bos_token_id": None, "eos_token_id": None}  # fmt: skip


def test_a_model_built_from_a_config_takes_dtype_and_attention_or_refuses_them():
    import torch

    from lsframe.errors import ConfigError
    from lsframe.modules import CausalLMModule

    module = CausalLMModule(config=TINY, dtype="bfloat16", attn_implementation="eager")
    assert {p.dtype for p in module.model.parameters()} == {torch.bfloat16}
    assert module.model.config._attn_implementation == "eager"
    assert CausalLMModule(config=TINY).model.dtype == torch.float32  # the default stays fp32
    with pytest.raises(ConfigError, match="attn_implementation 'nope' cannot be used"):
        CausalLMModule(config=TINY, attn_implementation="nope")
    # nothing is downloaded and no weights are stored: these would be silently ignored
    for options, key in (({"revision": "main"}, "revision"), ({"dtype": "auto"}, "dtype"),
                         ({"trust_remote_code": True}, "trust_remote_code")):  # fmt: skip
        with pytest.raises(ConfigError, match="model.config") as error:
            CausalLMModule(config=TINY, **options)
        assert error.value.argument == f"model.{key}"
    from lsframe.config_checks import check_module

    with pytest.raises(ConfigError) as error:  # refused with the config's checks, before loading
        check_module("model", {"config": TINY, "revision": "main"}, [])
    assert error.value.where == "model.init_args.revision"


def test_a_typo_in_a_model_config_is_refused_at_its_key_with_the_close_names():
    from lsframe.config_checks import check_module
    from lsframe.errors import ConfigError
    from lsframe.modules import CausalLMModule

    # transformers stored n_layr as a plain attribute and built its default n_layer
    with pytest.raises(ConfigError, match="no key 'n_layr'; did you mean n_layer") as error:
        check_module("model", {"config": {**TINY, "n_layr": 2}}, [])
    assert error.value.where == "model.init_args.config.n_layr"
    with pytest.raises(ConfigError, match="did you mean n_layer") as error:
        CausalLMModule(config={**TINY, "n_layr": 2})
    assert error.value.argument == "model.config.n_layr"
    # an unknown model_type names the key and a few names, not the ~900 transformers knows
    with pytest.raises(ConfigError, match="unknown model_type 'gtp2'; did you mean gpt2") as error:
        check_module("model", {"config": {**TINY, "model_type": "gtp2"}}, [])
    assert error.value.where == "model.init_args.config.model_type"
    assert len(str(error.value)) < 200
    # the class's aliases and PretrainedConfig's common keys are keys too
    model = CausalLMModule(config={**TINY, "hidden_size": 8, "num_labels": 3}).model
    assert model.config.n_embd == 8 and model.config.num_labels == 3


def test_keys_of_real_hub_configs_pass_and_the_callers_dict_is_left_as_it_was():
    import warnings

    from lsframe.modules.lm_config import check_model_config

    # openai-community/gpt2's config.json (sizes shrunk): n_ctx is a transformers 4 key
    gpt2 = {**TINY, "n_ctx": 64, "task_specific_params": {"text-generation": {"do_sample": True}},
            "architectures": ["GPT2LMHeadModel"], "is_decoder": False, "tokenizer_class": None}  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_model_config(gpt2)
    said = [str(w.message) for w in caught if "model.config" in str(w.message)]
    assert said == ["model.config.n_ctx is stored by GPT2Config but not used by it"]
    falcon = {"model_type": "falcon", "hidden_size": 16, "num_attention_heads": 2,
              "num_hidden_layers": 1, "vocab_size": 64, "auto_map": {"AutoConfig": "x.Config"},
              "apply_residual_connection_post_layernorm": False}  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_model_config(falcon)
    llama = {"model_type": "llama", "hidden_size": 16, "intermediate_size": 32,
             "num_attention_heads": 2, "num_hidden_layers": 1, "vocab_size": 64,
             "rope_scaling": {"type": "linear", "factor": 2.0}}  # fmt: skip
    check_model_config(llama)
    assert llama["rope_scaling"] == {"type": "linear", "factor": 2.0}
