"""The image-folder layout's checks: classes are visible folders, 2 or more, each with an image,
said at the folder before any model loads; files that are not images are counted in a warning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from lsframe.data.images import ImageFolderDataModule
from lsframe.errors import DataError


def folders(root: Path, layout: dict[str, list[str]]) -> Path:
    """``layout``: ``"train/a": ["x.png", "notes.txt"]``; an empty list makes an empty folder."""
    for folder, files in layout.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in files:
            if name.endswith(".png"):
                Image.new("RGB", (8, 8)).save(root / folder / name)
            else:
                (root / folder / name).write_text("not an image")
    return root


TWO = {"train/a": ["1.png"], "train/b": ["2.png"], "val/a": ["3.png"], "val/b": ["4.png"]}


def test_one_class_folder_is_refused_at_the_split_folder(tmp_path):
    root = folders(tmp_path, {"train/cat": ["1.png"], "val/cat": ["2.png"]})
    with pytest.raises(DataError, match=r"1 class folder \(cat\); a classifier needs 2") as error:
        ImageFolderDataModule(str(root))
    assert error.value.where == str(root / "train")


def test_a_class_folder_without_an_image_is_refused_at_that_folder(tmp_path):
    root = folders(tmp_path, {**TWO, "val/b": ["readme.txt"]})
    with pytest.raises(DataError, match="no image file in this class folder") as error:
        ImageFolderDataModule(str(root))
    assert error.value.where == str(root / "val" / "b")


def test_hidden_folders_are_not_classes_and_other_files_are_counted_in_a_warning(tmp_path):
    root = folders(tmp_path, {**TWO, "train/.ipynb_checkpoints": [], "train/a/": ["notes.txt"]})
    data = ImageFolderDataModule(str(root), image_size=8, batch_size=2)
    assert data.num_classes == 2
    with pytest.warns(UserWarning, match=r"1 file\(s\) under .*train are not images .*notes\.txt"):
        built = data.build("fit")
    assert built["train"].classes == ["a", "b"] and len(built["train"]) == 2
    # what an exported timm model records as its preprocessing: resize to 8·256/224, crop 8
    config = data.data_config()
    assert config["input_size"] == (3, 8, 8) and config["crop_pct"] == 224 / 256


def test_hidden_image_files_are_not_samples_and_are_counted_in_the_warning(tmp_path):
    # macOS's "._0.png" resource fork became a sample that did not decode mid-epoch
    root = folders(tmp_path, {**TWO, "train/a/": ["notes.txt"]})
    (root / "train" / "a" / "._1.png").write_bytes(b"\x00\x05\x16\x07 resource fork")
    Image.new("RGB", (8, 8)).save(root / "train" / "b" / ".2.png")
    data = ImageFolderDataModule(str(root), image_size=8, batch_size=2)
    with pytest.warns(
        UserWarning, match=r"3 file\(s\) under .*train .*hidden.* \(e\.g\. .*notes\.txt, .*/\."
    ) as w:
        built = data.build("fit")
    assert len(w) == 1 and [Path(p).name for p, _ in built["train"].samples] == ["1.png", "2.png"]
    (root / "val" / "b" / "4.png").rename(root / "val" / "b" / "._4.png")
    with pytest.raises(DataError, match="no image file in this class folder") as error:
        ImageFolderDataModule(str(root))
    assert error.value.where == str(root / "val" / "b")


def test_a_class_folder_whose_images_sit_in_a_symlinked_sub_folder_is_a_class(tmp_path):
    # refused as a folder without an image, though torchvision's ImageFolder loads it
    root = folders(tmp_path / "images", TWO)
    store = folders(tmp_path / "store", {"birds": ["5.png", "6.png"]}) / "birds"
    (root / "train" / "c").mkdir()
    (root / "train" / "c" / "link").symlink_to(store, target_is_directory=True)
    folders(root, {"val/c": ["7.png"]})
    data = ImageFolderDataModule(str(root), image_size=8, batch_size=2)
    assert data.num_classes == 3
    built = data.build("fit")
    assert sorted(Path(p).name for p, label in built["train"].samples if label == 2) == [
        "5.png",
        "6.png",
    ]


def test_a_failed_cifar_download_is_one_line_at_the_download_key(tmp_path, monkeypatch):
    import urllib.error

    from torchvision import datasets

    from lsframe.data.images import CIFARDataModule
    from lsframe.errors import DataError

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(datasets, "CIFAR10", offline)
    data = CIFARDataModule(data_dir=str(tmp_path), download=True)
    with pytest.raises(DataError, match="downloading CIFAR10 into .* failed") as error:
        data.setup("fit")
    assert error.value.where == "data.init_args.download"


@pytest.mark.parametrize(
    ("key", "value", "rule"),
    [
        ("train_limit", 0, "an integer >= 1 or None"),
        ("val_limit", -2, "an integer >= 1 or None"),
        ("num_workers", -1, "an integer >= 0"),
        ("image_size", 0, "an integer >= 1"),
    ],
)
def test_limits_and_workers_are_checked_at_their_keys(tmp_path, key, value, rule):
    # a negative limit dropped images silently; negative workers failed at the first loader
    with pytest.raises(ValueError, match=f"data.{key} must be {rule}"):
        ImageFolderDataModule(str(folders(tmp_path, TWO)), **{key: value})


def resnet_config(tmp_path: Path, root: Path, max_steps: int, **data: Any) -> Path:
    """A config file fitting resnet18 with SGD on the image folder ``root`` (32 pixels, batches
    of 2; ``data``: more of its init arguments), CSV logs under ``tmp_path/runs``."""
    import yaml

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "trainer": {"max_steps": max_steps, "enable_progress_bar": False, "logger": {
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": str(tmp_path / "runs"), "name": "img"}}},
        "model": {"class_path": "lsframe.modules.ImageClassificationModule", "init_args": {
            "model_name": "resnet18",
            "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.01}}}},
        "data": {"class_path": "lsframe.data.ImageFolderDataModule", "init_args": {
            "root": str(root), "image_size": 32, "batch_size": 2, **data}},
    }))  # fmt: skip
    return config


def test_class_folder_names_reach_predictions_and_the_export(tmp_path, capsys):
    # predict wrote class indices only, and the export had no class names
    import json

    from lsframe.__main__ import main

    three = {f"{split}/{name}": ["1.png", "2.png"] for split in ("train", "val")
             for name in ("bird", "cat", "dog")}  # fmt: skip
    root = folders(tmp_path / "images", three)
    config = resnet_config(tmp_path, root, max_steps=1, eval_batch_size=2)
    main(["fit", "--config", str(config)])
    (checkpoint,) = (tmp_path / "runs").rglob("last.ckpt")
    main(["predict", "--config", str(config), "--ckpt_path", str(checkpoint)])
    (written,) = (tmp_path / "runs").rglob("predictions.jsonl")
    lines = [json.loads(line) for line in written.read_text().splitlines()]
    assert len(lines) == 6
    assert all(line["label_name"] == ("bird", "cat", "dog")[line["label"]] for line in lines)
    main(["export", str(checkpoint), str(tmp_path / "export")])
    saved = json.loads((tmp_path / "export" / "config.json").read_text())
    assert saved["label_names"] == ["bird", "cat", "dog"]


@pytest.mark.parametrize("workers", [0, 1])
def test_an_image_that_does_not_decode_mid_run_says_where_the_run_so_far_is(
    workers, tmp_path, capsys
):
    # the fit ended with no checkpoint: every step since the last save was lost; from a
    # worker, the line lost the reason and the file

    from lsframe.__main__ import main

    layout = {f"{split}/{name}": [f"{i}.png" for i in range(8)] for split in ("train", "val")
              for name in ("a", "b")}  # fmt: skip
    root = folders(tmp_path / "images", layout)
    (root / "train" / "b" / "7.png").write_bytes(b"not a png")
    config = resnet_config(tmp_path, root, max_steps=8, eval_batch_size=4, num_workers=workers)
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config)])
    assert exit_info.value.code == 1
    (last,) = (tmp_path / "runs").rglob("last.ckpt")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    bad = root / "train" / "b" / "7.png"
    reason, up_to = "image does not decode (UnidentifiedImageError)", f"the run up to it: {last}"
    resume = "(fix the input and resume it with --ckpt_path last)"
    assert line == (
        f"lsframe fit: error: {reason}; {up_to} {resume} ({bad})"
        if workers == 0
        else f"lsframe fit: error: {reason} ({bad}); {up_to} {resume}"
    )
    assert torch.load(last, weights_only=False)["global_step"] > 0
    Image.new("RGB", (8, 8)).save(root / "train" / "b" / "7.png")
    main(["fit", "--config", str(config), "--ckpt_path", "last"])
    assert torch.load(last, weights_only=False)["global_step"] == 8


def test_val_class_folders_that_differ_from_train_s_are_named_with_the_side(tmp_path):
    # the message gave the symmetric difference with "..." and came only after the model loaded
    three = {**TWO, "train/c": ["5.png"]}
    with pytest.raises(DataError, match=r"val lacks \['c'\] \(train: \['a', 'b', 'c'\]\)") as e:
        ImageFolderDataModule(str(folders(tmp_path / "lacks", three)))
    assert e.value.where == str(tmp_path / "lacks" / "val")
    more = {**TWO, "val/c": ["5.png"]}
    with pytest.raises(
        DataError, match=r"val has \['c'\], which train lacks \(train: \['a', 'b'\]\)"
    ):
        ImageFolderDataModule(str(folders(tmp_path / "more", more)))


def test_a_callback_s_own_data_error_is_placed_and_says_where_the_run_so_far_is(tmp_path, capsys):
    # placed at its item of trainer.callbacks, the line lost "the run up to it: <last.ckpt>"
    import yaml

    from lsframe.__main__ import main

    layout = {f"{split}/{name}": ["1.png", "2.png"] for split in ("train", "val")
              for name in ("a", "b")}  # fmt: skip
    config = resnet_config(tmp_path, folders(tmp_path / "images", layout), max_steps=8)
    settings = yaml.safe_load(config.read_text())
    settings["trainer"]["callbacks"] = [
        {"class_path": "helpers.UnreadableSideFile", "init_args": {"path": "side.txt"}}
    ]
    config.write_text(yaml.safe_dump(settings))
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(config)])
    (last,) = (tmp_path / "runs").rglob("last.ckpt")
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"lsframe fit: error: UnreadableSideFile: side.txt does not parse; the run up to it: "
        f"{last} (fix the input and resume it with --ckpt_path last) "
        "(trainer.callbacks[0].init_args.path)"
    )


def test_a_resume_refused_for_its_loader_place_is_refused_before_it_writes_anything(
    tmp_path, capsys
):
    # the refusal came while Lightning restored the loops: config.yaml already said batch size
    # 4 beside a checkpoint trained with 2, and metrics.csv was renamed for a resume never made
    from lsframe.__main__ import main

    layout = {f"{split}/{name}": [f"{i}.png" for i in range(8)] for split in ("train", "val")
              for name in ("a", "b")}  # fmt: skip
    config = resnet_config(tmp_path, folders(tmp_path / "images", layout), max_steps=3)
    main(["fit", "--config", str(config)])  # 8 batches an epoch: last.ckpt at step 3 of 8
    (run,) = (tmp_path / "runs" / "img").iterdir()
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--ckpt_path", "last", "--trainer.max_steps", "6",
              "--data.init_args.batch_size", "4"])  # fmt: skip
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "lsframe fit: error: the checkpoint's training loader handed out batches of 2, this one "
        "of 4: resuming would train other examples than the rest of its epoch; resume with the "
        "data settings it was saved with (data.init_args.batch_size)"
    )
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


@pytest.mark.parametrize(
    ("model", "refused"), [("vit_tiny_patch16_224", True), ("test_vit", False)]
)
def test_a_fixed_size_model_given_other_images_is_refused_at_image_size_before_a_step(
    model, refused, tmp_path, capsys
):
    # a 118-line AssertionError of timm's at the first step; a model that takes any size runs
    from lsframe.__main__ import main

    config = resnet_config(tmp_path, folders(tmp_path / "images", TWO), max_steps=1)
    argv = ["fit", "--config", str(config), "--model.init_args.model_name", model]
    if not refused:
        main(argv)
        assert list((tmp_path / "runs").rglob("last.ckpt"))
        return
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        "lsframe fit: error: vit_tiny_patch16_224 takes 224×224 images only, but the data "
        "prepares 32×32: set data.image_size: 224 (or data.timm_model: vit_tiny_patch16_224, "
        "which prepares the images as the model expects) (data.init_args.image_size)\n"
    )
    assert not list((tmp_path / "runs").rglob("*.ckpt"))


def test_a_fixed_size_model_under_data_prepared_by_another_timm_model_is_told_to_change_that():
    # image_size is not read where the data's timm_model prepares the images: the line told
    # the user to set it, which changed nothing
    from types import SimpleNamespace

    from lsframe.errors import ConfigError
    from lsframe.modules import ImageClassificationModule

    module = ImageClassificationModule(model_name="vit_tiny_patch16_224", num_classes=2)
    data = SimpleNamespace(image_size=224, timm_model="resnet50d")
    with pytest.raises(ConfigError, match="set data.timm_model: vit_tiny_patch16_224") as refused:
        module.check_input_size({"input_size": (3, 288, 288)}, data)
    assert refused.value.where == "data.init_args.timm_model"
    module.check_input_size({"input_size": (3, 224, 224)}, data)  # the model's own size
