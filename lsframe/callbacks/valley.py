"""Valley exploration (P2's adaptor "E") for any optimizer, as a callback."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lsframe.callbacks.base import ClosureCallback
from lsframe.callbacks.masking import GradientMaskCallback
from lsframe.optim.valley import check_valley, init_valley_state, valley_adapt_, valley_defaults
from lsframe.validation import check_bool


class ValleyExploration(ClosureCallback):
    """Replace each step's gradient ``g`` by ``g̃ = g + α a`` before the optimizer uses it (Zhao et
    al., NeurIPS 2025, arXiv 2510.27153; maths in :mod:`lsframe.optim.valley`).

    Runs in the :meth:`~lsframe.callbacks.ClosureCallback.on_gradients_ready` hook: once per
    optimizer step, after the full backward (all micro-batches, callback loss terms included) and
    before gradient clipping and the optimizer. Any optimizer therefore runs on ``g̃``: AdamW becomes
    AdamE (without the module's ``gradient_clip_val``: the reference adapts inside the optimizer,
    after its trainer clipped ``g``, where this callback adapts before the clip; use
    :class:`lsframe.optim.AdamE` for that order), Lamb becomes ALTO's update without its
    clip-first order, and a line search builds its direction *and its Armijo slope* from ``g̃``
    (the slope is ``⟨g̃, d⟩``, not the true directional derivative ``⟨g, d⟩``). DPS's mask and
    this callback compose in the order of ``trainer.callbacks``: list this callback first, so
    that the mask acts on the adapted gradient (the other order warns: ``g̃ = 0 + α a`` moves
    masked entries). ChildTuning masks after clipping, so after this callback in either order.

    ``p.grad`` holds ``g̃`` only during the optimizer step: after the batch the raw gradient is
    written back, so later hooks and loggers see ``g``. The state (previous gradient and ``a``
    per parameter, two tensors each) is saved in the callback's ``state_dict`` and restored on
    resume, unlike the reference, which loses it; a new fit without a checkpoint (the next task
    of a sequence) starts without history. First step: no kick (``first_step_kick``).

    Args:
        alpha: α. None: from the effective batch size (:meth:`effective_batch_size`) by the
            paper's rule (< 1,024: α = 0.5, β1 = 0.01; otherwise α = −5, β1 = 0.99).
        beta: β1 of the adaptor. None: as ``alpha``.
        first_step_kick: Start from ``g_0 = 0`` as the reference. Default: False.

    Example (YAML)::

        trainer:
          callbacks:
            - class_path: lsframe.callbacks.ValleyExploration
              init_args: {alpha: 0.5, beta: 0.01}
    """

    def __init__(
        self, alpha: float | None = None, beta: float | None = None, first_step_kick: bool = False
    ) -> None:
        if (alpha is None) != (beta is None):
            raise ValueError("give both alpha and beta, or neither (the batch-size rule)")
        if alpha is not None:
            check_valley(alpha, beta)
        check_bool(first_step_kick=first_step_kick)
        self.alpha = alpha
        self.beta = beta
        self.by_batch_size = alpha is None  # the rule picks alpha and beta at each new fit
        self.first_step_kick = first_step_kick
        self.params: dict[str, nn.Parameter] = {}
        self.prev: dict[str, Tensor] = {}
        self.diffs: dict[str, Tensor] = {}
        self._adapted: list[str] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        callbacks = list(trainer.callbacks)
        masks_first = [
            type(c).__name__
            for c in callbacks[: callbacks.index(self)]
            if isinstance(c, GradientMaskCallback) and not c.after_clipping
        ]
        if masks_first:
            rank_zero_warn(
                f"ValleyExploration comes after {masks_first} in trainer.callbacks: it adapts the "
                "masked gradient, and g + alpha * a moves masked entries again. List it first "
                "so that the mask acts on the adapted gradient."
            )
        model = getattr(pl_module, "model", pl_module)
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.ckpt_path is None:  # a new fit (e.g. the next task) starts without history
            self.prev, self.diffs = {}, {}
            if self.by_batch_size:
                self.alpha = None
        if self.alpha is None:  # by the rule, unless restored from a checkpoint
            self.alpha, self.beta = valley_defaults(self.effective_batch_size(trainer, pl_module))

    @staticmethod
    def effective_batch_size(trainer: pl.Trainer, pl_module: pl.LightningModule) -> int:
        """Micro-batch size (the DataModule's ``batch_size``, else the train loader's) ×
        ``accumulate_grad_batches`` × world size."""
        batch = getattr(trainer.datamodule, "batch_size", None)
        if not isinstance(batch, int):
            batch = getattr(trainer.train_dataloader, "batch_size", None)
        if not isinstance(batch, int):
            raise ValueError(
                "ValleyExploration: the batch-size rule needs the batch size (a DataModule or "
                "DataLoader batch_size); set alpha and beta explicitly"
            )
        return batch * getattr(pl_module, "accumulate_grad_batches", 1) * trainer.world_size

    @torch.no_grad()
    def on_gradients_ready(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        names = [n for n, p in self.params.items() if p.grad is not None]
        seen = [n for n in names if n in self.prev]
        for n in seen:  # after a resume the saved state arrives on the CPU
            self.prev[n] = self.prev[n].to(self.params[n].grad.device)
            self.diffs[n] = self.diffs[n].to(self.params[n].grad.device)
        valley_adapt_(
            [self.params[n].grad for n in seen],
            [self.prev[n] for n in seen],
            [self.diffs[n] for n in seen],
            self.alpha,
            self.beta,
        )
        fresh = [n for n in names if n not in self.prev]
        if fresh:
            prev, diffs = init_valley_state(
                [self.params[n].grad for n in fresh], self.alpha, self.beta, self.first_step_kick
            )
            self.prev.update(zip(fresh, prev))
            self.diffs.update(zip(fresh, diffs))
        self._adapted = names

    @torch.no_grad()
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        for name in self._adapted:
            grad = self.params[name].grad
            if grad is not None:
                grad.copy_(self.prev[name])
        self._adapted = []

    def state_dict(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "beta": self.beta,
            "prev": {n: t.cpu() for n, t in self.prev.items()},
            "diffs": {n: t.cpu() for n, t in self.diffs.items()},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.alpha, self.beta = state_dict["alpha"], state_dict["beta"]
        self.prev = dict(state_dict["prev"])
        self.diffs = dict(state_dict["diffs"])
