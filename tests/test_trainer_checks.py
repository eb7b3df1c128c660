"""The Trainer settings lsframe checks before the model loads refuse exactly what Lightning
refuses once it has loaded (Lightning's own parsers are the reference)."""

from __future__ import annotations

import pytest
from lightning.pytorch.trainer.setup import _determine_batch_limits, _parse_time_interval_seconds
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lsframe.errors import ConfigError
from lsframe.trainer_checks import check_trainer_intervals

BATCH_VALUES = [0, 1, 7, 0.0, 0.25, 1.0, 2.0, 3.5, -1, -0.5, float("nan"), float("inf"), "often"]
DURATIONS = [
    "00:00:01:00",
    " 1:2:3:4",
    "+0:0:0:30",
    "00:01:00",
    "1:2:3:x",
    "often",
    {"hours": 1, "minutes": 30},
    {"hours": 1, "mins": 2},
    {"hours": "one"},
]


def lightning_refuses(check, *args) -> bool:
    try:
        check(*args)
    except (MisconfigurationException, TypeError, ValueError):
        return True
    return False


def lsframe_refuses(trainer: dict) -> str | None:
    try:
        check_trainer_intervals(trainer)
    except ConfigError as error:
        return error.where
    return None


@pytest.mark.parametrize("value", BATCH_VALUES, ids=repr)
@pytest.mark.parametrize("name", ["limit_train_batches", "limit_val_batches", "overfit_batches"])
def test_a_batch_limit_is_refused_at_its_key_exactly_when_lightning_refuses_it(name, value):
    refused = isinstance(value, str) or lightning_refuses(_determine_batch_limits, value, name)
    assert lsframe_refuses({name: value}) == (f"trainer.{name}" if refused else None)


@pytest.mark.parametrize("value", [*BATCH_VALUES, *DURATIONS], ids=repr)
def test_a_validation_interval_is_refused_exactly_when_lightning_refuses_it(value):
    if isinstance(value, (str, dict)):
        refused = lightning_refuses(_parse_time_interval_seconds, value)
    else:  # an int 0 passes Lightning's parser, then divides by zero in the step loop
        refused = value == 0 and isinstance(value, int)
        refused |= lightning_refuses(_determine_batch_limits, value, "val_check_interval")
    where = lsframe_refuses({"val_check_interval": value, "check_val_every_n_epoch": 1})
    assert where == ("trainer.val_check_interval" if refused else None)


@pytest.mark.parametrize("value", [*DURATIONS, "5s", "00:00:00:06"], ids=repr)
def test_a_max_time_is_refused_at_its_key_exactly_when_lightnings_timer_refuses_it(value):
    # Lightning's Timer refused '5s' only once the model had loaded, without the key
    from lightning.pytorch.callbacks import Timer

    refused = lightning_refuses(Timer, value)
    assert lsframe_refuses({"max_time": value}) == ("trainer.max_time" if refused else None)


def test_a_share_of_the_epoch_without_an_epoch_interval_is_refused_as_lightning_refuses_it():
    assert lsframe_refuses({"val_check_interval": 0.5, "check_val_every_n_epoch": None})
    assert lsframe_refuses({"val_check_interval": 50, "check_val_every_n_epoch": None}) is None
    assert lsframe_refuses({"val_check_interval": 0.5}) is None  # Lightning's default: 1


@pytest.mark.parametrize(
    ("name", "value", "refused"),
    [
        ("max_steps", -1, False),
        ("max_steps", 5, False),
        ("max_steps", 0, True),  # Lightning runs no step; lsframe's run length would be unknown
        ("max_steps", -5, True),
        ("max_steps", 2.5, True),
        ("max_epochs", -1, False),
        ("max_epochs", 3, False),
        ("max_epochs", 0, True),  # Lightning's fit ends before its first step: nothing trains
        ("check_val_every_n_epoch", None, False),
        ("check_val_every_n_epoch", 2, False),
        ("check_val_every_n_epoch", 0, True),  # Lightning divided by it
        ("fast_dev_run", True, False),
        ("fast_dev_run", 3, False),
        ("fast_dev_run", -1, True),
        ("val_check_interval", 0, True),  # an int 0 divided by zero in the step loop
    ],
)
def test_trainer_counts_are_refused_at_their_key_before_the_model_loads(name, value, refused):
    assert lsframe_refuses({name: value}) == (f"trainer.{name}" if refused else None)


def test_lightning_callbacks_lsframe_cannot_run_or_resume_are_refused_or_warned_about():
    # an 18-frame AttributeError ('...Module' object has no attribute 'backbone') after loading
    from lightning.pytorch.callbacks import BackboneFinetuning, BatchSizeFinder, ModelPruning

    from lsframe.trainer_checks import check_lightning_callback

    with pytest.raises(ConfigError, match="freeze parameters before the fit") as caught:
        check_lightning_callback("trainer.callbacks[2]", BackboneFinetuning, {})
    assert caught.value.where == "trainer.callbacks[2]"
    with pytest.raises(ConfigError, match="a stopped run cannot resume exactly"):
        check_lightning_callback("trainer.callbacks[1]", BatchSizeFinder, {})

    class MyFinder(BatchSizeFinder):  # a subclass fails as its parent does
        pass

    with pytest.raises(ConfigError, match="MyFinder changes the data's batch size"):
        check_lightning_callback("trainer.callbacks[1]", MyFinder, {})
    # Lightning's ModelPruning saves no masks: a resumed run prunes anew
    with pytest.warns(UserWarning, match="keeps its pruning masks in no checkpoint"):
        check_lightning_callback("trainer.callbacks[0]", ModelPruning, {"pruning_fn": "l1"})


def test_barebones_is_refused_once_at_its_key():
    # four runs, one refusal each after the model loaded, the last naming a setting never given
    from lsframe.trainer_checks import check_barebones

    with pytest.raises(ConfigError, match="leave it false here") as caught:
        check_barebones({"barebones": True, "logger": False})
    assert caught.value.where == "trainer.barebones"
    check_barebones({"barebones": False})
    check_barebones({})


def test_a_last_that_would_be_a_link_to_the_best_is_refused_at_its_key():
    # save_last: link made every "last up to date" save a link to an older best checkpoint:
    # "the run up to it: last.ckpt" pointed 10 steps back
    from lsframe.trainer_checks import check_checkpoint_section

    with pytest.raises(ConfigError, match="use save_last=true") as caught:
        check_checkpoint_section({"checkpoint": {"save_last": "link"}})
    assert caught.value.where == "checkpoint.save_last"
    check_checkpoint_section({"checkpoint": {"save_last": True}})
