"""``lsframe export`` and model loading: Hugging Face exports carry the GLUE task's labels, LoRA
adapters export merged or alone, timm models export as safetensors + config.json that timm
reloads, and the module's loading options reach ``from_pretrained``."""

from __future__ import annotations

import json
from pathlib import Path

import helpers
import pytest
import torch

from lsframe.__main__ import main
from lsframe.cli import load_module
from lsframe.errors import ConfigError
from lsframe.modules.export import WEIGHTS_PROVENANCE

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def one_step(config: str, runs: Path, *extra: str) -> list[str]:
    """``fit`` of ``config`` for one training batch and one validation batch, logs in ``runs``."""
    return [
        "fit",
        "--config",
        str(ROOT / "configs" / config),
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "1",
        "--trainer.limit_val_batches",
        "1",
        "--trainer.num_sanity_val_steps",
        "0",
        "--trainer.logger.init_args.save_dir",
        str(runs),
        *QUIET,
        *extra,
    ]


def last_checkpoint(runs: Path) -> Path:
    (found,) = runs.rglob("last.ckpt")
    return found


@pytest.fixture(scope="module")
def lora_rte(tmp_path_factory, minilm, shared_data) -> Path:
    """A checkpoint of MiniLM + LoRA fine-tuned one step on RTE (``configs/glue/minilm.yaml``)."""
    runs = tmp_path_factory.mktemp("lora_rte")
    main(
        one_step(
            "glue/minilm.yaml",
            runs,
            "--data.init_args.data_dir",
            str(shared_data / "glue"),
            "--data.init_args.train_limit",
            "8",
            "--data.init_args.val_limit",
            "8",
            "--data.init_args.batch_size",
            "8",
            "--data.init_args.max_length",
            "32",
            "--model.init_args.lora",
            "{r: 4, target_modules: [query, value]}",
        )
    )
    return last_checkpoint(runs)


def logits(model: torch.nn.Module, tokenizer, texts: list[tuple[str, str]]) -> torch.Tensor:
    batch = tokenizer(
        [a for a, _ in texts], [b for _, b in texts], return_tensors="pt", padding=True
    )
    with torch.no_grad():
        return model.eval()(**batch).logits


PAIRS = [("A man is playing a guitar.", "A person plays music."), ("It rains.", "The sun shines.")]


def test_a_merged_lora_export_is_a_plain_model_that_names_the_rte_labels(lora_rte, tmp_path):
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    main(["export", str(lora_rte), str(tmp_path / "merged")])
    files = {p.name for p in (tmp_path / "merged").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert not {"adapter_config.json", "adapter_model.safetensors"} & files
    config = AutoConfig.from_pretrained(tmp_path / "merged")
    assert config.id2label == {0: "entailment", 1: "not_entailment"}
    assert config.label2id == {"entailment": 0, "not_entailment": 1}
    exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    module = load_module(str(lora_rte))
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    torch.testing.assert_close(
        logits(exported, tokenizer, PAIRS), logits(module.model, tokenizer, PAIRS)
    )


def test_a_lora_adapter_exports_alone_and_reloads_on_its_base(lora_rte, tmp_path, capsys):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    main(["export", str(lora_rte), str(tmp_path / "adapter"), "--lora", "adapter"])
    assert "PeftModel.from_pretrained(" in capsys.readouterr().out
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= files
    assert "model.safetensors" not in files
    adapter = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    # one step moved the adapters off their zero start, and the task head travels with them
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())
    assert any("classifier" in k for k in adapter)
    base_path = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    base = AutoModelForSequenceClassification.from_pretrained(
        base_path["base_model_name_or_path"], num_labels=2
    )
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter")
    module = load_module(str(lora_rte))
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "adapter")
    torch.testing.assert_close(
        logits(reloaded, tokenizer, PAIRS), logits(module.model, tokenizer, PAIRS)
    )


@pytest.fixture(scope="module")
def resnet_mnist(tmp_path_factory, shared_data) -> Path:
    """A checkpoint of a random-init timm ResNet-18 (1 channel) trained one step on MNIST."""
    runs = tmp_path_factory.mktemp("resnet_mnist")
    main(
        one_step(
            "images/resnet18_mnist.yaml",
            runs,
            "--data.init_args.data_dir",
            str(shared_data / "images" / "mnist"),
            "--data.init_args.train_limit",
            "16",
            "--data.init_args.val_limit",
            "16",
            "--data.init_args.batch_size",
            "16",
        )
    )
    return last_checkpoint(runs)


