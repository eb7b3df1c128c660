"""Learning-rate schedules used by the papers' baselines."""

from __future__ import annotations

import math
import warnings

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class WarmupCosineLR(LambdaLR):
    """Linear warmup over a fraction of the steps, then cosine decay to ``min_lr_ratio``.

    The schedule of the papers' AdamW baselines (10 % warmup, cosine decay). The multiplier at
    step ``t`` (0-based) is ``(t + 1) / w`` for ``t < w`` (so the first step is not wasted at
    learning rate 0) and ``min + (1 - min) * (1 + cos(pi * (t - w) / (T - w))) / 2`` afterwards.

    Args:
        optimizer: The optimizer whose groups' ``lr`` is scheduled.
        warmup_ratio: Fraction of the total steps spent warming up. Default: 0.1.
        total_steps: Number of optimizer steps ``T``. ``None`` (default) lets
            :class:`lsframe.modules.ClosureModule` fill it in from the trainer through
            :meth:`set_total_steps`; until then the multiplier is 1.
        min_lr_ratio: Final multiplier. Default: 0.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_ratio: float = 0.1,
        total_steps: int | None = None,
        min_lr_ratio: float = 0.0,
    ) -> None:
        if not 0.0 <= warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
        if total_steps is not None and total_steps < 1:
            raise ValueError(f"total_steps must be >= 1 or None, got {total_steps}")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
        self.warmup_ratio = warmup_ratio
        self.total_steps = total_steps
        self.min_lr_ratio = min_lr_ratio
        super().__init__(optimizer, self.multiplier)

    def set_total_steps(self, total_steps: int) -> None:
        """Set ``T`` once the run length is known and re-apply the multiplier of the current step."""
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        self.total_steps = total_steps
        self._apply_multiplier()

    def _apply_multiplier(self) -> None:
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base_lr * self.multiplier(self.last_epoch)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def multiplier(self, step: int) -> float:
        return self._multiplier_over(self.total_steps, step)

    def _multiplier_over(self, total_steps: int | None, step: int) -> float:
        if total_steps is None:
            return 1.0
        warmup = int(self.warmup_ratio * total_steps)
        if step < warmup:
            return (step + 1) / warmup
        span = max(total_steps - warmup, 1)
        progress = min((step - warmup) / span, 1.0)
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (
            1 + math.cos(math.pi * progress)
        )

    def state_dict(self) -> dict:
        # the bound method in lr_lambdas is not picklable state; everything else is plain
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "lr_lambdas")}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the position in the schedule (the step, the base learning rates).

        The schedule's length is this run's when it is known (``total_steps`` given or already
        set from the trainer): a run extended past the checkpoint's length (a larger
        ``max_steps``) continues from the saved step over the new length, where restoring the
        old one would leave every extra step at ``min_lr_ratio`` (Hugging Face ``Trainer``
        rebuilds its schedule the same way). A change of length is announced in a warning.
        """
        length = self.total_steps
        saved = state_dict.get("total_steps")
        self.__dict__.update(state_dict)
        if length is None or length == saved:
            return  # the saved learning rates stand, as torch's schedulers leave them
        self.total_steps = length
        if saved is not None and self.last_epoch >= 0:
            before = self._multiplier_over(saved, self.last_epoch)
            warnings.warn(
                f"WarmupCosineLR: the loaded schedule ran over {saved} steps and this run "
                f"takes {length}: it continues from step {self.last_epoch} over {length} "
                f"(multiplier {before:.3g} -> {self.multiplier(self.last_epoch):.3g})",
                stacklevel=2,
            )
            self._apply_multiplier()
