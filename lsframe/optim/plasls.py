"""PLASLS: one line-searched step size per part of the network, searched in turn."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from torch import Tensor

from lsframe.optim._linesearch import LineSearchOptimizer
from lsframe.optim.adam_sls import check_adam_sls_group, search_parts_then_adam_step
from lsframe.optim.rules import ActiveGroup
from lsframe.validation import check_int_at_least


class PLASLS(LineSearchOptimizer):
    """AdamSLS with one step size per part (layer-wise), searched one part per step.

    Kenneweg, Galli, Kenneweg, Hammer, IJCNN 2023 (P0), "PLASLS". Each param group is a part
    (build them with :func:`lsframe.parts.part_groups`, which names each by its ``part`` key). A
    group without a ``part`` key is a part too, named by its ``name`` key, else ``group_<i>``
    (its index): ``PLASLS(model.parameters())`` has one part, ``PLASLS([{"params": a},
    {"params": b}])`` two. The first ``joint_steps`` steps run one joint AdamSLS search over all
    parts. Afterwards, at 0-based step ``t``, only part
    ``k = t mod K`` is searched (its trial moves only part ``k`` along ``P ⊙ g``, and its Armijo
    term sums over part ``k`` only); every part then takes Adam's step with its own ``η_k``, and
    the parts not searched start from their grown ``η_k · γ^(1/n)`` as in P0's code.

    Differences from P0's code: the cycle is ``t mod K`` as the paper states (the code restarts
    the cycle at part 0 after the joint phase); merging parts whose η falls below a threshold
    (off in the code's defaults) is not implemented; the pooler belongs to the head part (the
    code leaves it out of the optimizer).

    Each part's hyperparameters may differ (its group's ``c``, ``beta_b``, ...); the joint
    searches need them equal across the parts.

    Args:
        params: Parameters or param groups, one per part (``part`` key: the part's name).
        joint_steps: Steps of joint search before the cycle starts. Default: 6.
        lr: As :class:`~lsframe.optim.AdamSLS`, with its default.
        betas: As :class:`~lsframe.optim.AdamSLS`, with its default.
        eps: As :class:`~lsframe.optim.AdamSLS`, with its default.
        c: As :class:`~lsframe.optim.AdamSLS`, with its default.
        beta_b: As :class:`~lsframe.optim.AdamSLS`, with its default.
        gamma: As :class:`~lsframe.optim.AdamSLS`, with its default.
        reset_option: As :class:`~lsframe.optim.AdamSLS`, with its default.
        n_batches_per_epoch: As :class:`~lsframe.optim.AdamSLS`, with its default.
        smooth: As :class:`~lsframe.optim.AdamSLS`, with its default.
        beta_s: As :class:`~lsframe.optim.AdamSLS`, with its default.
        max_backtracks: As :class:`~lsframe.optim.AdamSLS`, with its default.
        weight_decay: As :class:`~lsframe.optim.AdamSLS`, with its default.
    """

    def __init__(
        self,
        params: Any,
        joint_steps: int = 6,
        lr: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        c: float = 0.1,
        beta_b: float = 0.9,
        gamma: float = 2.0,
        reset_option: Literal[0, 1, 2] = 1,
        n_batches_per_epoch: int = 500,
        smooth: bool = False,
        beta_s: float = 0.999,
        max_backtracks: int = 100,
        weight_decay: float = 0.0,
    ) -> None:
        defaults = dict(
            lr=lr,
            joint_steps=joint_steps,
            betas=tuple(betas),
            eps=eps,
            c=c,
            beta_b=beta_b,
            gamma=gamma,
            reset_option=reset_option,
            n_batches_per_epoch=n_batches_per_epoch,
            smooth=smooth,
            beta_s=beta_s,
            max_backtracks=max_backtracks,
            weight_decay=weight_decay,
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a part; a group without a ``part`` key is named by its ``name`` key, else (or
        when another part has that name already) ``group_<i>``."""
        super().add_param_group(param_group)
        group, index = self.param_groups[-1], len(self.param_groups) - 1
        if "part" not in group:
            taken = {g.get("part") for g in self.param_groups[:-1]}
            name = group.get("name")
            group["part"] = name if name is not None and name not in taken else f"group_{index}"

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        check_int_at_least(0, joint_steps=group["joint_steps"])
        check_adam_sls_group(group)

    def parts_to_search(self, step: int) -> list[int]:
        """Indices of the groups searched at 1-based step ``step``: all of them during the joint
        phase, then part ``(step − 1) mod K``."""
        t = step - 1
        num_groups = len(self.param_groups)
        if t < self.shared("joint_steps"):
            return list(range(num_groups))
        return [t % num_groups]

    def _line_search_step(
        self, loss: float, forward: Callable[[], Tensor], groups: list[ActiveGroup]
    ) -> None:
        searched = self.parts_to_search(self.search_state["step"])
        search_parts_then_adam_step(self, loss, forward, groups, searched)
