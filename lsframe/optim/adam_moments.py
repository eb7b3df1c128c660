"""Adam's moments as a helper the line searches compose (AdamSLS, PLASLS, ALSALS, SaLSA).

:func:`adam_directions` updates each parameter's ``exp_avg`` and ``exp_avg_sq`` (kept in the
optimizer's per-parameter state, as torch's Adam names them) and returns the two directions a
rule needs: the preconditioned gradient ``P ⊙ g`` and Adam's update ``P ⊙ m̂``, with
``P = 1/(√v̂ + ε)``. ``√v̂ + ε`` is a transient list (as in torch's Adam), never kept in state.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lsframe.optim._blocked import adam_step_ as blocked_adam_step_
from lsframe.optim._functional import adam_denominator, adam_moments_, bias_correction
from lsframe.optim._fused import adam_step_ as fused_adam_step_
from lsframe.optim._fused import compiled, flat, scalars
from lsframe.optim._sharded import local
from lsframe.optim.rules import ActiveGroup, Direction
from lsframe.validation import check_numbers, check_positive, check_unit

#: each parameter's count of updates of its moments, in its state (torch's Adam keeps ``step``)
MOMENT_STEPS = "moment_steps"


@dataclass
class AdamDirections:
    """This step's ``√v̂ + ε`` and ``m`` per group, and what turns ``m`` into ``m̂``: one bias
    correction for all, and per group the denominators with the ratio of a parameter's own
    correction to it folded in (the same lists where every parameter took every update)."""

    denominators: list[list[Tensor]]
    exp_avgs: list[list[Tensor]]
    bias_correction1: float
    update_denominators: list[list[Tensor]]

    def preconditioned_gradient(self, groups: list[ActiveGroup]) -> Direction:
        """``P ⊙ g``: the trial direction of AdamSLS and SaLSA."""
        return Direction([active.grads for active in groups], self.denominators)

    def update(self) -> Direction:
        """``P ⊙ m̂``: Adam's own step direction."""
        scale = 1.0 / self.bias_correction1
        return Direction(self.exp_avgs, self.update_denominators, scale=scale)


def adam_directions(
    param_state: dict[Any, dict[str, Any]], groups: list[ActiveGroup], step: int, offset: int = 0
) -> AdamDirections:
    """Update ``m ← β1 m + (1 − β1) g``, ``v ← β2 v + (1 − β2) g²`` of every active parameter
    (each group's own ``betas`` and ``eps``) and return the directions. The optimizer's
    ``step``-th update of the moments; each parameter's bias corrections ``1 − β^t`` take its own
    count of updates ``t`` (plus ``offset``), as torch's Adam does: a parameter that joins late
    (a group added mid-run, a layer unfrozen by ``requires_grad``) starts its corrections at 1."""
    denominators, exp_avgs, update_denominators = [], [], []
    reference = None
    for active in groups:
        beta1, beta2 = active.group["betas"][:2]  # SaLSA adds a third
        states = [moments_of(param_state, p) for p in active.params]
        steps = [count_update(st, step) + offset for st in states]
        m = [st["exp_avg"] for st in states]
        v = [st["exp_avg_sq"] for st in states]
        if active.params:
            adam_moments_(active.grads, m, v, beta1, beta2)
        if reference is None and active.params:
            reference = bias_correction(beta1, step + offset)
        bc2 = [bias_correction(beta2, t) for t in steps]
        denom = adam_denominator(v, bc2, active.group["eps"]) if v else []
        ratios = [bias_correction(beta1, t) / reference for t in steps] if v else []
        denominators.append(denom)
        update_denominators.append([d if r == 1.0 else d * r for d, r in zip(denom, ratios)])
        exp_avgs.append(m)
    return AdamDirections(denominators, exp_avgs, reference or 1.0, update_denominators)


