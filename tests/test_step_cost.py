"""Optimizer overhead: ``Direction.slope`` (foreach kernels, one host sync per call), and the pure
pieces of ``benchmarks/step_cost.py`` (step-time ratios over the first k steps) and of
``benchmarks/time_to_target.py``."""

from __future__ import annotations

import argparse

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.step_cost import window_ratios
from lsframe.optim.rules import ActiveGroup, Direction


class HostSyncs(TorchDispatchMode):
    """Counts reads of tensor values by the host: ``item``/``float``/``int``/``bool`` (all go
    through ``aten._local_scalar_dense``), and ``tolist``/``numpy`` (which bypass dispatch)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__()
        self.count = 0
        for name in ("tolist", "numpy"):
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counting(original))

    def _counting(self, method):
        def counted(tensor, *args, **kwargs):
            self.count += 1
            return method(tensor, *args, **kwargs)

        return counted

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def groups_and_direction(dtype: torch.dtype = torch.float32) -> tuple[list, Direction]:
    """Three groups with gradients (multipliers 1, 0.5, 2; the middle one has no parameter with a
    gradient) and an Adam-like direction ``num / den`` scaled by 0.7."""
    gen = torch.Generator().manual_seed(0)
    shapes = [[(3, 4), (5,)], [], [(2, 2, 2), (7,), (1,)]]
    groups, num, den = [], [], []
    for multiplier, group_shapes in zip((1.0, 0.5, 2.0), shapes):
        params = [torch.zeros(s, dtype=dtype) for s in group_shapes]
        grads = [torch.randn(s, generator=gen, dtype=dtype) for s in group_shapes]
        num.append([torch.randn(s, generator=gen, dtype=dtype) for s in group_shapes])
        den.append([torch.rand(s, generator=gen, dtype=dtype) + 0.1 for s in group_shapes])
        groups.append(ActiveGroup({"lr_multiplier": multiplier}, params, grads))
    return groups, Direction(num, den, scale=0.7)


def hand_slope(groups: list, direction: Direction, which: list[int]) -> float:
    total = 0.0
    for i in which:
        for g, n, d in zip(groups[i].grads, direction.num[i], direction.den[i]):
            dot = (g.double() * (n.double() / d.double())).sum().item()
            total += groups[i].multiplier * direction.scale * dot
    return total


@pytest.mark.parametrize("which", [None, [2, 0], [1]])
def test_slope_over_several_groups_matches_a_float64_hand_computation(which):
    groups, direction = groups_and_direction()
    expected = hand_slope(groups, direction, [0, 1, 2] if which is None else which)
    slope = direction.slope(groups, which)
    assert isinstance(slope, float)
    assert slope == pytest.approx(expected, rel=1e-6, abs=1e-12)


def test_slope_without_a_denominator_is_the_scaled_inner_product_with_num():
    groups, direction = groups_and_direction()
    plain = Direction(direction.num, None, scale=2.0)
    expected = sum(
        groups[i].multiplier
        * 2.0
        * sum(float((g * n).sum()) for g, n in zip(a.grads, plain.num[i]))
        for i, a in enumerate(groups)
    )
    assert plain.slope(groups) == pytest.approx(expected, rel=1e-6)


def test_slope_reads_the_device_once_per_call_not_once_per_group(monkeypatch):
    groups, direction = groups_and_direction()
    direction.slope(groups)  # warm-up: lazy initialisation is not the step's work
    with HostSyncs(monkeypatch) as syncs:
        direction.slope(groups)
    assert syncs.count == 1
    with HostSyncs(monkeypatch) as syncs:
        direction.slope(groups, [1])  # only a group without gradients: nothing to read
    assert syncs.count == 0


def test_host_sync_counter_sees_a_read_per_group():
    # the counter behind the one-sync claim counts a per-group ``float``, as the old slope did
    groups, direction = groups_and_direction()
    with pytest.MonkeyPatch.context() as patch, HostSyncs(patch) as syncs:
        for active in groups:
            if active.grads:
                float(torch.stack([(g * g).sum() for g in active.grads]).sum())
        torch.ones(2).tolist()
    assert syncs.count == 3  # two groups with gradients, one tolist


def test_float64_models_keep_a_float64_accumulation():
    grad = torch.tensor([1e8, 1.0, -1e8], dtype=torch.float64)  # float32 would give 0
    group = ActiveGroup({"lr_multiplier": 1.0}, [torch.zeros(3, dtype=torch.float64)], [grad])
    assert Direction([[torch.ones(3, dtype=torch.float64)]]).slope([group]) == 1.0


def test_bf16_gradients_accumulate_in_float32():
    grad = torch.ones(1001, dtype=torch.bfloat16)  # 1001 is not a bfloat16 number
    group = ActiveGroup({"lr_multiplier": 1.0}, [torch.zeros(1001)], [grad])
    num = [[torch.ones(1001, dtype=torch.bfloat16)]]
    assert Direction(num, [[torch.ones(1001, dtype=torch.bfloat16)]]).slope([group]) == 1001.0


def test_window_ratios_compare_the_first_k_steps_of_both_runs():
    base = [1.0, 1.0, 2.0, 10.0]
    run = [2.0, 3.0, 4.0, 1.0]
    first = window_ratios(run, base, 3)
    assert first == {"steps": 3, "total": 9.0 / 4.0, "median": 3.0 / 1.0}
    whole = window_ratios(run, base, 10)  # clipped to the steps both ran
    assert whole["steps"] == 4 and whole["total"] == pytest.approx(10.0 / 14.0)
    assert whole["median"] == pytest.approx(2.5 / 1.5)
    assert window_ratios(run[:2], base, 3)["steps"] == 2  # a short run: its own steps only
    with pytest.raises(ValueError):
        window_ratios([], base, 3)


def test_quotient_pieces_cover_every_tensor_in_order_within_the_budget():
    from lsframe.optim._functional import quotient_pieces

    tensors = [torch.zeros(n) for n in (3, 1, 10, 2, 2, 1)]  # 4 bytes per entry
    spans = quotient_pieces(tensors, budget=16)
    assert [(s.start, s.stop) for s in spans] == [(0, 2), (2, 3), (3, 5), (5, 6)]  # 40 bytes: alone
    assert quotient_pieces(tensors, budget=1 << 20) == [slice(0, 6)]


def test_slope_does_not_depend_on_the_quotient_piece_size(monkeypatch):
    from lsframe.optim import _functional

    groups, direction = groups_and_direction()
    whole = direction.slope(groups)
    monkeypatch.setitem(_functional.QUOTIENT_BYTES, "cpu", 16)  # about one tensor per piece
    assert direction.slope(groups) == pytest.approx(whole, rel=1e-6)
    assert direction.slope(groups) == pytest.approx(hand_slope(groups, direction, [0, 2]), rel=1e-6)


@pytest.mark.parametrize("piece_bytes", [16, 1 << 20])
def test_the_gpu_route_batches_the_inner_products_and_keeps_their_value(monkeypatch, piece_bytes):
    from lsframe.optim import _functional

    groups, direction = groups_and_direction()
    looped = direction.slope(groups)
    monkeypatch.setattr(_functional, "BATCHED_ON", frozenset({"cpu"}))  # as on a GPU
    monkeypatch.setitem(_functional.QUOTIENT_BYTES, "cpu", piece_bytes)
    with torch.profiler.profile() as prof:
        batched = direction.slope(groups)
    assert batched == pytest.approx(looped, rel=1e-6)
    assert batched == pytest.approx(hand_slope(groups, direction, [0, 2]), rel=1e-6)
    names = [e.name for e in prof.events()]
    assert "aten::dot" not in names and "aten::_foreach_mul_" in names
    gen = torch.Generator().manual_seed(2)
    a, b = ([torch.randn(n, generator=gen) for n in (5, 0, 7)] for _ in range(2))
    before = [t.clone() for t in b]
    plain = float(sum(x @ y for x, y in zip(a, b)))
    assert float(_functional.inner_product(a, b)) == pytest.approx(plain, rel=1e-6)
    assert all(torch.equal(x, y) for x, y in zip(b, before))  # the numerators are left as they were


def test_the_warm_up_runs_under_the_timed_steps_autocast(minilm, shared_data, monkeypatch):
    from benchmarks import step_cost

    seen = []
    timed_step = step_cost.timed_step

    def spy(run, batch, cuda):
        seen.append(torch.is_autocast_enabled("cpu"))
        return timed_step(run, batch, cuda)

    monkeypatch.setattr(step_cost, "timed_step", spy)
    args = argparse.Namespace(
        model="small-bert", device="cpu", bf16=True, steps=2, block=2, first=1,
        optimizers=["adamw-const@5e-5"], short=[], short_steps=2,
    )  # fmt: skip
    step_cost.timed_steps(args)
    assert seen == [True] * 4  # two warm-up steps (bf16's first products), then two timed
