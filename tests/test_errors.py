"""The error classes and the one-line classification, in process (the command-line table is
tests/test_bad_input.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from lsframe.cli_errors import error_line
from lsframe.config_files import check_config_files, config_file_arguments
from lsframe.errors import ConfigError, DataError, MissingFileError, UsageError
from lsframe.validation import check_open_unit


def test_an_error_names_its_place_once():
    assert (
        str(DataError("3 columns, expected 4", where="a.tsv:3"))
        == "3 columns, expected 4 (a.tsv:3)"
    )
    assert str(ConfigError("no such directory /x", argument="data.data_dir")) == (
        "no such directory /x (data.data_dir)"
    )
    with pytest.raises(ConfigError) as info:
        check_open_unit(c=1.5)
    assert str(info.value) == "c must be in (0, 1), got 1.5" and info.value.argument == "c"


@pytest.mark.parametrize(
    ("argument", "prefix", "where"),
    [
        ("c", "model.init_args.optimizer.init_args", "model.init_args.optimizer.init_args.c"),
        ("data.batch_size", "stages[1].data.init_args", "stages[1].data.init_args.batch_size"),
        (None, "data.init_args", "data.init_args"),
    ],
)
def test_at_gives_the_full_key(argument, prefix, where):
    located = ConfigError("bad", argument=argument).at(prefix)
    assert located.where == where and type(located) is ConfigError
    assert MissingFileError("gone", where="f.tsv").at(prefix).where == "f.tsv"  # a file stays


def test_exit_status_and_usage_pointer():
    assert error_line(ConfigError("bad", where="k"), "lsframe fit") == (
        "lsframe fit: error: bad (k)",
        2,
    )
    assert error_line(MissingFileError("gone", where="f"), "lsframe fit")[1] == 1
    assert error_line(UsageError("odd"), "lsframe export") == (
        "lsframe export: error: odd; see: lsframe export --help",
        2,
    )
    assert error_line(ValueError("refused\nsecond line"), "lsframe") == (
        "lsframe: error: refused",
        2,
    )


def test_bugs_keep_their_traceback():
    assert error_line(RuntimeError("boom"), "lsframe fit") is None
    assert error_line(TypeError("unsupported operand"), "lsframe fit") is None
    assert error_line(KeyError("x"), "lsframe fit") is None


def test_a_full_disk_is_one_line_naming_the_file_even_inside_a_run():
    import errno

    from lsframe.errors import mark_run_started

    full = OSError(errno.ENOSPC, "No space left on device", "/runs/x/last.ckpt.tmp")
    wrapped = RuntimeError("saving failed")
    wrapped.__cause__ = full
    mark_run_started(True)
    try:
        for error in (full, wrapped):
            line, status = error_line(error, "lsframe fit")
            assert status == 1 and line.startswith("lsframe fit: error: no space left on the")
            assert line.endswith("--ckpt_path last (/runs/x/last.ckpt.tmp)")
        assert error_line(OSError(errno.EIO, "I/O error"), "lsframe fit") is None  # a fault
    finally:
        mark_run_started(False)


def test_config_files_are_read_before_jsonargparse(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("trainer: {max_steps: 1}\n")
    argv = ["fit", "--config", str(good), "-c", "inline: 1", f"--config={good}"]
    assert config_file_arguments(argv) == [str(good), "inline: 1", str(good)]
    check_config_files(argv)  # inline YAML is left to jsonargparse
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1\n")
    with pytest.raises(UsageError) as info:
        check_config_files(["fit", "--config", str(bad)])
    assert info.value.where == f"{bad}:2:1"


def test_an_inline_config_is_a_yaml_mapping_even_with_a_path_in_it_and_a_missing_file_is_not(
    tmp_path, capsys
):
    from lsframe.__main__ import main
    from lsframe.config_stacking import read_config

    inline = f"data: {{init_args: {{data_dir: {tmp_path}/glue}}}}"  # a '/' in it
    check_config_files(["fit", "--config", inline, "-c", '{"trainer": {"max_steps": 3}}'])
    assert read_config(inline) == {"data": {"init_args": {"data_dir": f"{tmp_path}/glue"}}}
    for missing in (str(tmp_path / "nope.yaml"), "nope", str(tmp_path)):
        with pytest.raises(UsageError) as info:
            check_config_files(["fit", "--config", missing])
        assert (info.value.message, info.value.where) == ("config file not found", missing)
        assert read_config(missing) is None
    with pytest.raises(UsageError) as info:
        check_config_files(["fit", "--config", "[1, 2]"])
    assert str(info.value) == "inline --config is a list, expected a mapping ([1, 2])"
    with pytest.raises(UsageError) as info:
        check_config_files(["fit", "--config", "{trainer: [1}"])
    assert info.value.where == "inline --config:1:13"
    glue_minilm = str(Path(__file__).resolve().parents[1] / "configs" / "glue" / "minilm.yaml")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", glue_minilm, "--config", inline, "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["init_args"]["data_dir"] == f"{tmp_path}/glue"
    assert printed["data"]["init_args"]["task_name"] == "rte"  # the file's, kept


def test_an_inline_config_longer_than_a_file_name_may_be_is_read_as_inline(capsys):
    # stat refused it (ENAMETOOLONG) and the command ended in a traceback
    from lsframe.__main__ import main
    from lsframe.config_stacking import read_config

    inline = "data: {init_args: {max_length: 64}}" + " " * 300
    check_config_files(["fit", "--config", inline])
    assert read_config(inline) == {"data": {"init_args": {"max_length": 64}}}
    quickstart = str(Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", quickstart, "--config", inline, "--print_config"])
    assert exit_info.value.code in (0, None)
    assert yaml.safe_load(capsys.readouterr().out)["data"]["init_args"]["max_length"] == 64


def test_a_refused_key_is_placed_in_the_first_config_file_giving_it_unless_the_command_line_does(
    tmp_path,
):
    from lsframe.config_files import where_in_config_files

    good = tmp_path / "good.yaml"
    good.write_text("data:\n  init_args:\n    batch_size: 4\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: {}\ndata:\n  batch_size: eight\n")  # init_args left out
    argv = ["fit", "--config", str(good), "-c", str(bad)]
    key = "data.init_args.batch_size"
    assert where_in_config_files(argv, key, "eight") == f"{bad}:3"  # the value refused
    assert where_in_config_files(argv, key) == f"{good}:3"  # the first that gives the key
    assert where_in_config_files(["fit", "--data.batch_size", "eight", *argv[1:]], key) is None
    inline = [*argv, "--config", "trainer: {callbacks: [{init_args: {x: 1}}, {y: 2}]}"]
    assert where_in_config_files(inline, "trainer.callbacks[1].init_args.y") == "inline --config:1"
    assert where_in_config_files(argv, "model.init_args.optimizer") is None


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        ([], "lsframe: error: a subcommand is required: fit, validate, test, predict, sequential, "
             "search, combine, export; see: lsframe --help"),
        (["fitt"], "lsframe: error: unknown subcommand 'fitt', did you mean 'fit'? (subcommands: "
                   "fit, validate, test, predict, sequential, search, combine, export); see: "
                   "lsframe --help"),
    ],
)  # fmt: skip
def test_a_missing_or_unknown_subcommand_is_one_line(argv, line, capsys):
    from lsframe.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == line + "\n"


def test_once_a_fit_is_past_its_setup_only_lsframes_own_errors_lose_their_traceback():
    from lsframe.cli_errors import error_line
    from lsframe.errors import DataError, mark_run_started

    shape_bug = ValueError("mat1 and mat2 shapes cannot be multiplied (4x8 and 16x2)")
    assert error_line(shape_bug, "lsframe fit") is not None  # while reading inputs: a bad value
    mark_run_started()
    try:
        assert error_line(shape_bug, "lsframe fit") is None  # the run's own failure: traceback
        bad_image = DataError("image does not decode (OSError)", where="train/b/bad.png")
        assert error_line(bad_image, "lsframe fit") == (
            "lsframe fit: error: image does not decode (OSError) (train/b/bad.png)",
            1,
        )
    finally:
        mark_run_started(False)


def test_lightning_refusing_a_validation_interval_is_one_line_at_its_key_after_the_start():
    from helpers import TinyRegression, loader, trainer

    from lsframe.errors import mark_run_started

    fit = trainer(max_epochs=1, val_check_interval=50, check_val_every_n_epoch=1)
    with pytest.raises(ValueError) as caught:  # Lightning's own words, from this version
        fit.fit(TinyRegression(), loader(32, 4), loader(8, 4))
    mark_run_started()  # it comes when the fit loads its data, after the fit's start
    try:
        line = error_line(caught.value, "lsframe fit")
    finally:
        mark_run_started(False)
    assert line == (
        "lsframe fit: error: val_check_interval 50 is more than the 8 training batches of an "
        "epoch, so validation would never run: lower it, or set "
        "trainer.check_val_every_n_epoch: null to count batches across epochs "
        "(trainer.val_check_interval)",
        2,
    )


def test_two_callbacks_lightning_cannot_save_apart_are_one_line_at_the_callbacks():
    import lightning.pytorch as pl

    from lsframe.callbacks import EWC

    with pytest.raises(RuntimeError) as caught:  # Lightning's own words, from this version
        pl.Trainer(callbacks=[EWC(), EWC(ewc_lambda=5.0)], logger=False, enable_checkpointing=False)
    assert error_line(caught.value, "lsframe fit") == (
        "lsframe fit: error: two EWC callbacks have one checkpoint state key (the class name, "
        "with the settings that tell its instances apart where the class keys on any), so the "
        "second's state would overwrite the first's; keep one, or make them differ in those "
        "settings (trainer.callbacks)",
        2,
    )
    # EWC keys on its source, mode and parameters: BERTcL's MLM term beside a task EWC is fine
    pl.Trainer(callbacks=[EWC(), EWC(mode="online")], logger=False, enable_checkpointing=False)


@pytest.mark.parametrize("rank", [0, 1])
def test_under_ddp_a_config_error_is_printed_by_rank_zero_alone(rank, monkeypatch, capsys):
    # every rank of a DDP fit meets the same configuration error: each printed the same line
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from lsframe.__main__ import _exit_on_bad_input

    monkeypatch.setattr(rank_zero_only, "rank", rank)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as exit_:
        _exit_on_bad_input(ConfigError("no such metric", where="checkpoint.monitor"), ["fit"])
    assert exit_.value.code == 2
    printed = capsys.readouterr().err
    assert printed == (
        "lsframe fit: error: no such metric (checkpoint.monitor)\n" if rank == 0 else ""
    )
    with pytest.raises(SystemExit) as exit_:  # a data error may be that rank's alone
        _exit_on_bad_input(DataError("3 columns, expected 4", where="a.tsv:3"), ["fit"])
    assert exit_.value.code == 1
    error = "error" if rank == 0 else "error (rank 1)"
    assert capsys.readouterr().err == f"lsframe fit: {error}: 3 columns, expected 4 (a.tsv:3)\n"


def test_lightning_refusing_fsdp_on_a_cpu_is_one_line_at_the_strategy():
    import lightning.pytorch as pl

    with pytest.raises(ValueError) as info:
        pl.Trainer(strategy="fsdp", accelerator="cpu", devices=2, logger=False)
    line, status = error_line(info.value, "lsframe fit")
    assert line.startswith("lsframe fit: error: The strategy `fsdp` requires a GPU accelerator")
    assert line.endswith("(trainer.strategy)") and status == 2


def test_a_rank_variable_without_a_world_of_several_processes_keeps_the_line(monkeypatch, capsys):
    # SLURM_PROCID=3 in a one-task job step: Lightning's rank is 3, and the line was lost
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from lsframe.__main__ import _exit_on_bad_input

    monkeypatch.setattr(rank_zero_only, "rank", 3)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(SystemExit):
        _exit_on_bad_input(ConfigError("bad", where="k"), ["fit"])
    assert capsys.readouterr().err == "lsframe fit: error: bad (k)\n"


def test_an_unknown_key_in_a_stage_is_placed_in_the_stage_of_the_class_the_error_names(tmp_path):
    import yaml

    from lsframe.cli_usage import _nested_item_holding

    glue = {"class_path": "lsframe.data.GlueDataModule", "init_args": {"task_name": "rte"}}
    amazon = {"class_path": "lsframe.data.AmazonFineFoodReviews", "init_args": {"task_name": "x"}}
    config = tmp_path / "sequence.yaml"
    config.write_text(yaml.safe_dump({"stages": [{"data": glue}, {"data": amazon}]}))
    argv = ["--config", str(config)]
    keys = ["stages", "init_args", "data"]
    assert _nested_item_holding(argv, keys, "task_name", "lsframe.data.AmazonFineFoodReviews") == (
        "stages[1].data.init_args"
    )
    assert _nested_item_holding(argv, keys, "task_name", None) == "stages[0].data.init_args"


class _Undecodable(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> None:
        raise DataError("image does not decode (OSError)", where="images/train/cat/bad.png")


def test_a_data_error_raised_in_a_dataloader_worker_is_its_own_line():
    # torch re-raises it with the worker's whole traceback as the message: one 2,500-character
    # line with the file at its end
    loader = torch.utils.data.DataLoader(_Undecodable(), num_workers=1)
    with pytest.raises(DataError) as caught:
        list(loader)
    assert error_line(caught.value, "lsframe fit") == (
        "lsframe fit: error: image does not decode (OSError) (images/train/cat/bad.png)",
        1,
    )


def test_a_callback_s_refusal_during_a_fit_is_placed_at_its_item_of_the_callbacks():
    # a sequence's stage named a bare "(update_ratio)"
    from lsframe.config_nodes import at_callback

    callbacks = [
        {"class_path": "lsframe.callbacks.ValleyExploration"},
        {"class_path": "lsframe.callbacks.DPS", "init_args": {"update_ratio": 0.05}},
    ]
    refused = ConfigError("DPS: a stage would be 0 optimizer steps", argument="update_ratio")
    assert at_callback(refused, callbacks).where == "trainer.callbacks[1].init_args.update_ratio"
    assert at_callback(refused, callbacks * 2) is refused  # two DPS: which one is not known
    placed = ConfigError("DPS: x", where="somewhere", argument="update_ratio")
    assert at_callback(placed, callbacks) is placed


_PEER_EXITS = """
import os, sys, torch, torch.distributed as dist
rank = int(sys.argv[1])
store = dist.TCPStore("127.0.0.1", int(sys.argv[2]), 2, rank == 0)
dist.init_process_group("gloo", store=store, rank=rank, world_size=2)
dist.barrier()
if rank == 1:
    os._exit(0)  # as a rank does when its own error line is printed