#: device types on which :func:`one_pass_adam_step` runs torch's own fused AdamW kernel
TORCH_FUSED_ADAM_ON: frozenset[str] = frozenset({"cpu"} if hasattr(torch, "_fused_adamw_") else ())
_TORCH_FUSED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_PLAIN = {"amsgrad": False, "maximize": False}


def one_pass_adam_step(
    param_state: dict[Any, dict[str, Any]],
    pairs: list[tuple[ActiveGroup, int]],
    eta: float,
    offset: int = 0,
) -> None:
    """Adam's moments, ``x ← x − η · multiplier · m̂ / (√v̂ + ε)`` and the decoupled weight decay
    ``x ← x · (1 − η · multiplier · λ)`` in one pass per tensor, each cohort ``(group, count)``
    of :func:`cohorts` at its own update ``count + 1`` (plus ``offset``).

    On a device type in :data:`TORCH_FUSED_ADAM_ON` (CPU) a contiguous tensor whose gradient and
    moments share its dtype takes torch's own fused AdamW kernel (``torch._fused_adamw_``, the
    kernel of ``torch.optim.AdamW(fused=True)``, a single pass): from the same state a float32
    step's moments are bit for bit those of the foreach path and its parameters agree to about
    an ulp (the kernel applies the decay before the update, not after: a difference of
    ``η·λ`` times the update, and computes low-precision tensors in float32, rounding once).
    Every other tensor takes the cache-blocked eager kernel
    (:func:`lsframe.optim._blocked.adam_step_`): bit for bit the foreach path's
    ``adam_directions(...).update().move(...)`` and weight decay where all parameters share the
    count (float rounding of the folded correction where they do not)."""
    for active, count in pairs:
        beta1, beta2 = active.group["betas"][:2]
        t = count + 1 + offset
        alpha = -eta * active.multiplier * (1.0 / bias_correction(beta1, t))  # as move's
        root = math.sqrt(bias_correction(beta2, t))
        decay = active.group["weight_decay"]
        keep = 1.0 - eta * active.multiplier * decay if decay else None
        fused: tuple[list[Tensor], ...] = ([], [], [], [])
        for p, grad in zip(active.params, active.grads):
            state = param_state[p]
            state[MOMENT_STEPS] = count + 1
            tensors = [local(x) for x in (p, grad, state["exp_avg"], state["exp_avg_sq"])]
            if _torch_fused_takes(tensors):
                for into, tensor in zip(fused, tensors):
                    into.append(tensor)
                continue
            kernel = (*flat(*tensors), (beta1, beta2), alpha, root)
            blocked_adam_step_(*kernel, active.group["eps"], keep)
        if fused[0]:
            steps = [torch.tensor(float(t))] * len(fused[0])
            options = dict(beta1=beta1, beta2=beta2, weight_decay=decay, eps=active.group["eps"])
            lr = eta * active.multiplier
            torch._fused_adamw_(*fused, [], steps, lr=lr, **options, **_PLAIN)


def compiled_adam_step(
    param_state: dict[Any, dict[str, Any]], pairs: list[tuple[ActiveGroup, int]], eta: float
) -> None:
    """What :func:`one_pass_adam_step` computes, in lsframe's compiled kernel
    (:func:`lsframe.optim._fused.adam_step_`, the line searches' ``fused=True``): one pass per
    tensor, each cohort at its own update ``count + 1``, decay after the update."""
    kernel = compiled(fused_adam_step_)
    for active, count in pairs:
        beta1, beta2 = active.group["betas"][:2]
        step = eta * active.multiplier / bias_correction(beta1, count + 1)
        root = math.sqrt(bias_correction(beta2, count + 1))
        keep = 1.0 - eta * active.multiplier * active.group["weight_decay"]
        values = scalars([beta1, beta2, step, root, active.group["eps"], keep], active.params[0])
        for p, grad in zip(active.params, active.grads):
            state = param_state[p]
            state[MOMENT_STEPS] = count + 1
            tensors = (p, grad, state["exp_avg"], state["exp_avg_sq"])
            kernel(*flat(*(local(t) for t in tensors)), values)


