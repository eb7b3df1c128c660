"""What :class:`~lsframe.integrations.hf.LineSearchTrainer` adds to each of Trainer's training
logs: the step sizes taken and the last step's search diagnostics."""

from __future__ import annotations

from torch.optim import Optimizer


def step_size_logs(optimizer: Optimizer) -> dict[str, float]:
    """``step_size`` (group 0's accepted step size) and, when the groups' step sizes differ,
    ``step_size/<group name or index>`` for each group; with the line search's diagnostics of
    its last step (``optimizer.last_step``), ``linesearch/trials``, ``linesearch/failed_searches``
    (cumulative), when a search accepted a trial ``linesearch/sufficient_decrease_ratio``, and a
    step-size tracker's ``linesearch/alignment``."""
    groups = optimizer.param_groups
    last = getattr(optimizer, "last_step", None)
    taken = last.get("step_sizes") if isinstance(last, dict) else None
    sizes = taken if taken is not None else [g["step_size"] for g in groups]
    logs = {"step_size": float(sizes[0])}
    if taken is not None and taken[0] != groups[0]["step_size"]:  # a merge after the update
        logs["learning_rate"] = float(taken[0] * groups[0]["lr_multiplier"])  # not the merged lr
    if any(size != sizes[0] for size in sizes[1:]):
        for i, (group, size) in enumerate(zip(groups, sizes)):
            logs[f"step_size/{group.get('name', i)}"] = float(size)
    if isinstance(last, dict):
        logs["linesearch/trials"] = float(last["trials"])
        logs["linesearch/failed_searches"] = float(optimizer.search_state["failed_searches"])
        for key in ("sufficient_decrease_ratio", "alignment"):  # alignment: a tracker's
            if last.get(key) is not None:
                logs[f"linesearch/{key}"] = float(last[key])
    return logs
