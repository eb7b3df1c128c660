"""Malformed configs and data files, through ``python -m lsframe``: each error names the key, the
file or the line at fault, and nothing is trained."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from lsframe.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def glue_config(tmp: Path, **init_args) -> dict:
    """The MiniLM GLUE config on a local RTE copy in ``tmp`` (a 1-step fit)."""
    config = yaml.safe_load((CONFIGS / "glue" / "minilm.yaml").read_text())
    config["data"]["init_args"].update(data_dir=str(tmp / "glue"), **init_args)
    config["trainer"].update(max_steps=1, logger=False, default_root_dir=str(tmp))
    return config


def rte(tmp: Path, train: str) -> None:
    folder = tmp / "glue" / "RTE"
    folder.mkdir(parents=True)
    header = "index\tsentence1\tsentence2\tlabel\n"
    (folder / "train.tsv").write_text(header + train)
    (folder / "dev.tsv").write_text(header + "0\tA cat.\tAn animal.\tentailment\n")


def write(tmp: Path, config: dict | str, name: str = "bad.yaml") -> Path:
    path = tmp / name
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    return path


def quickstart_with(
    change: Callable[[dict], None], parse_only: bool = True
) -> Callable[[Path], list[str]]:
    def case(tmp: Path) -> list[str]:
        config = yaml.safe_load((CONFIGS / "quickstart.yaml").read_text())
        change(config)
        return ["fit", "--config", str(write(tmp, config))] + ["--print_config"] * parse_only

    return case


def yaml_syntax(tmp: Path) -> list[str]:
    text = (CONFIGS / "quickstart.yaml").read_text() + "trainer:\n  max_steps: [1\n"
    return ["fit", "--config", str(write(tmp, text)), "--print_config"]


def distribution_file(text: str) -> Callable[[Path], list[str]]:
    def case(tmp: Path) -> list[str]:
        path = write(tmp, text, "dist.yaml")
        config = glue_config(tmp)
        config["model"]["init_args"].update(lr_distribution=str(path), param_grouping="parts")
        rte(tmp, "0\tA cat.\tAn animal.\tentailment\n")
        return ["fit", "--config", str(write(tmp, config))]

    return case


def malformed_tsv(train: str) -> Callable[[Path], list[str]]:
    def case(tmp: Path) -> list[str]:
        rte(tmp, train)
        return ["fit", "--config", str(write(tmp, glue_config(tmp)))]

    return case


def subcommand_with(
    subcommand: str, config: Path, change: Callable[[dict], None]
) -> Callable[[Path], list[str]]:
    def case(tmp: Path) -> list[str]:
        settings = yaml.safe_load(config.read_text())
        change(settings)
        return [subcommand, "--config", str(write(tmp, settings))]

    return case


def sequential_with(change: Callable[[dict], None]) -> Callable[[Path], list[str]]:
    return subcommand_with("sequential", CONFIGS / "sequential" / "minilm_sst2_mrpc.yaml", change)


def search_with(change: Callable[[dict], None]) -> Callable[[Path], list[str]]:
    return subcommand_with("search", CONFIGS / "search" / "minilm_sst2_mrpc.yaml", change)


def _set(path: str, value) -> Callable[[dict], None]:
    def change(config: dict) -> None:
        *parents, last = path.split(".")
        node = config
        for key in parents:
            node = node[key]
        node[last] = value

    return change


# (case, regular expression the error must contain: the key, the file and/or the line)
CASES = {
    "yaml syntax": (yaml_syntax, r"bad\.yaml|line \d+"),
    "unknown key": (quickstart_with(_set("trainer.max_stepz", 3)), r"max_stepz"),
    "wrong type": (quickstart_with(_set("trainer.max_steps", "many")), r"max_steps"),
    "unknown class": (
        quickstart_with(_set("model.init_args.optimizer", {"class_path": "torch.optim.Nope"})),
        r"torch\.optim\.Nope",
    ),
    "missing model": (
        quickstart_with(_set("model.init_args.model_name_or_path", "/no/such/model"), False),
        r"/no/such/model",
    ),
    "distribution: unknown part": (
        distribution_file("embeddings: 1.0\ndecoder: 2.0\n"),
        r"unknown parts \['decoder'\]",
    ),
    "distribution: negative lr": (
        distribution_file("embeddings: -1.0\n"),
        r"dist\.yaml: part 'embeddings' must be a finite number >= 0",
    ),
    "distribution: yaml syntax": (distribution_file("embeddings: [1.0\n"), r"dist\.yaml, line 2"),
    "tsv: column count": (
        malformed_tsv("0\tA cat.\tAn animal.\tentailment\n1\tonly two\tcolumns\n"),
        r"RTE/train\.tsv, line 3: 3 columns",
    ),
    "tsv: label": (
        malformed_tsv("0\tA cat.\tAn animal.\tmaybe\n"),
        r"RTE/train\.tsv, line 2: label 'maybe'",
    ),
    "tsv: missing data_dir": (
        lambda tmp: ["fit", "--config", str(write(tmp, glue_config(tmp / "nowhere")))],
        r"data\.data_dir",
    ),
    "sequential: duplicate names": (
        sequential_with(lambda c: c["stages"].__setitem__(1, c["stages"][0])),
        r"stages: task names must be unique",
    ),
    "sequential: heads": (sequential_with(_set("heads", "both")), r"heads"),
    "search: groups": (search_with(_set("search.groups", 99)), r"search\.groups must be in"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_names_what_is_wrong(name, tmp_path, capsys, minilm, monkeypatch):
    make_args, expected = CASES[name]
    monkeypatch.chdir(ROOT)  # configs' relative paths (../shared/data) resolve as for users
    args = make_args(tmp_path)
    try:
        main(args)
    except SystemExit as exit_info:  # jsonargparse: usage and the error on stderr
        assert exit_info.code not in (0, None), name
        message = capsys.readouterr().err
    except Exception as error:  # raised while building or setting up: the message is the error
        message = f"{type(error).__name__}: {error}"
    else:
        pytest.fail(f"{name}: no error")
    assert re.search(expected, message), message[-2000:]
    assert not (tmp_path / "lightning_logs").exists() and not (ROOT / "lightning_logs").exists()
