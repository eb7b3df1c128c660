"""PLASLS: one line-searched step size per part of the network, searched in turn."""

from __future__ import annotations

from typing import Any

from lsframe.optim.adam_sls import AdamSLS


class PLASLS(AdamSLS):
    """AdamSLS with one step size per part (layer-wise), searched one part per step.

    Kenneweg, Galli, Kenneweg, Hammer, IJCNN 2023 (P0), "PLASLS". Each param group is a part
    (build them with :func:`lsframe.parts.part_groups`; every group needs a ``part`` key so that
    ordinary weight-decay groups are not mistaken for parts). The first ``joint_steps`` steps run
    one joint AdamSLS search over all parts. Afterwards, at 0-based step ``t``, only part
    ``k = t mod K`` is searched (its trial moves only part ``k`` along ``P ⊙ g``, and its Armijo
    term sums over part ``k`` only); every part then takes Adam's step with its own ``η_k``, and
    the parts not searched start from their grown ``η_k · γ^(1/n)`` as in P0's code.

    Differences from P0's code: the cycle is ``t mod K`` as the paper states (the code restarts
    the cycle at part 0 after the joint phase); merging parts whose η falls below a threshold
    (off in the code's defaults) is not implemented; the pooler belongs to the head part (the
    code leaves it out of the optimizer).

    Args:
        params: Param groups, one per part, each with a ``part`` name.
        joint_steps: Steps of joint search before the cycle starts. Default: 6.
        **kwargs: As :class:`AdamSLS` (lr, betas, eps, c, beta_b, gamma, ...).
    """

    def __init__(self, params: Any, joint_steps: int = 6, **kwargs: Any) -> None:
        if not isinstance(joint_steps, int) or joint_steps < 0:
            raise ValueError(f"joint_steps must be an integer >= 0, got {joint_steps}")
        self.joint_steps = joint_steps
        super().__init__(params, **kwargs)
        missing = [i for i, g in enumerate(self.param_groups) if "part" not in g]
        if missing:
            raise ValueError(
                f"PLASLS needs one param group per part, each with a 'part' key; groups {missing} "
                "have none. Build them with lsframe.parts.part_groups(model), or set "
                "param_grouping: parts on lsframe's module."
            )

    def _parts_to_search(self, step: int, num_groups: int) -> list[int]:
        t = step - 1  # 0-based index of this step
        if t < self.joint_steps:
            return list(range(num_groups))
        return [t % num_groups]
