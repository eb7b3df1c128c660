"""The valley-exploration adaptor "E" (Zhao et al., "Exploring Landscapes for Better Minima along
Valleys", NeurIPS 2025, arXiv 2510.27153, Alg. 1): the maths shared by :class:`AdamE`,
:class:`ALTO` and the ``ValleyExploration`` callback.

With ``g_k`` the gradient of step ``k``::

    a_k = β1 · a_{k−1} + (1 − β1) · (g_k − g_{k−1})
    g̃_k = g_k + α · a_k

and the base optimizer runs on ``g̃``. Extra state per parameter: ``g_{k−1}`` and ``a`` (two
tensors). ``|α| < 1/(1 − β1)`` is required (the paper's stability condition).

First step: lsframe starts with ``g_0 = g_1`` and ``a_0 = 0``, so ``g̃_1 = g_1`` (no kick). The
reference starts from ``g_0 = 0``, so its first step uses ``g̃_1 = (1 + α(1 − β1)) · g_1``, a
rescaling that only reflects the zero initialisation (×0.95 at α = −5, β1 = 0.99; ×1.495 at
α = 0.5, β1 = 0.01). ``first_step_kick=True`` reproduces it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from lsframe.errors import ConfigError
from lsframe.optim._saved_state import check_group
from lsframe.optim._sharded import local
from lsframe.validation import check_bool, check_int_at_least, check_interval, check_unit

LARGE_BATCH = 1024

#: The adaptor's α and β1 as param-group keys (AdamE, ALTO): a state to load must carry them.
VALLEY_KEYS = ("valley_alpha", "valley_beta")


def valley_defaults(batch_size: int | None) -> tuple[float, float]:
    """The paper's ``(α, β1)`` for a batch size: ``(−5, 0.99)`` from 1,024 up (or when unknown,
    ALTO's large-batch setting), else ``(0.5, 0.01)``."""
    if batch_size is None or batch_size >= LARGE_BATCH:
        return -5.0, 0.99
    check_int_at_least(1, batch_size=batch_size)
    return 0.5, 0.01


def check_valley(alpha: float, beta: float, names: tuple[str, str] = ("alpha", "beta")) -> None:
    """Raise ConfigError unless β1 is a number in [0, 1) and α a number with
    ``|α| < 1/(1 − β1)``; ``names``: the arguments (or group keys) α and β1 came as."""
    alpha_name, beta_name = names
    check_unit(**{beta_name: beta})
    check_interval(-math.inf, math.inf, True, True, **{alpha_name: alpha})  # a number, not NaN
    bound = 1.0 / (1.0 - beta)
    if not abs(alpha) < bound:
        raise ConfigError(
            f"{alpha_name} must satisfy |alpha| < 1/(1 - beta) = {bound:g} for beta={beta}, got "
            f"{alpha} (the paper's stability condition)",
            argument=alpha_name,
        )


def check_valley_group(group: dict[str, Any]) -> None:
    """The adaptor's keys of a param group: ``valley_alpha`` and ``valley_beta`` as
    :func:`check_valley`, ``first_step_kick`` True or False."""
    check_valley(group["valley_alpha"], group["valley_beta"], names=VALLEY_KEYS)
    check_bool(first_step_kick=group["first_step_kick"])


def init_valley_state(grads: Sequence[Tensor], alpha: float, beta: float, kick: bool):
    """State for parameters seen for the first time, and their first adapted gradient in place.

    Returns ``(previous gradients, a)``. Without ``kick``: ``g_prev = g``, ``a = 0`` and the
    gradient is unchanged. With ``kick`` (the reference): ``g_0 = 0``, so
    ``a = (1 − β1) g`` and ``g ← g + α a``.
    """
    prev = [g.clone() for g in grads]
    if not kick:
        return prev, [torch.zeros_like(g) for g in grads]
    diffs = torch._foreach_mul(list(grads), 1.0 - beta)
    if alpha != 0.0:
        torch._foreach_add_(list(grads), diffs, alpha=alpha)
    return prev, diffs


@torch.no_grad()
def valley_adapt_(
    grads: list[Tensor], prev: list[Tensor], diffs: list[Tensor], alpha: float, beta: float
) -> None:
    """One adaptor step in place: ``a ← β1 a + (1−β1)(g − g_prev)``, ``g_prev ← g``,
    ``g ← g + α a``. The difference is formed in ``g_prev``'s buffer (no temporary)."""
    if not grads:
        return
    torch._foreach_neg_(prev)
    torch._foreach_add_(prev, grads)  # prev now holds g − g_prev
    torch._foreach_mul_(diffs, beta)
    torch._foreach_add_(diffs, prev, alpha=1.0 - beta)
    # on the local pieces: DTensor (FSDP) has no sharding rule for a foreach copy
    torch._foreach_copy_([local(t) for t in prev], [local(g) for g in grads])
    if alpha != 0.0:
        torch._foreach_add_(grads, diffs, alpha=alpha)


def resolve_valley(
    alpha: float | None, beta: float | None, batch_size: int | None
) -> tuple[float, float]:
    """``(α, β1)``: the given values (AdamE's and ALTO's ``alpha`` and ``valley_beta``), else
    the batch-size rule's; checked."""
    check_int_at_least(1, allow_none=True, batch_size=batch_size)
    rule_alpha, rule_beta = valley_defaults(batch_size)
    alpha = rule_alpha if alpha is None else alpha
    beta = rule_beta if beta is None else beta
    check_valley(alpha, beta, names=("alpha", "valley_beta"))
    return alpha, beta


def set_group_valley(optimizer: Any, alpha: float, beta: float, kick: bool) -> None:
    """Give every param group (and ``defaults``, for groups added later) the adaptor's α, β1
    and ``first_step_kick``; a group that names its own keeps them, checked
    (:func:`check_valley_group`, one line naming the group)."""
    check_bool(first_step_kick=kick)
    for index, group in enumerate(optimizer.param_groups):
        group.setdefault("valley_alpha", alpha)
        group.setdefault("valley_beta", beta)
        group.setdefault("first_step_kick", kick)
        check_group(optimizer, index, check_valley_group)
    optimizer.defaults.update(valley_alpha=alpha, valley_beta=beta, first_step_kick=kick)


def group_kick(optimizer: Any, group: dict[str, Any]) -> bool:
    """The group's ``first_step_kick`` (a state dict from before it was a group key: the
    optimizer's)."""
    return group.get("first_step_kick", optimizer.defaults["first_step_kick"])


def adapt_with_state(
    states: list[dict], grads: list[Tensor], alpha: float, beta: float, kick: bool
) -> list[tuple[dict, Tensor, Tensor]]:
    """Adapt ``grads`` in place with per-parameter state dicts (keys ``valley_prev`` and
    ``valley_diff``, as optimizers keep them). Returns ``(state, g_prev, a)`` for parameters seen
    for the first time; the caller stores them (when depends on the optimizer)."""
    seen = [i for i, st in enumerate(states) if "valley_prev" in st]
    valley_adapt_(
        [grads[i] for i in seen],
        [states[i]["valley_prev"] for i in seen],
        [states[i]["valley_diff"] for i in seen],
        alpha,
        beta,
    )
    fresh = [i for i, st in enumerate(states) if "valley_prev" not in st]
    if not fresh:
        return []
    prev, diffs = init_valley_state([grads[i] for i in fresh], alpha, beta, kick)
    return [(states[i], g_prev, a) for i, g_prev, a in zip(fresh, prev, diffs)]
