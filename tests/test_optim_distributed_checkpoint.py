"""torch.distributed.checkpoint's optimizer state dicts of lsframe's optimizers (keyed by
parameter name, nested or flattened, loaded into a fresh optimizer's template): a run resumed
from one goes on exactly as the run through."""

from __future__ import annotations

import copy

import pytest
import torch
from optim_problem import NAMES, Logistic, make, run


@pytest.mark.parametrize("name", NAMES)
def test_torch_distributed_checkpoint_saves_and_restores_the_search_exactly(name):
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    model = Logistic()
    opt = make(name, model)
    run(model, opt, 10)
    saved = copy.deepcopy(get_optimizer_state_dict(model, opt))  # keys: parameter names
    assert set(saved["state"]) <= {"linear.weight", "linear.bias"}
    saved_model = copy.deepcopy(model.state_dict())
    run(model, opt, 10, start=10)
    resumed = Logistic()
    resumed.load_state_dict(saved_model)
    opt2 = make(name, resumed)
    set_optimizer_state_dict(resumed, opt2, saved)
    run(resumed, opt2, 10, start=10)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), resumed.parameters()))
    assert opt.state["line_search"] == opt2.state["line_search"]


@pytest.mark.parametrize("name", NAMES)
def test_a_flattened_distributed_checkpoint_keeps_the_search_or_is_refused_with_the_reason(name):
    # flatten_optimizer_state_dict=True rebuilds the state from the loading optimizer's own
    # group keys and per-parameter state names: the search state must be a live group key, and
    # moments a fresh optimizer does not have yet cannot come back
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    flat = StateDictOptions(flatten_optimizer_state_dict=True)
    model = Logistic()
    opt = make(name, model)
    run(model, opt, 10)
    saved = copy.deepcopy(get_optimizer_state_dict(model, opt, options=flat))
    saved_model = copy.deepcopy(model.state_dict())
    run(model, opt, 10, start=10)
    resumed = Logistic()
    resumed.load_state_dict(saved_model)
    opt2 = make(name, resumed)
    if opt.search_state.get("moment_step", 0) > 0:
        with pytest.raises(ValueError, match="no Adam moments although they were updated 10"):
            set_optimizer_state_dict(resumed, opt2, saved, options=flat)
        return
    set_optimizer_state_dict(resumed, opt2, saved, options=flat)
    run(resumed, opt2, 10, start=10)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), resumed.parameters()))
    assert opt.state["line_search"] == opt2.state["line_search"]


@pytest.mark.parametrize("flatten", [False, True], ids=["nested", "flattened"])
@pytest.mark.parametrize("name", NAMES)
def test_a_distributed_checkpoint_loaded_into_a_fresh_optimizers_template_resumes_exactly(
    name, flatten, tmp_path
):
    # dcp.load fills only the keys of its template, a fresh optimizer's state dict (Lightning's
    # ModelParallelStrategy and torchtitan resume so; torchtitan flattens): the template must
    # name Adam's moments although the fresh optimizer has not stepped
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(flatten_optimizer_state_dict=flatten)
    model = Logistic()
    opt = make(name, model)
    run(model, opt, 10)
    dcp.save(
        {"optim": get_optimizer_state_dict(model, opt, options=options)}, checkpoint_id=tmp_path
    )
    saved_model = copy.deepcopy(model.state_dict())
    run(model, opt, 10, start=10)
    resumed = Logistic()
    resumed.load_state_dict(saved_model)
    opt2 = make(name, resumed)
    template = {"optim": get_optimizer_state_dict(resumed, opt2, options=options)}
    dcp.load(template, checkpoint_id=tmp_path)
    set_optimizer_state_dict(resumed, opt2, template["optim"], options=options)
    run(resumed, opt2, 10, start=10)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), resumed.parameters()))
    assert opt.state["line_search"] == opt2.state["line_search"]