def _torch_fused_takes(tensors: list[Tensor]) -> bool:
    first = tensors[0]
    return (
        first.device.type in TORCH_FUSED_ADAM_ON
        and first.dtype in _TORCH_FUSED_DTYPES
        and all(x.dtype == first.dtype and x.is_contiguous() for x in tensors)
        and _torch_fused_runs(first.device.type)
    )


@functools.cache
def _torch_fused_runs(device_type: str) -> bool:
    """Whether this torch build has the fused AdamW kernel for ``device_type`` (a one-element
    try: a build without it raises, and the blocked kernel stands in)."""
    tensors = [[torch.zeros(1, device=device_type)] for _ in range(4)]
    options = dict(beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8)
    try:
        torch._fused_adamw_(*tensors, [], [torch.tensor(1.0)], lr=0.0, **options, **_PLAIN)
    except (RuntimeError, NotImplementedError):
        return False
    return True


def moments_of(param_state: dict[Any, dict[str, Any]], param: Tensor) -> dict[str, Any]:
    """``param``'s state, with ``exp_avg`` and ``exp_avg_sq`` created (zeros, no update yet)
    on first sight, and created again while no update has reached them if the parameter has
    since changed dtype or device (a state dict taken before ``model.to(...)`` created them)."""
    state = param_state[param]
    if not state or (state.get(MOMENT_STEPS) == 0 and _elsewhere(state["exp_avg"], param)):
        state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state[MOMENT_STEPS] = 0
    return state


def _elsewhere(moment: Tensor, param: Tensor) -> bool:
    return moment.dtype != param.dtype or moment.device != param.device


def own_step(state: dict[str, Any], step: int) -> int:
    """How many updates ``state``'s moments have had, before the optimizer's update ``step + 1``:
    its count, or ``step`` for a state saved without one (lsframe before 2026-12-03, when every
    parameter counted every update of the optimizer)."""
    return state.get(MOMENT_STEPS, step)


def cohorts(
    param_state: dict[Any, dict[str, Any]], groups: list[ActiveGroup], step: int
) -> list[tuple[ActiveGroup, int]]:
    """The active groups' parameters by their own count of moment updates (:func:`own_step`)
    before the optimizer's update ``step + 1``, as ``(group, count)`` pairs: one pair per group
    with parameters where all took every update. Creates the moments of new parameters."""
    pairs = []
    for active in groups:
        counts = [own_step(moments_of(param_state, p), step) for p in active.params]
        if len(set(counts)) == 1:
            pairs.append((active, counts[0]))
            continue
        for count in sorted(set(counts)):
            chosen = [i for i, c in enumerate(counts) if c == count]
            params = [active.params[i] for i in chosen]
            pairs.append(
                (ActiveGroup(active.group, params, [active.grads[i] for i in chosen]), count)
            )
    return pairs


def count_update(state: dict[str, Any], step: int) -> int:
    """Count the optimizer's ``step``-th update of ``state``'s moments; its own count after it."""
    state[MOMENT_STEPS] = own_step(state, step - 1) + 1
    return state[MOMENT_STEPS]


def next_moment_step(search_state: dict[str, Any]) -> int:
    """Count one more update of Adam's moments (``state["line_search"]["moment_step"]``)."""
    search_state["moment_step"] = search_state.get("moment_step", 0) + 1
    return search_state["moment_step"]


def check_adam_group(group: dict[str, Any], length: int = 2) -> None:
    """``betas``, ``length`` numbers of which the first two lie in [0, 1), and ``eps`` > 0."""
    betas = group["betas"]
    names = ("beta1", "beta2", "beta3")[:length]
    check_numbers("betas", betas, length, f"a list of {length} numbers ({', '.join(names)})")
    check_unit(**{"betas[0]": betas[0], "betas[1]": betas[1]})
    check_positive(eps=group["eps"])
