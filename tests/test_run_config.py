"""lsframe.run_config: what a resumable run records of its config, and the first difference."""

from __future__ import annotations

import pytest
from jsonargparse import Namespace

from lsframe.errors import ConfigError
from lsframe.run_config import defining_config, first_difference, refuse_another_config


def parsed(**trainer) -> Namespace:
    trainer = {"max_steps": 10, "devices": 1, "enable_progress_bar": True, **trainer}
    return Namespace(
        config=["/somewhere/a.yaml"],
        trainer=Namespace(**trainer),
        stages=[Namespace(name="sst2", max_steps=None), Namespace(name="mrpc", max_steps=5)],
        output_dir="runs/x",
    )


def test_where_a_run_executes_is_left_out_and_what_it_computes_kept():
    plain = defining_config(parsed(), leave_out=("output_dir",))
    assert plain == {
        "trainer": {"max_steps": 10},
        "stages": [{"name": "sst2", "max_steps": None}, {"name": "mrpc", "max_steps": 5}],
    }
    moved = defining_config(parsed(devices=4, enable_progress_bar=False), ("output_dir",))
    assert first_difference(plain, moved) is None


def test_the_first_difference_names_its_full_key_with_list_indexes():
    old = defining_config(parsed())
    new = defining_config(parsed())
    new["stages"][1]["max_steps"] = 7
    assert first_difference(old, new) == ("stages[1].max_steps", 5, 7)
    new["stages"].append({"name": "rte"})
    assert first_difference(old, new)[0] == "stages"  # another number of stages


def test_another_config_is_refused_at_the_given_key():
    old, new = defining_config(parsed()), defining_config(parsed(max_epochs=3))
    with pytest.raises(ConfigError) as refused:
        refuse_another_config(old, new, "the run in x", "do y", where="output_dir")
    assert str(refused.value) == (
        "the run in x was started with another config: trainer.max_epochs was unset, now 3; "
        "continuing would carry its progress into results under the new settings: do y "
        "(output_dir)"
    )
    refuse_another_config(old, defining_config(parsed()), "the run in x", "do y", "output_dir")


def test_functions_and_objects_are_recorded_by_names_that_every_process_shares():
    from functools import partial

    from lsframe.modules.optimizer_setup import default_optimizer

    config = Namespace(model=Namespace(optimizer=default_optimizer, other=partial(max, 1)))
    plain = defining_config(config)
    assert plain["model"]["optimizer"] == "lsframe.modules.optimizer_setup.default_optimizer"
    assert " at 0x" not in plain["model"]["other"]
