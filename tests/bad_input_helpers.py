"""Inputs for tests/test_bad_input.py: each builder writes a case's files into its folder
``tmp`` (a small GLUE copy, a config, a checkpoint ...) and returns the command line."""

from __future__ import annotations

import functools
import io
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
Args = Callable[[Path], list[str]]
OPT = "model.init_args.optimizer.init_args"
HELP = "; see: lsframe {} --help"
FIT_HELP = HELP.format("fit")

# ------------------------------------------------------------------------------- input files
TSV = {
    "RTE": "index\tsentence1\tsentence2\tlabel\n0\tA cat sat.\tAn animal sat.\tentailment\n",
    "SST-2": "sentence\tlabel\ngood film\t1\nbad film\t0\n",
    "MRPC": "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tA cat.\tA cat.\n",
    "STS-B": "sentence1\tsentence2\tscore\nA cat.\tA cat.\t5.0\n",
}


def write(path: Path, content: str | bytes | dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, dict):
        content = yaml.safe_dump(content)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def glue(tmp: Path, **train: str) -> Path:
    """A GLUE copy in ``tmp/glue`` (RTE, SST-2, MRPC, STS-B); ``train`` replaces train files."""
    for task, text in TSV.items():
        write(tmp / "glue" / task / "dev.tsv", text)
        write(tmp / "glue" / task / "train.tsv", train.get(task.replace("-", ""), text))
    return tmp / "glue"


def output_folder(tmp: Path) -> None:
    """What an earlier run left in the output folder: none of it may change."""
    write(tmp / "out" / "glue_minilm" / "version_0" / "hparams.yaml", "num_labels: 2\n")
    write(tmp / "out" / "glue_minilm" / "version_0" / "checkpoints" / "last.ckpt", b"old run")
    write(tmp / "out" / "notes.txt", "keep me\n")


def dotted(config: dict, **changes: Any) -> dict:
    """``config`` with ``a__b__c=value`` set at ``a.b.c``."""
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = config
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return config


def glue_config(tmp: Path, **changes: Any) -> dict:
    config = yaml.safe_load((CONFIGS / "glue" / "minilm.yaml").read_text())
    config["data"]["init_args"]["data_dir"] = str(tmp / "glue")
    config["trainer"].update(max_steps=1, default_root_dir=str(tmp / "out"))
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp / "out")
    return dotted(config, **changes)


def fit(
    *extra: str,
    train: dict | None = None,
    text: str | None = None,
    files: dict | None = None,
    **changes: Any,
) -> Args:
    """``fit --config <the MiniLM GLUE config with changes>`` (``{tmp}`` in a string value is
    the case's folder); ``text`` replaces the config, ``files`` are written into the folder."""

    def args(tmp: Path) -> list[str]:
        glue(tmp, **(train or {}))
        for name, content in (files or {}).items():
            write(tmp / name, content)
        changes_here = {
            k: v.format(tmp=tmp) if isinstance(v, str) else v for k, v in changes.items()
        }
        config = text if text is not None else glue_config(tmp, **changes_here)
        config = write(tmp / "bad.yaml", config)
        return ["fit", "--config", str(config), *[e.format(tmp=tmp) for e in extra]]

    return args


def image_fit(data: dict, model: dict | None = None) -> Callable[[Path], dict]:
    def config(tmp: Path) -> dict:
        return {
            "seed_everything": 0,
            "trainer": {"max_steps": 1, "logger": False, "accelerator": "cpu",
                        "num_sanity_val_steps": 0, "enable_progress_bar": False,
                        "enable_model_summary": False, "default_root_dir": str(tmp / "out")},
            "model": {"class_path": "lsframe.modules.ImageClassificationModule",
                      "init_args": {"model_name": "resnet18", **(model or {})}},
            "data": {**data, "init_args": {k: v.format(tmp=tmp) if isinstance(v, str) else v
                                           for k, v in data["init_args"].items()}},
        }  # fmt: skip

    return config


def idx_files(tmp: Path, labels: list[int]) -> None:
    n = len(labels)
    write(tmp / "mnist" / "train-images-idx3-ubyte",
          struct.pack(">IIII", 2051, n, 28, 28) + bytes(n * 28 * 28))  # fmt: skip
    write(tmp / "mnist" / "train-labels-idx1-ubyte", struct.pack(">II", 2049, n) + bytes(labels))


def image_folder(tmp: Path) -> None:
    from PIL import Image

    for split, name in (("train", "a"), ("val", "a"), ("val", "b")):
        (tmp / "images" / split / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp / "images" / split / name / "ok.png")
    write(tmp / "images" / "train" / "b" / "bad.png", b"not an image at all")


