"""lsframe.validation: every check names the argument, states the rule and shows the value."""

from __future__ import annotations

import numpy as np
import pytest

from lsframe.callbacks import DPS, ChildTuningD, ValleyExploration
from lsframe.validation import (
    check_bool,
    check_choice,
    check_fraction,
    check_int_at_least,
    check_non_negative,
    check_numbers,
    check_open_unit,
    check_patterns,
    check_positive,
    check_unit,
)

REFUSED = [
    (lambda: check_positive(lr=0.0), "lr must be a positive finite number, got 0.0"),
    (lambda: check_positive(lr=float("inf")), "lr must be a positive finite number, got inf"),
    (lambda: check_positive(lr="1e-3"), "lr must be a number, got '1e-3'"),
    (lambda: check_positive(lr=True), "lr must be a number, got True"),
    (
        lambda: check_positive(allow_none=True, max_grad_norm=-1.0),
        "max_grad_norm must be a positive finite number or None, got -1.0",
    ),
    (lambda: check_non_negative(weight_decay=-0.1), "weight_decay must be >= 0, got -0.1"),
    (lambda: check_open_unit(c=1.0), r"c must be in \(0, 1\), got 1.0"),
    (lambda: check_unit(**{"betas[0]": 1.0}), r"betas\[0\] must be in \[0, 1\), got 1.0"),
    (lambda: check_fraction("p", 1.0), r"p must be in \[0, 1\), got 1.0"),
    (lambda: check_fraction("ratio", 0.0, low_open=True), r"ratio must be in \(0, 1\], got 0.0"),
    (lambda: check_int_at_least(1, max_backtracks=0), "max_backtracks must be an integer >= 1"),
    (lambda: check_int_at_least(1, max_backtracks=2.0), "max_backtracks must be an integer"),
    (
        lambda: check_choice("mode", "both", ("separate", "online")),
        "mode must be 'separate' or 'online', got 'both'",
    ),
    (lambda: check_choice("reset_option", True, (0, 1, 2)), "reset_option must be 0, 1 or 2"),
    (lambda: check_choice("reset_option", 1.0, (0, 1, 2)), "reset_option must be 0, 1 or 2"),
    (lambda: check_bool(smooth="false"), "smooth must be True or False, got 'false'"),
    (lambda: check_bool(smooth=1), "smooth must be True or False, got 1"),
    (
        lambda: check_patterns(include="head"),
        r"include must be a list of regular expressions \(write \['head'\]\), got 'head'",
    ),
    (lambda: check_patterns(exclude=[1]), r"exclude must be a list of regular expressions \(str"),
    (
        lambda: check_patterns(include=["layer", "["]),
        r"include must be a list of regular expressions \('\[': unterminated character set",
    ),
    (
        lambda: check_numbers("betas", 0.9, 2, "a list of 2 numbers"),
        "betas must be a list of 2 numbers, got 0.9",
    ),
    (
        lambda: check_numbers("betas", (0.9,), 2, "a list of 2 numbers"),
        r"betas must be a list of 2 numbers, got \(0.9,\)",
    ),
    (
        lambda: check_numbers("betas", ("0.9", 0.99), 2, "a list of 2 numbers"),
        "betas must be a list of 2 numbers",
    ),
]


@pytest.mark.parametrize("check, message", REFUSED, ids=[m[:24] for _, m in REFUSED])
def test_a_refused_value_raises_one_line_naming_the_argument(check, message):
    with pytest.raises(ValueError, match=f"^{message}") as info:
        check()
    assert "\n" not in str(info.value)


def test_accepted_values_pass_including_none_where_allowed_and_numpy_integers():
    check_positive(lr=1e-3, eps=1)
    check_positive(allow_none=True, trust_clip=None)
    check_non_negative(weight_decay=0.0)
    check_open_unit(c=0.5)
    check_unit(beta=0.0)
    check_fraction("p", 0.0)
    check_fraction("ratio", 1.0, low_open=True)
    check_int_at_least(0, joint_steps=np.int64(0))
    check_int_at_least(1, allow_none=True, max_steps=None)
    check_choice("mode", "online", ("separate", "online"))
    check_choice("reset_option", 2, (0, 1, 2))
    check_choice("shift", None, (None, "label"))
    check_bool(smooth=False, amortize=True)
    check_patterns(include=None, exclude=[r"layer\.\d+", "head"])
    check_patterns(include=("bias",))
    check_numbers("betas", [0.9, 0.999], 2, "a list of 2 numbers")
    check_numbers("betas", (0.9, 0.999, np.float64(0.9)), 3, "a list of 3 numbers")


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: DPS(include="head"), "include must be a list of regular expressions"),
        (lambda: ChildTuningD(exclude="head"), "exclude must be a list of regular expressions"),
        (lambda: ChildTuningD(variant="F", seed="a"), "seed must be an integer >= 0, got 'a'"),
        (lambda: ChildTuningD(variant="F", seed=1.5), "seed must be an integer >= 0, got 1.5"),
        (
            lambda: ValleyExploration(first_step_kick="false"),
            "first_step_kick must be True or False, got 'false'",
        ),
    ],
)
def test_callbacks_check_their_arguments_when_built(build, message):
    # each used to be accepted: a string of patterns became one-letter patterns, a bad seed
    # failed at the first step, "false" switched the kick on
    with pytest.raises(ValueError, match=f"^{message}"):
        build()
