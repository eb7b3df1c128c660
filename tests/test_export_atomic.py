"""``lsframe export`` writes into a hidden directory beside the output and renames it into place
at the end: an export cut short (an error, a full disk, Ctrl-C) leaves nothing that looks like
a model, and what a killed export left does not stand in the way of the next."""

from __future__ import annotations

import errno
from pathlib import Path

import helpers
import pytest

from lsframe.__main__ import main


@pytest.fixture(scope="module")
def resnet_checkpoint(tmp_path_factory) -> Path:
    """A two-class timm ResNet-18 checkpoint (random init)."""
    from lsframe.modules import ImageClassificationModule

    module = ImageClassificationModule("resnet18", num_classes=2)
    path = tmp_path_factory.mktemp("resnet") / "resnet.ckpt"
    return helpers.lightning_checkpoint(module, path, model_name="resnet18", num_classes=2)


def fail_after_the_weights(monkeypatch, error: BaseException) -> None:
    """timm's writer writes the export, then ``error`` (a full disk at config.json, say)."""
    import timm.models

    written = timm.models.save_for_hf

    def write_then_fail(model, directory, **kwargs):
        written(model, directory, **kwargs)
        raise error

    monkeypatch.setattr(timm.models, "save_for_hf", write_then_fail)


def test_an_export_cut_by_a_full_disk_leaves_no_directory_behind_and_says_so_for_export(
    resnet_checkpoint, tmp_path, monkeypatch, capsys
):
    # the half-written directory loaded as a model and blocked the rerun, and the line gave
    # fit's "--ckpt_path last" advice
    out = tmp_path / "nested" / "out"
    full = OSError(errno.ENOSPC, "No space left on device")
    fail_after_the_weights(monkeypatch, full)
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(resnet_checkpoint), str(out)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lsframe export: error: no space left")
    assert "ckpt_path" not in err and err.rstrip().endswith(f"({out})")
    assert list(tmp_path.iterdir()) == []  # nor the parent made for it
    monkeypatch.undo()
    main(["export", str(resnet_checkpoint), str(out)])
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors"}
    assert [p.name for p in out.parent.iterdir()] == ["out"]


def test_an_export_stopped_by_ctrl_c_leaves_an_empty_output_directory_as_it_was(
    resnet_checkpoint, tmp_path, monkeypatch
):
    out = tmp_path / "out"
    out.mkdir()
    fail_after_the_weights(monkeypatch, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        main(["export", str(resnet_checkpoint), str(out)])
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and list(out.iterdir()) == []


def test_what_a_killed_export_left_is_removed_and_does_not_block_the_next(
    resnet_checkpoint, tmp_path
):
    left = tmp_path / ".out.export-k1lled_x"  # a kill runs no cleanup
    left.mkdir()
    (left / "model.safetensors").write_bytes(b"truncated")
    other = tmp_path / ".other.export-abcd1234"  # another target's: not this export's to remove
    other.mkdir()
    main(["export", str(resnet_checkpoint), str(tmp_path / "out")])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.export-abcd1234", "out"]
    assert (tmp_path / "out" / "model.safetensors").stat().st_size > 1000


def test_an_output_directory_reached_through_a_symlink_is_exported_into(
    resnet_checkpoint, tmp_path
):
    # the rename onto the symlink failed after the whole export, with a traceback
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    main(["export", str(resnet_checkpoint), str(tmp_path / "link")])
    assert (tmp_path / "link").is_symlink()
    assert {p.name for p in real.iterdir()} == {"config.json", "model.safetensors"}


def test_an_export_has_the_mode_of_a_plain_directory_or_of_the_empty_one_it_replaces(
    resnet_checkpoint, tmp_path
):
    # the staged directory kept mkdtemp's 0700: nobody else could load the model
    from lsframe.checkpoint_io import directory_mode

    main(["export", str(resnet_checkpoint), str(tmp_path / "new")])
    assert (tmp_path / "new").stat().st_mode & 0o7777 == directory_mode()
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o2775)  # a group's folder, set up by its owner
    main(["export", str(resnet_checkpoint), str(shared)])
    assert shared.stat().st_mode & 0o7777 == 0o2775


def test_an_empty_directory_in_a_parent_the_user_cannot_write_is_exported_into_in_place(
    resnet_checkpoint, tmp_path, monkeypatch
):
    import tempfile

    out = tmp_path / "out"
    out.mkdir()

    def no_write(*args, **kwargs):  # the parent's permissions: root ignores them here
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))

    monkeypatch.setattr(tempfile, "mkdtemp", no_write)
    main(["export", str(resnet_checkpoint), str(out)])
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors"}
