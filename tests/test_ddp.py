"""Two CPU processes (gloo DDP): every rank takes the same line-search steps."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from helpers import two_process_results

WORKER = Path(__file__).resolve().parent / "ddp_worker.py"


@pytest.mark.parametrize("name", ["salsa", "plasls"])
def test_two_process_ddp_ends_with_identical_parameters(name, tmp_path):
    result = subprocess.run(
        [sys.executable, str(WORKER), str(tmp_path), name, "12"],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 12
    assert ranks[0]["forwards"] == ranks[1]["forwards"]
    assert ranks[0]["searches"] == ranks[1]["searches"] >= 9  # SaLSA searches the first 9 steps
    for a, b in zip(ranks[0]["params"], ranks[1]["params"]):
        assert torch.equal(a, b)


def test_every_callback_keeps_ranks_identical_under_ddp(tmp_path):
    result = subprocess.run(
        [sys.executable, str(WORKER), str(tmp_path), "callbacks", "12"],
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 12
    # the shuffled ResumableDataLoader became a DistributedSampler loader: each rank its shard
    assert ranks[0]["sampler"] == ranks[1]["sampler"] == "DistributedSampler"
    assert not torch.equal(ranks[0]["first_batch"], ranks[1]["first_batch"])
    for a, b in zip(ranks[0]["params"], ranks[1]["params"]):
        assert torch.equal(a, b)
    for key in ("fisher", "child_mask"):
        for name, tensor in ranks[0][key].items():
            assert torch.equal(tensor, ranks[1][key][name]), (key, name)


def test_the_entry_point_releases_the_process_group_it_ran_under(tmp_path, capsys):
    import torch.distributed as dist

    from lsframe.__main__ import main

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        main(["combine", "flat", "flat"])  # any command; a DDP fit leaves its group like this
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_a_save_on_exception_beside_several_processes_is_warned_about(tmp_path):
    # an exception on one rank hung the job: its save waits for the processes still training
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import ModelCheckpoint, OnExceptionCheckpoint

    from lsframe.checkpointing import BestAndLastCheckpoint
    from lsframe.modules.distributed import warn_exception_checkpoint

    saving = {
        "OnExceptionCheckpoint": OnExceptionCheckpoint(dirpath=tmp_path),
        "BestAndLastCheckpoint's save_on_exception": BestAndLastCheckpoint(
            dirpath=tmp_path, save_on_exception=True
        ),
    }
    for what, callback in saving.items():
        with pytest.warns(UserWarning, match=f"{what} beside 2 processes"):
            warn_exception_checkpoint(SimpleNamespace(world_size=2, callbacks=[callback]))
    quiet = [ModelCheckpoint(dirpath=tmp_path), BestAndLastCheckpoint(dirpath=tmp_path)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_exception_checkpoint(SimpleNamespace(world_size=1, callbacks=list(saving.values())))
        warn_exception_checkpoint(SimpleNamespace(world_size=2, callbacks=quiet))


PLAIN_WORKER = Path(__file__).resolve().parent / "plain_ddp_worker.py"


@pytest.fixture(scope="module")
def plain_ddp_results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("plain_ddp") / "results.json"
    return two_process_results(PLAIN_WORKER, out)


@pytest.mark.parametrize("name", ["salsa", "adamsls", "sgdsls"])
def test_in_a_plain_ddp_loop_make_closure_keeps_the_replicas_identical(name, plain_ddp_results):
    # each rank's search decided on its own loss: SaLSA's replicas were 0.23 apart after 5 steps
    result = plain_ddp_results[name]
    assert result["max_diff"] == 0.0 and result["warnings"] == [], result


@pytest.mark.parametrize("name", ["salsa", "adamsls", "sgdsls"])
def test_a_model_one_process_trains_alone_steps_without_the_others(name, plain_ddp_results):
    # a collective in its steps waited for processes that never came: a 30-minute hang
    assert plain_ddp_results[name]["trained_alone"]
