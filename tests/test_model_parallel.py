"""Lightning's ModelParallelStrategy (FSDP2 ``fully_shard`` in ``configure_model``, 2 CPU
processes): a line search stopped mid-epoch resumes its exact trajectory from either checkpoint
route, although the strategy loads into the state dict of an optimizer that has not stepped."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import two_process_results

from lsframe import optim

WORKER = Path(__file__).resolve().parent / "model_parallel_worker.py"


@pytest.fixture(scope="module")
def resumed(tmp_path_factory) -> dict:
    pytest.importorskip("torch.distributed.fsdp")
    out = tmp_path_factory.mktemp("model_parallel") / "results.json"
    return two_process_results(WORKER, out)


@pytest.mark.parametrize("route", ["distributed", "full"])
@pytest.mark.parametrize("name", optim.line_searches())
def test_a_sharded_run_resumed_mid_epoch_ends_where_the_uninterrupted_run_ends(
    name, route, resumed
):
    result = resumed[f"{name}/{route}"]
    if name == "sgdsls" and route == "full":
        # it keeps no per-parameter state, by whose key Lightning (an IndexError) and torch
        # ("Expected device to be set") look up a single file's state: it stops, as torch's SGD
        # without momentum does, instead of resuming another trajectory
        assert "error" in result, result
        return
    assert result.get("max_diff") == 0.0, result
    assert result["same_search_state"], result


@pytest.mark.parametrize("name", optim.line_searches())
def test_a_sharded_run_whose_root_module_owns_parameters_takes_the_steps_of_ddp(name, resumed):
    # a trial's forward under no_grad leaves the root's own parameters gathered; without the
    # closure's reshard the next trials and the next step's gradient saw stale values there
    # (0.35 to 2.0 away from DDP after 10 steps; SlopeTrackingAdam, which runs no trials, 0)
    assert resumed[f"{name}/sharded_vs_ddp"]["max_diff"] < 1e-6
