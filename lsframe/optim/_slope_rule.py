"""The step-size rule of :class:`~lsframe.optim.slope_tracking_adam.SlopeTrackingAdam` as free
functions of its search state and its rule's hyperparameters (:data:`RULE_KEYS` of that module):
how one step's alignment changes η, and the limits on the change."""

from __future__ import annotations

import math
from typing import Any

from lsframe.optim._alignment import burn_in_length, horizon_exponent


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
