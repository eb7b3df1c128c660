"""The step alignment of :class:`~lsframe.optim.slope_tracking_adam.SlopeTrackingAdam`: the
slope of a fresh batch's loss along the last Adam step, or its cosine, from the eager and fused
kernels' sums, and the noise level of its moving average."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from lsframe.optim._blocked import direction_sums as blocked_direction_sums
from lsframe.optim._functional import (
    QUOTIENT_BYTES,
    bias_correction,
    plain_float32,
    quotient_pieces,
    sum_of_entries,
)
from lsframe.optim._fused import compiled, direction_sums, flat, scalars
from lsframe.optim._sharded import local, reduce_sums
from lsframe.optim.adam_moments import moments_of
from lsframe.optim.rules import ActiveGroup


def step_alignment(
    param_state: dict[Any, dict[str, Any]],
    cohorts: list[tuple[ActiveGroup, int]],
    moment_step: int,
    stride: int = 1,
    measure: str = "cosine",
) -> float | None:
    """The **step alignment** ``a_t = cos(g_t, d_{t−1})``: the cosine between this step's gradient
    ``g_t`` (a batch the last step never saw) and the last step's direction
    ``d_{t−1} = multiplier · m̂_{t−1} / (√v̂_{t−1} + ε)``, recomputed from Adam's moments before
    they take ``g_t`` (so no copy of the last step is kept); ``multiplier`` is the group's
    ``lr_multiplier`` now, for this step (a schedule has already moved it).

    ``−⟨g_t, d_{t−1}⟩`` estimates, without bias (the batch is fresh), the derivative of the
    expected loss along the last step at the point it reached: ``a_t > 0`` says the last step
    could have gone further, ``a_t < 0`` that it went past the minimum along its direction.
    ``cohorts`` are the active groups' parameters by their own count of moment updates
    (:func:`~lsframe.optim.adam_moments.cohorts`): each takes its bias corrections.
    None before the second step or when a norm is 0. Three passes over the moments, a piece at a
    time (a transient of at most ``QUOTIENT_BYTES``, as the line searches' slope), per-tensor
    inner products, one host sync.

    With ``stride`` k > 1 the three sums read every k-th row of each matrix (two dimensions or
    more) that has at least k rows (:func:`sampled_rows`; the rows move by one each step, so k
    steps read every row) and count each sampled sum k-fold (rows over sampled rows): the same
    sums in expectation over the rows, for about 1/k of the memory traffic on the large
    matrices. Smaller tensors (biases,
    norms, a classifier's few rows) are read whole. With sharded parameters (FSDP2) each rank
    samples the rows of its own shard and the sums are reduced over the ranks, so all ranks
    take the same step; where every shard's rows are a multiple of k they are the rows one
    process would read, otherwise another sample of the same sums.

    ``measure="slope"`` returns ``⟨g_t, d_{t−1}⟩`` itself (:func:`projected_slope`) instead of
    its cosine, from the same sums.
    """
    if moment_step < 1:
        return None
    sums: list[Tensor] = []  # per group: ⟨g, d⟩, ‖g‖², ‖d‖² with d up to a scalar
    scales: list[float] = []
    for active, count in cohorts:
        if not active.params:
            continue
        root = math.sqrt(bias_correction(active.group["betas"][1], count))
        # m̂/(√v̂ + ε) = (√bc2/bc1) · m/(√v + ε·√bc2): the scalars are folded in after the sums
        rows = [sampled_rows(local(g), stride, moment_step) for g in active.grads]
        # a parameter added since the last step has zero moments: it took no part in that step
        states = [moments_of(param_state, p) for p in active.params]
        m = [sampled_rows(local(st["exp_avg"]), stride, moment_step) for st in states]
        v = [sampled_rows(local(st["exp_avg_sq"]), stride, moment_step) for st in states]
        weights = [local(g).numel() / max(r.numel(), 1) for g, r in zip(active.grads, rows)]
        dots, g_sq, d_sq = [], [], []
        budget = QUOTIENT_BYTES.get(m[0].device.type, QUOTIENT_BYTES["cuda"])
        for span in quotient_pieces(m, budget):  # a bounded transient, as the searches' slope
            denom = torch._foreach_sqrt(v[span])
            torch._foreach_add_(denom, active.group["eps"] * root)
            direction = torch._foreach_div(m[span], denom)
            del denom
            for g, d, w in zip(rows[span], direction, weights[span]):
                dtype = torch.promote_types(g.dtype, torch.float32)
                g, d = g.reshape(-1).to(dtype), d.reshape(-1).to(dtype)
                values = [torch.dot(g, d), torch.dot(g, g), torch.dot(d, d)]
                if w != 1.0:  # a sampled tensor: its sums count for the whole
                    values = [x * w for x in values]
                for part, x in zip((dots, g_sq, d_sq), values):
                    part.append(x)
            del direction
        parts = (dots, g_sq, d_sq)
        per_part = [torch.stack(reduce_sums(x, active.grads)).sum() for x in parts]
        sums.append(torch.stack(per_part).double())
        scales.append(direction_scale(active, count))
    if not sums:
        return None
    return MEASURES[measure](torch.stack(sums).tolist(), scales)  # the one host sync


def sampled_rows(tensor: Tensor, stride: int, offset: int) -> Tensor:
    """Every ``stride``-th row of ``tensor`` (its first dimension) from row ``offset mod
    stride``, as a view; the tensor itself when ``stride`` is 1 or it has fewer rows."""
    if stride == 1 or tensor.dim() < 2 or tensor.size(0) < stride:
        return tensor
    return tensor[offset % stride :: stride]


def noise_level(beta: float, n: int) -> float:
    """The standard error, in units of the values' root mean square, of the bias-corrected
    moving average ``(1 − β) Σ β^k a_{n−k} / (1 − β^n)`` of ``n`` independent zero-mean values:
    ``√((1 − β)(1 + β^n) / ((1 + β)(1 − β^n)))``, 1 at ``n = 1`` and ``√((1 − β)/(1 + β))`` in
    the limit (0.23 for β = 0.9)."""
    return math.sqrt((1 - beta) * (1 + beta**n) / ((1 + beta) * (1 - beta**n)))


def burn_in_length(beta_slow: float) -> int:
    """The fewest alignments ``n`` with ``β^n < 0.05``, ``⌈log 0.05 / log β⌉`` (β =
    ``beta_slow``; 29 at 0.9). SlopeTrackingAdam's ``burn_in`` lets η grow from the ``n``-th
    averaged alignment on; the first one, ``n − 1`` steps old then, weighs ``β^(n−1)`` (5.2 % at
    0.9) of the newest one in the slow average. The 5 % mirrors the significance test's level."""
    return math.ceil(math.log(0.05) / math.log(beta_slow))


#: how the two horizons' scores make the exponent of the step size's change
HORIZON_RULES = ("min", "agree", "agree_else_min", "significant")
#: ``"significant"``: how many standard errors of pure noise the slow average must clear
SIGNIFICANCE = 2.0


def horizon_exponent(fast: float, slow: float, combine: str, beta_slow: float, n: int) -> float:
    """The exponent ``e`` of ``η ← η · max_change^e`` from the fast and slow scores after ``n``
    alignments: ``"min"``, ``min(fast, slow)``; ``"agree"`` and ``"agree_else_min"``, ``slow``
    when both have its sign, else 0 or the minimum; ``"significant"``, the minimum once
    ``|slow|`` is at least :data:`SIGNIFICANCE` standard errors of pure noise
    (:func:`noise_level` of ``beta_slow``), else 0."""
    if combine == "significant":
        significant = abs(slow) >= SIGNIFICANCE * noise_level(beta_slow, n)
        return min(fast, slow) if significant else 0.0
    if combine != "min" and fast * slow > 0:
        return slow
    return 0.0 if combine == "agree" else min(fast, slow)


def direction_scale(active: ActiveGroup, moment_step: int) -> float:
    """``s`` with ``d = s · m / (√v + ε·√(1 − β2^t))`` the group's last direction (see
    :func:`step_alignment`)."""
    beta1, beta2 = active.group["betas"][:2]
    root = math.sqrt(bias_correction(beta2, moment_step))
    return active.multiplier * root / bias_correction(beta1, moment_step)


def _totals(sums: list[list[float]], scales: list[float]) -> tuple[float, float, float]:
    """``(⟨g, d⟩, ‖g‖², ‖d‖²)`` over the groups, from each group's ``[⟨g, d'⟩, ‖g‖², ‖d'‖², …]``
    with ``d = scale · d'``."""
    dot = sum(v[0] * s for v, s in zip(sums, scales))
    gg = sum(v[1] for v in sums)
    dd = sum(v[2] * (s * s) for v, s in zip(sums, scales))
    return dot, gg, dd


def cosine(sums: list[list[float]], scales: list[float]) -> float | None:
    """``cos(g, d)`` from each group's ``[⟨g, d'⟩, ‖g‖², ‖d'‖², …]`` with ``d = scale · d'``;
    None when a norm is 0 or a sum is not finite."""
    dot, gg, dd = _totals(sums, scales)
    if gg <= 0 or dd <= 0 or not math.isfinite(dot * gg * dd):
        return None
    return dot / math.sqrt(gg * dd)


def projected_slope(sums: list[list[float]], scales: list[float]) -> float | None:
    """``⟨g, d⟩`` from each group's ``[⟨g, d'⟩, ‖g‖², ‖d'‖², …]`` with ``d = scale · d'``: the
    slope itself, not its cosine, so that averaging weighs each step by how steep it is (a
    steep batch after an overshoot counts more than a flat one). None, as for the cosine, when
    a norm is 0 or the slope is not finite."""
    dot, gg, dd = _totals(sums, scales)
    if gg <= 0 or dd <= 0 or not math.isfinite(dot):
        return None
    return dot


#: what :func:`step_alignment` returns from its sums
MEASURES = {"cosine": cosine, "slope": projected_slope}


def one_pass_direction_sums(
    param_state: dict[Any, dict[str, Any]],
    cohorts: list[tuple[ActiveGroup, int]],
    blocked: bool = False,
) -> list[list[float]]:
    """Per group ``[⟨g, d'⟩, ‖g‖², ‖d'‖², #non-finite gradient entries]`` (``d'`` the last
    direction up to :func:`direction_scale`) in one read of ``g``, ``m`` and ``v`` and one host
    sync: by the compiled kernel :func:`~lsframe.optim._fused.direction_sums`, or with
    ``blocked`` by the cache-blocked eager one (:func:`lsframe.optim._blocked.direction_sums`,
    without the count).
    One list per cohort with parameters (:func:`~lsframe.optim.adam_moments.cohorts`)."""
    kernel = blocked_direction_sums if blocked else compiled(direction_sums)
    sums = []
    for active, count in cohorts:
        if not active.params:
            continue
        root = math.sqrt(bias_correction(active.group["betas"][1], count))
        eps = active.group["eps"] * root
        eps_arg = eps if blocked else scalars([eps], active.params[0])
        parts = []
        for p, grad in zip(active.params, active.grads):
            state = moments_of(param_state, p)
            m, v = local(state["exp_avg"]), local(state["exp_avg_sq"])
            parts.append(kernel(*flat(local(grad), m, v), eps_arg))
        sums.append(torch.stack(reduce_sums(parts, active.grads)).sum(0).double())
    return torch.stack(sums).tolist() if sums else []


def batched_on(grads: list[Tensor]) -> bool:
    """Whether :func:`batched_direction_sums` takes these gradients: plain float32 tensors (no
    DTensor, sharded or not)."""
    return plain_float32(grads)


def batched_direction_sums(
    param_state: dict[Any, dict[str, Any]], cohorts: list[tuple[ActiveGroup, int]]
) -> list[list[float]]:
    """Per group ``[⟨g, d'⟩, ‖g‖², ‖d'‖²]`` as :func:`one_pass_direction_sums` gives them, from
    torch's foreach kernels: about fifteen operators per group and piece, where a loop over the
    tensors dispatches several per tensor. It is the branch of devices without blocked kernels
    (CUDA), where a small model's step is bound by the host's dispatches
    (``benchmarks/host_ops.py``). ``d'`` is built a piece at a time and the products are
    concatenated for their signed sum, each within half of :data:`QUOTIENT_BYTES`, so the
    transient stays within the budget of :func:`step_alignment`'s; one host sync. A finite
    ``‖g‖²`` proves every gradient entry finite, as in the blocked kernels."""
    sums = []
    for active, count in cohorts:
        if not active.params:
            continue
        root = math.sqrt(bias_correction(active.group["betas"][1], count))
        states = [moments_of(param_state, p) for p in active.params]
        m, v = [st["exp_avg"] for st in states], [st["exp_avg_sq"] for st in states]
        grads = list(active.grads)
        budget = QUOTIENT_BYTES.get(m[0].device.type, QUOTIENT_BYTES["cuda"]) // 2
        pieces = []
        for span in quotient_pieces(m, budget):
            denom = torch._foreach_sqrt(v[span])
            torch._foreach_add_(denom, active.group["eps"] * root)
            direction = torch._foreach_div(m[span], denom)
            del denom
            d_norms, g_norms = torch._foreach_norm(direction), torch._foreach_norm(grads[span])
            torch._foreach_mul_(direction, grads[span])  # now the products g·d'
            dot = sum_of_entries(direction)
            del direction
            squares = [torch.stack(norms).square().sum() for norms in (g_norms, d_norms)]
            pieces.append(torch.stack([dot, *squares]))
        sums.append(torch.stack(pieces).sum(0).double())
    return torch.stack(sums).tolist() if sums else []
