"""The step-size rule of :class:`~lsframe.optim.slope_tracking_adam.SlopeTrackingAdam` as free
functions of its search state and its rule's hyperparameters (:data:`RULE_KEYS`): how one step's
alignment changes η, the limits on the change, and the checks of those hyperparameters."""

from __future__ import annotations

import math
import numbers
from typing import Any

from lsframe.optim._alignment import HORIZON_RULES, MEASURES, burn_in_length, horizon_exponent
from lsframe.validation import (
    check_bool,
    check_int_at_least,
    check_interval,
    check_numbers,
    check_open_unit,
)

# one step size for all groups: these hyperparameters must agree across the groups
RULE_KEYS = (
    "max_change",
    "alignment_betas",
    "combine_horizons",
    "gain_decay",
    "min_step_size",
    "max_step_size",
    "grow_on_repeats",
    "cap_at_fresh_peak",
    "alignment_stride",
    "alignment_measure",
    "hold_while_warming",
    "burn_in",
    "long_run_steps",
    "fused",
)


def check_rule_group(group: dict[str, Any]) -> None:
    """Raise ValueError naming the first of the rule's hyperparameters in ``group`` out of its
    range (Adam's own are :func:`~lsframe.optim.adam_moments.check_adam_group`'s)."""
    check_interval(1.0, math.inf, True, True, max_change=group["max_change"])
    betas = group["alignment_betas"]
    check_numbers("alignment_betas", betas, 3, "a list of 3 numbers (fast, slow, square)")
    check_open_unit(**{f"alignment_betas[{i}]": b for i, b in enumerate(betas)})
    if group["combine_horizons"] not in HORIZON_RULES:
        raise ValueError(
            f"combine_horizons must be one of {HORIZON_RULES}, got {group['combine_horizons']!r}"
        )
    check_int_at_least(1, alignment_stride=group["alignment_stride"])
    check_int_at_least(1, allow_none=True, long_run_steps=group["long_run_steps"])
    ceiling = group["max_step_size"]
    number = isinstance(ceiling, numbers.Real) and not isinstance(ceiling, bool)
    if ceiling is not None and not (
        number and ceiling >= max(group["lr"], group["min_step_size"])  # NaN fails too
    ):
        raise ValueError(
            f"max_step_size must be None or a number at least lr ({group['lr']!r}) and "
            f"min_step_size ({group['min_step_size']!r}), got {ceiling!r}"
        )
    if (
        not isinstance(group["alignment_measure"], str)
        or group["alignment_measure"] not in MEASURES
    ):
        raise ValueError(
            f"alignment_measure must be one of {tuple(MEASURES)}, "
            f"got {group['alignment_measure']!r}"
        )
    if group["min_step_size"] > group["lr"]:  # η would jump to it at the first update
        raise ValueError(
            f"min_step_size must be at most lr ({group['lr']!r}), got {group['min_step_size']!r}"
        )
    bools = ("grow_on_repeats", "cap_at_fresh_peak", "hold_while_warming", "burn_in", "fused")
    check_bool(gain_decay=group["gain_decay"], **{key: group[key] for key in bools})


def step_size_change(state: dict[str, Any], alignment: float, rule: dict[str, Any]) -> float:
    """``max_change^(e / √(1 + k))`` from this step's alignment, ``e`` the horizons' exponent
    (:func:`~lsframe.optim._alignment.horizon_exponent`) of the bias-corrected fast and slow
    averages over the root of the square's, each clipped to [−1, 1]. Updates the averages in
    ``state`` and ``k``, the sign changes of the slow average (``k`` stays 0 without
    ``gain_decay``)."""
    fast, slow, b2 = rule["alignment_betas"]
    n = state["alignments"] = state["alignments"] + 1
    state["avg_alignment_fast"] = fast * state["avg_alignment_fast"] + (1 - fast) * alignment
    state["avg_alignment"] = slow * state["avg_alignment"] + (1 - slow) * alignment
    state["avg_alignment_sq"] = b2 * state["avg_alignment_sq"] + (1 - b2) * alignment**2
    second = state["avg_alignment_sq"] / (1 - b2**n)
    if second <= 0:
        return 1.0
    scores = []
    for key, beta in (("avg_alignment_fast", fast), ("avg_alignment", slow)):
        mean = state[key] / (1 - beta**n)
        scores.append(max(-1.0, min(1.0, mean / math.sqrt(second))))
    sign = (scores[1] > 0) - (scores[1] < 0)
    if rule["gain_decay"] and sign and state["last_sign"] and sign != state["last_sign"]:
        state["sign_changes"] += 1
    state["last_sign"] = sign or state["last_sign"]
    exponent = horizon_exponent(*scores, rule["combine_horizons"], slow, n)
    return rule["max_change"] ** (exponent / math.sqrt(1 + state["sign_changes"]))


def limited_step_size(
    state: dict[str, Any], eta: float, proposed: float, rule: dict[str, Any]
) -> float:
    """The next η from ``proposed`` (η times the rule's change), limited: no growth during the
    burn-in (``burn_in``); from the second pass on, no growth (``grow_on_repeats=False``) or
    none above the largest η of the first pass (``cap_at_fresh_peak``; no cap while that peak
    is unknown); then kept within ``[min_step_size, max_step_size]``."""
    if rule["burn_in"] and state["alignments"] < burn_in_length(rule["alignment_betas"][1]):
        proposed = min(proposed, eta)
    if state["data_pass"] > 0:
        if not rule["grow_on_repeats"]:
            proposed = min(proposed, eta)
        if rule["cap_at_fresh_peak"] and state["fresh_peak"] > 0:
            proposed = min(proposed, max(state["fresh_peak"], eta))
    ceiling = rule["max_step_size"]
    proposed = proposed if ceiling is None else min(proposed, ceiling)
    return max(proposed, rule["min_step_size"])
