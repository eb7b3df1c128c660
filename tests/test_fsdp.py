"""Sharded parameters (torch FSDP2 ``fully_shard`` on 2 CPU processes): every optimizer reduces
its norms and inner products over all shards, so the ranks decide alike and land where one
process on the whole batches lands."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import two_process_results

from lsframe import optim

WORKER = Path(__file__).resolve().parent / "fsdp_worker.py"
#: the searches whose trials run forwards, on one group (the worker's root-owned-layer cases)
ROOT_PARAM_SEARCHES = [
    n
    for n in optim.line_searches()
    if optim.info(n).forward_trials and optim.info(n).param_grouping != "parts"
]


@pytest.fixture(scope="module")
def fsdp_results(tmp_path_factory) -> dict:
    pytest.importorskip("torch.distributed.fsdp")
    out = tmp_path_factory.mktemp("fsdp") / "results.json"
    return two_process_results(WORKER, out)


@pytest.mark.parametrize("name", [*optim.names(), "slope_tracking_adam+stride8"])
def test_sharded_training_matches_one_process(name, fsdp_results):
    result = fsdp_results[name]
    name = name.split("+")[0]
    assert result["sharded"] == "DTensor"
    assert result["ranks_agree"]
    # the same steps up to float summation order (gradients averaged over ranks' halves)
    assert result["max_diff"] < 1e-5, result
    if optim.info(name).forward_trials:
        assert result["searches"] > 0
    elif optim.info(name).searches:  # a step-size tracker: its alignment over all shards
        assert result["alignments"] > 0


@pytest.mark.parametrize("name", [n for n in optim.line_searches() if optim.info(n).forward_trials])
def test_bfloat16_shards_are_searched_from_a_copy_of_each_local_shard(name, fsdp_results):
    # the copy of x was taken of the DTensors, whose foreach copy has no sharding strategy
    result = fsdp_results[f"{name}+bf16"]
    assert result["searches"] > 0 and result["ranks_agree"] and result["finite"], result


@pytest.mark.parametrize("name", ROOT_PARAM_SEARCHES)
def test_every_trial_sees_the_moved_parameters_the_root_module_holds_itself(name, fsdp_results):
    # a forward under no_grad leaves the root module's own parameters gathered; lsframe's
    # closure reshards after each trial, else the next trial reused the gathered copy (0.25 to
    # 0.51 away from one process after 8 steps)
    assert fsdp_results[f"{name}+root_params"]["max_diff"] < 1e-5


@pytest.mark.parametrize("name", ROOT_PARAM_SEARCHES)
def test_every_trial_sees_the_moved_parameters_of_modules_sharded_to_stay_gathered(
    name, fsdp_results
):
    # ``reshard_after_forward=False`` on every module: all of them stay gathered after a trial
    assert fsdp_results[f"{name}+kept_gathered"]["max_diff"] < 1e-5


@pytest.mark.parametrize("name", ROOT_PARAM_SEARCHES)
def test_under_a_bf16_mixed_precision_policy_where_the_root_holds_a_layer_does_not_matter(
    name, fsdp_results
):
    # the gathered copies are bf16 casts there: the same steps wherever the last layer is held
    # (0.25 to 0.51 apart without the reshard)
    assert fsdp_results[f"{name}+bf16_policy"]["max_diff"] == 0.0


def test_fsdp1_is_refused_for_optimizers_that_reduce_over_parameters():
    import torch
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    from lsframe.modules.base import check_sharding

    params = [torch.nn.Parameter(torch.zeros(2))]
    fsdp1 = FSDPStrategy.__new__(FSDPStrategy)  # the type is what matters; no GPU here
    reducing = [n for n in optim.names() if optim.info(n).reduces_over_parameters]
    assert {"salsa", "plasls", "lamb", "alto"} <= set(reducing)
    for name in reducing:
        record = optim.info(name)
        groups = [{"params": params, "part": "all"}] if record.param_grouping == "parts" else params
        with pytest.raises(ValueError, match="trainer.strategy: .*FSDP2"):
            check_sharding(
                fsdp1,
                record.create(groups, **({"lr": record.test_lr} if record.test_lr else {})),
            )
    check_sharding(fsdp1, torch.optim.AdamW(params))  # elementwise: fine on slices
    check_sharding(DDPStrategy.__new__(DDPStrategy), optim.create("salsa", params))