try:
    dist.all_reduce(torch.ones(1))
except RuntimeError as error:
    from lsframe.cli_errors import error_line
    print(error_line(error, "lsframe fit"))
"""


def test_a_collective_failing_because_another_process_stopped_is_one_line():
    # a data error on rank 1 of a DDP fit: its line, then rank 0's 60-line gloo traceback
    import subprocess
    import sys

    from helpers import free_port

    port = str(free_port())
    command = [sys.executable, "-c", _PEER_EXITS]
    peer = subprocess.Popen([*command, "1", port])
    rank0 = subprocess.run([*command, "0", port], capture_output=True, text=True, timeout=120)
    peer.wait(timeout=60)
    # gloo says "closed" or "reset", as the peer's exit and the write race
    assert re.fullmatch(
        r"\(\"lsframe fit: error: another process of this run stopped, so this one stopped too; "
        r"that process's output says why \(one the system killed prints nothing\) "
        r"\(gloo: Connection (closed|reset) by peer\)\", 1\)",
        rank0.stdout.strip(),
    ), rank0.stdout + rank0.stderr
    assert error_line(RuntimeError("a bug of the run"), "lsframe fit") is None


def test_an_enum_member_in_a_parsed_config_dumps_as_its_value():
    # Lightning's Timer(interval=Interval.step) default failed in jsonargparse's YAML dump while
    # the classes were built ("lsframe fit: error: ('cannot represent an object', ...)"); turning
    # the defaults into their values instead broke a class that uses the member (.name)
    import yaml
    from lightning.pytorch.callbacks.timer import Interval

    from lsframe.config_nodes import dump_enums_as_values

    dump_enums_as_values()
    assert yaml.safe_dump({"interval": Interval.step}) == "interval: step\n"


def test_nccl_s_remote_error_says_it_may_be_the_network():
    # NCCL's "remote process exited or there was a network error" was read as a peer's stop
    # alone, and its detail (an InfiniBand completion error) was hidden
    nccl = RuntimeError(
        "NCCL error in: ProcessGroupNCCL.cpp:1970, remote process exited or there was a network "
        "error, NCCL version 2.21.5\nncclRemoteError: A call failed possibly due to a network "
        "error or a remote process exiting prematurely.\nNET/IB : Got completion from peer "
        "10.0.0.2<55555> with status=12"
    )
    line, status = error_line(nccl, "lsframe fit")
    assert status == 1 and "or the network between them failed" in line
    assert "NET/IB : Got completion from peer 10.0.0.2<55555>" in line
