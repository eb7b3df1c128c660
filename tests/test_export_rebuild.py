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


def export_error(argv: list[str], capsys) -> tuple[int, str]:
    """``(exit status, stderr)`` of an export that fails."""
    with pytest.raises(SystemExit) as exit_info:
        main(["export", *argv])
    return exit_info.value.code, capsys.readouterr().err


def test_a_base_model_that_changed_since_the_checkpoint_is_one_line_naming_both(
    bert_checkpoint, tmp_path, capsys
):
    # load_state_dict's size mismatch came as a 56-line traceback
    checkpoint, base = bert_checkpoint
    shutil.rmtree(base)
    helpers.tiny_bert_dir(base, hidden=32)  # the directory overwritten with a wider model
    status, err = export_error([str(checkpoint), str(tmp_path / "out")], capsys)
    assert status == 1 and err.count("\n") == 1
    assert err.startswith(
        f"lsframe export: error: the weights do not fit the model built from "
        f"model_name_or_path {str(base)!r} (changed since the checkpoint was written?): "
        "size mismatch for model."
    )
    assert "more)" in err and err.rstrip().endswith(f"({checkpoint})")
    assert not (tmp_path / "out").exists()