def test_resuming_a_lora_checkpoint_without_its_lora_setting_is_refused_before_training(
    lora_rte, shared_data, tmp_path, capsys
):
    data = ["--data.init_args.data_dir", str(shared_data / "glue")]
    data += ["--data.init_args.train_limit", "8", "--data.init_args.max_length", "32"]
    with pytest.raises(SystemExit) as exit_info:
        main([*one_step("glue/minilm.yaml", tmp_path, *data), "--ckpt_path", str(lora_rte)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lsframe fit: error: ")
    assert "model.init_args.lora" in err
    assert not list(tmp_path.rglob("*.ckpt"))


def test_a_timm_model_exports_as_safetensors_and_config_that_timm_reloads(resnet_mnist, tmp_path):
    import timm

    main(["export", str(resnet_mnist), str(tmp_path / "timm")])
    assert {p.name for p in (tmp_path / "timm").iterdir()} == {"config.json", "model.safetensors"}
    config = json.loads((tmp_path / "timm" / "config.json").read_text())
    assert config["architecture"] == "resnet18"
    assert config["model_args"]["in_chans"] == 1 and config["num_classes"] == 10
    # the preprocessing it was trained with (28×28, MNIST's statistics), not ImageNet's of the
    # timm name's default weights: what timm.data.resolve_data_config hands its users
    pretrained = config["pretrained_cfg"]
    assert pretrained["input_size"] == [1, 28, 28] and pretrained["crop_pct"] == 1.0
    assert pretrained["mean"] == [0.1307] and pretrained["std"] == [0.3081]
    # trained from random initialisation: none of the published weights' provenance
    assert not set(WEIGHTS_PROVENANCE) & set(pretrained)
    reloaded = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()
    module = load_module(str(resnet_mnist)).eval()
    images = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(images), module.model(images))


def test_lora_adapter_export_of_a_model_without_adapters_is_one_line(
    resnet_mnist, tmp_path, capsys
):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(resnet_mnist), str(tmp_path / "out"), "--lora", "adapter"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lsframe export: error: ")
    assert "has no LoRA adapters" in err and err.rstrip().endswith("(--lora)")
    assert not (tmp_path / "out").exists()


def test_lora_adapter_export_is_refused_from_the_saved_arguments_before_the_model_loads(
    tmp_path, capsys
):
    saved = {  # a model reference that would fail to load: the refusal comes first
        "_class_path": "lsframe.modules.SequenceClassificationModule",
        "model_name_or_path": str(tmp_path / "no_such_model"),
        "lora": None,
    }
    path = tmp_path / "plain.ckpt"
    torch.save(
        {"state_dict": {}, "pytorch-lightning_version": "2.6.0", "hyper_parameters": saved}, path
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(path), str(tmp_path / "out"), "--lora", "adapter"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == (
        "lsframe export: error: the checkpoint's module (SequenceClassificationModule) has no "
        "LoRA adapters (trained without model.lora); leave out --lora adapter to export the "
        "whole model (--lora)\n"
    )


def test_export_writes_only_into_a_new_or_empty_directory(resnet_mnist, tmp_path, capsys):
    used = tmp_path / "used"
    used.mkdir()
    (used / "adapter_config.json").write_text("{}")  # an earlier export's, say
    (tmp_path / "afile").write_text("")
    for target, problem in [
        (used, "directory is not empty (adapter_config.json): export writes into a new or "
         "empty directory; remove it or choose another"),
        (tmp_path / "afile", "is a file; give a new or empty directory"),
    ]:  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            main(["export", str(resnet_mnist), str(target)])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err == f"lsframe export: error: {problem} ({target})\n"
    assert [p.name for p in used.iterdir()] == ["adapter_config.json"]
    assert (tmp_path / "afile").read_text() == ""
    (tmp_path / "empty").mkdir()
    main(["export", str(resnet_mnist), str(tmp_path / "empty")])
    assert (tmp_path / "empty" / "model.safetensors").is_file()


def test_a_timm_export_carries_label_names(tmp_path):
    import timm

    from lsframe.modules.export import export_pretrained

    model = timm.create_model(
        "vit_tiny_patch16_224", num_classes=3, depth=1, img_size=32, patch_size=8
    ).eval()
    export_pretrained(model, tmp_path, label_names=("cat", "dog", "bird"))
    assert json.loads((tmp_path / "config.json").read_text())["label_names"] == [
        "cat",
        "dog",
        "bird",
    ]
    reloaded = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(images), model(images))


# ------------------------------------------------------------------------------ loading options
@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A random-init two-head, one-layer BERT saved with save_pretrained."""
    path = tmp_path_factory.mktemp("tiny_bert")
    helpers.tiny_bert(vocab=64, positions=32, head=False).save_pretrained(path)
    return path


def test_dtype_and_attention_implementation_reach_from_pretrained(tiny_bert):
    from lsframe.modules import SequenceClassificationModule

    default = SequenceClassificationModule(str(tiny_bert), num_labels=3)
    assert default.model.dtype == torch.float32
    module = SequenceClassificationModule(
        str(tiny_bert), num_labels=3, dtype="bfloat16", attn_implementation="eager"
    )
    assert module.model.dtype == torch.bfloat16
    assert module.model.config._attn_implementation == "eager"
    assert module.hparams.dtype == "bfloat16"


def test_revision_and_trust_remote_code_reach_the_model_and_its_tokenizer(tiny_bert, monkeypatch):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from lsframe.modules import SequenceClassificationModule

    calls: dict[str, dict] = {}
    original = AutoModelForSequenceClassification.from_pretrained

    def model_spy(*args, **kwargs):
        calls["model"] = kwargs
        return original(*args, **kwargs)

    def tokenizer_spy(*args, **kwargs):
        calls["tokenizer"] = kwargs
        return "tokenizer"

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", model_spy)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", tokenizer_spy)
    module = SequenceClassificationModule(
        str(tiny_bert), num_labels=2, revision="v1.0", trust_remote_code=True
    )
    assert calls["model"]["revision"] == "v1.0" and calls["model"]["trust_remote_code"] is True
    assert module.tokenizer == "tokenizer"
    assert calls["tokenizer"] == {"revision": "v1.0", "trust_remote_code": True}


def test_an_attention_implementation_transformers_refuses_is_a_config_error(tiny_bert):
    from lsframe.errors import ConfigError
    from lsframe.modules import SequenceClassificationModule

    with pytest.raises(ConfigError, match="attn_implementation 'nope' cannot be used") as info:
        SequenceClassificationModule(str(tiny_bert), attn_implementation="nope")
    assert info.value.argument == "model.attn_implementation"


def test_label_names_become_id2label_and_must_fit_num_labels(tiny_bert):
    from lsframe.errors import ConfigError
    from lsframe.modules import SequenceClassificationModule

    module = SequenceClassificationModule(str(tiny_bert), label_names=["no", "maybe", "yes"])
    assert module.num_labels == 3
    assert module.model.config.id2label == {0: "no", 1: "maybe", 2: "yes"}
    with pytest.raises(ConfigError, match="label_names must be 2 distinct class names"):
        SequenceClassificationModule(str(tiny_bert), num_labels=2, label_names=["a", "b", "c"])
    with pytest.raises(ConfigError, match="regression"):
        SequenceClassificationModule(str(tiny_bert), num_labels=1, label_names=["score"])


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    path = tmp_path_factory.mktemp("tiny_gpt2")
    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=32)
    GPT2LMHeadModel(config).save_pretrained(path)
    return path


def test_a_causal_lm_takes_the_same_loading_options(tiny_gpt2):
    from lsframe.modules import CausalLMModule

    module = CausalLMModule(str(tiny_gpt2), dtype="bfloat16", attn_implementation="eager")
    assert module.model.dtype == torch.bfloat16
    assert module.model.config._attn_implementation == "eager"
    assert CausalLMModule(str(tiny_gpt2)).model.dtype == torch.float32  # the default stays fp32
    with pytest.raises(ConfigError, match="attn_implementation 'nope' cannot be used"):
        CausalLMModule(str(tiny_gpt2), attn_implementation="nope")


def test_an_adapter_alone_is_refused_for_a_base_built_from_a_config(tmp_path):
    # its base's initial weights are saved nowhere: PeftModel.from_pretrained could not load it
    pytest.importorskip("peft")
    from lsframe.modules import CausalLMModule
    from lsframe.modules.export import export_module

    tiny = {"model_type": "gpt2", "vocab_size": 64, "n_positions": 16, "n_layer": 1,
            "n_head": 2, "n_embd": 16}  # fmt: skip
    module = CausalLMModule(config=tiny, lora={"r": 2, "target_modules": ["c_attn"]})
    with pytest.raises(ConfigError, match="built from model.config") as error:
        export_module(module, tmp_path / "out", lora="adapter")
    assert error.value.argument == "lora" and not (tmp_path / "out").exists()
    assert (export_module(module, tmp_path / "merged") / "config.json").exists()


def test_a_module_built_for_a_checkpoint_does_not_report_its_head_as_newly_initialized():
    import logging

    from transformers.utils import logging as hf_logging

    from lsframe.hub import quiet_weight_report

    # transformers logs its load report as a warning of this logger
    report = hf_logging.get_logger("transformers.modeling_utils")
    assert report.isEnabledFor(logging.WARNING)
    with quiet_weight_report():  # load_module, and validate/test/predict with a ckpt_path
        assert not report.isEnabledFor(logging.WARNING)
    assert report.isEnabledFor(logging.WARNING)  # restored