def config_case(subcommand: str, make: Callable[[Path], dict], prepare=None) -> Args:
    def args(tmp: Path) -> list[str]:
        if prepare is not None:
            prepare(tmp)
        return [subcommand, "--config", str(write(tmp / "bad.yaml", make(tmp)))]

    return args


def sequence(**changes: Any) -> Callable[[Path], dict]:
    def config(tmp: Path) -> dict:
        config = yaml.safe_load((CONFIGS / "sequential" / "minilm_sst2_mrpc.yaml").read_text())
        for stage in config["stages"]:
            stage["data"]["init_args"]["data_dir"] = str(tmp / "glue")
        config["output_dir"] = str(tmp / "out")
        return dotted(config, **changes)

    return config


def search(**changes: Any) -> Callable[[Path], dict]:
    def config(tmp: Path) -> dict:
        config = yaml.safe_load((CONFIGS / "search" / "minilm_sst2_mrpc.yaml").read_text())
        for pair in config["pairs"]:
            for stage in pair:
                stage["data"]["init_args"]["data_dir"] = str(tmp / "glue")
        return dotted(config, search__output_dir=str(tmp / "out"), **changes)

    return config


def duplicate_stage(config: dict) -> dict:
    config["stages"][1] = config["stages"][0]
    return config


def stage_value(config: dict, name: str, value: Any) -> dict:
    config["stages"][1][name] = value
    return config


def duplicate_pair_stage(config: dict) -> dict:
    config["pairs"][0][1] = config["pairs"][0][0]
    return config


def stage_batch_size(config: dict, key: str = "batch_size", value: object = 0) -> dict:
    config["stages"][1]["data"]["init_args"][key] = value
    return config


def checkpoint(content: bytes | dict | None, name: str = "model.ckpt") -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        path = tmp / name
        if isinstance(content, bytes):
            write(path, content)
        elif content is not None:
            torch.save(content, path)
        return path

    return make


def with_checkpoint(subcommand: str, make: Callable[[Path], Path], *extra: str) -> Args:
    def args(tmp: Path) -> list[str]:
        path = make(tmp)
        if subcommand == "export":
            return ["export", str(path), str(tmp / "exported"), *extra]
        glue(tmp)
        config = write(tmp / "config.yaml", glue_config(tmp))
        return [subcommand, "--config", str(config), "--ckpt_path", str(path)]

    return args


def state_file(content: bytes | dict) -> Args:
    def args(tmp: Path) -> list[str]:
        glue(tmp)
        path = tmp / "out" / "sequence_state.pt"
        write(path, content) if isinstance(content, bytes) else torch.save(content, path)
        return ["sequential", "--config", str(write(tmp / "bad.yaml", sequence()(tmp)))]

    return args


def truncated() -> bytes:
    buffer = io.BytesIO()
    torch.save({"state_dict": {"w": torch.zeros(64)}}, buffer)
    return buffer.getvalue()[:300]


def written_by(module: str) -> dict:
    return {
        "state_dict": {},
        "pytorch-lightning_version": "2.6.0",
        "hyper_parameters": {"_class_path": f"lsframe.modules.{module}"},
    }


def fine_tuned_on(task: str, label_names: list[str]) -> dict:
    """A checkpoint of the GLUE config's module, fine-tuned on ``task`` with ``label_names``."""
    saved = written_by("SequenceClassificationModule")
    saved["hyper_parameters"].update(num_labels=len(label_names), label_names=tuple(label_names))
    return {**saved, "datamodule_hyper_parameters": {"task_name": task}}


PICKLED = {"state_dict": {}, "optimizer": functools.partial(torch.optim.SGD, lr=0.1)}
DISTRIBUTION = {
    "model__init_args__param_grouping": "parts",
    "model__init_args__lr_distribution": "{tmp}/dist.yaml",
}


def precision_values() -> list[str]:
    """The values ``Trainer(precision=...)`` accepts in this Lightning version, as its type
    lists them (a string value quoted)."""
    import typing

    import lightning.pytorch as pl

    def values(kind: object) -> list[str]:
        if typing.get_origin(kind) is typing.Literal:
            return [repr(v) for v in typing.get_args(kind)]
        return [v for arg in typing.get_args(kind) for v in values(arg)]

    return values(typing.get_type_hints(pl.Trainer.__init__)["precision"])


def accelerator_names() -> list[str]:
    """The accelerator names ``Trainer(accelerator=...)`` accepts here, in lsframe's order."""
    from lightning.pytorch.accelerators import AcceleratorRegistry

    return ["auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators())]


def folder_with(name: str) -> Callable[[Path], Path]:
    """A maker of the folder ``{tmp}/ckpts`` holding an empty file ``name``."""

    def make(tmp: Path) -> Path:
        write(tmp / "ckpts" / name, b"")
        return tmp / "ckpts"

    return make
