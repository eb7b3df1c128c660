"""Pure-PyTorch optimizers, schedules and parameter-group helpers (no Lightning import)."""

from lsframe.optim.param_groups import weight_decay_groups
from lsframe.optim.schedulers import WarmupCosineLR

__all__ = ["WarmupCosineLR", "weight_decay_groups"]
