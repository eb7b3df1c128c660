"""Dynamic Parameter Selection (P4) as a gradient-mask callback.

It acts in the once-per-step gradient hook (:meth:`lsframe.callbacks.ClosureCallback.
on_gradients_ready`), after the full backward and before the optimizer uses the gradients, so it
composes with every optimizer: a line search builds its direction and its Armijo term from the
masked gradient. See :mod:`lsframe.callbacks.masking` for ``mask_mode``. ChildTuning-D/F lives in
:mod:`lsframe.callbacks.child_tuning` (re-exported here, its former home).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lsframe.callbacks.child_tuning import ChildTuningD
from lsframe.callbacks.masking import GradientMaskCallback, top_fraction_mask
from lsframe.errors import ConfigError
from lsframe.optim import all_finite
from lsframe.parts import weight_matrices
from lsframe.validation import check_fraction, check_int_at_least

__all__ = ["DPS", "ChildTuningD"]


class DPS(GradientMaskCallback):
    """Dense Dynamic Parameter Selection (Zhang et al., NeurIPS 2022, arXiv 2211.01642, §3).

    Training is cut into stages of ``u = int(max_steps · update_ratio)`` optimizer steps; step
    ``t`` (1-based) is in stage ``s = ceil(t / u)``:

    * odd ``s`` (stage I): full gradients; each selected weight matrix ``W`` accumulates the score
      ``S_W += g_W²`` (reset to the first step's ``g_W²`` at the start of the stage);
    * even ``s`` (stage II): at its first step, a per-matrix mask keeps the ``ceil((1 − p)·n_W)``
      entries with the largest score (ties: lower flat index); ``g_W`` is multiplied by it for the
      whole stage.

    The selected matrices are :func:`lsframe.parts.weight_matrices` (attention Q/K/V/output, FFN
    in/out, pooler, classifier in BERT; the linear layers of any family; or ``include``
    patterns). Scores and masks go into the callback's ``state_dict``, so a run resumed from a
    checkpoint continues the same stage with the same mask; a new fit (the next task of a
    sequence) starts its own stages. Logged each step: ``dps/stage`` and
    ``dps/updated_fraction`` (fraction of selected entries whose gradient is kept).

    DPS-Mix, whose stage I also mixes each selected weight toward the pretrained one in the
    forward, is :class:`lsframe.callbacks.DPSMix`.

    Args:
        p: Fraction of each matrix's entries masked in stage II. Default: 0.3.
        update_ratio: Stage length as a fraction of the run's optimizer steps. Default: 0.05.
        max_steps: Optimizer steps the stage length is computed from. Default: the run's
            (``ClosureModule.num_optimizer_steps``).
        include: Regular expressions replacing the default selection rule.
        exclude: Regular expressions removing matrices from the selection.
        mask_mode: ``"gradient"`` (the reference: momentum and weight decay still move masked
            entries) or ``"frozen"`` (masked entries stay bit-identical). Default: "gradient".

    Example (YAML)::

        trainer:
          callbacks:
            - class_path: lsframe.callbacks.DPS
              init_args: {p: 0.3, update_ratio: 0.05}
    """

    #: Prefix of the logged metrics (``<prefix>/stage``, ``<prefix>/updated_fraction``).
    log_prefix = "dps"

    def __init__(
        self,
        p: float = 0.3,
        update_ratio: float = 0.05,
        max_steps: int | None = None,
        include: list[str] | None = None,
        exclude: list[str] | None = None,
        mask_mode: Literal["gradient", "frozen"] = "gradient",
    ) -> None:
        super().__init__(mask_mode, include, exclude)
        check_fraction("p", p)
        check_fraction("update_ratio", update_ratio, low_open=True)
        check_int_at_least(1, allow_none=True, max_steps=max_steps)
        self.p = p
        self.update_ratio = update_ratio
        self.max_steps = max_steps
        if p == 0:  # a sweep's edge that would report plain fine-tuning as this method
            rank_zero_warn(
                f"{type(self).__name__}(p=0) masks nothing: the run is plain fine-tuning"
            )
        if max_steps is not None:
            self.check_run_steps(max_steps)
        self.stage_length: int | None = None
        self._gradients_of_step: int | None = None  # the step whose gradients were seen last
        self.scores: dict[str, Tensor] | None = None
        self.masks: dict[str, Tensor] | None = None

    @property
    def state_key(self) -> str:
        # distinct keys let several instances (e.g. on different parameters) share a checkpoint
        return self._generate_state_key(
            p=self.p, update_ratio=self.update_ratio, include=self.include, exclude=self.exclude
        )

    def select(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        return weight_matrices(model, self.include, self.exclude)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.ckpt_path is not None and self.stage_length is not None:
            return  # resumed from a checkpoint: the same stages, scores and masks
        # a new fit (e.g. the next task of a sequence) starts its own stages
        self.scores, self.masks, self._gradients_of_step = None, None, None
        steps = self.max_steps or pl_module.num_optimizer_steps()
        self.check_run_steps(steps)
        self.stage_length = int(steps * self.update_ratio)
        try:
            run = steps if self.max_steps is None else pl_module.num_optimizer_steps()
        except ValueError:  # a run of unknown length (an infinite loader): no judgement
            run = None
        if run is not None and self.stage_length >= run:
            rank_zero_warn(
                f"{type(self).__name__}: stages of {self.stage_length} optimizer steps in a run of "
                f"{run}: its masking stage never comes; lower update_ratio (or max_steps)"
            )

    def check_run_steps(self, run_steps: int) -> None:
        """Refuse stages of 0 steps: ``int(steps · update_ratio)`` with ``steps`` this callback's
        ``max_steps``, else ``run_steps`` (the run's optimizer steps, or a bound on them: the
        config check passes ``trainer.max_steps`` before the model loads).

        Raises:
            ConfigError: at ``update_ratio``.
        """
        steps = self.max_steps or run_steps
        if int(steps * self.update_ratio) < 1:
            source = "its max_steps" if self.max_steps else "the run's optimizer steps"
            raise ConfigError(
                f"{type(self).__name__}: a stage would be int({steps} · {self.update_ratio:g}) = 0 "
                f"optimizer steps ({steps}: {source}); raise update_ratio or train for more steps",
                argument="update_ratio",
            )

    def stage(self, step: int) -> int:
        """Stage of the 1-based optimizer step ``step``."""
        return math.ceil(step / self.stage_length)

    @torch.no_grad()
    def on_gradients_ready(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        step = trainer.global_step + 1
        # an optimizer that runs the backward closure again in its step (torch's LBFGS): the
        # gradients are masked each time, but the step is scored and its masks chosen once
        again, self._gradients_of_step = step == self._gradients_of_step, step
        stage = self.stage(step)
        first = (step - 1) % self.stage_length == 0 and not again
        if stage % 2 == 1:
            fraction = self._stage_one(trainer, first, score=not again)
        else:
            if first or self.masks is None:
                self._select_masks(stage)
            self.masks = self.to_device(self.masks, self.params)
            self.apply_masks(optimizer, self.masks)
            fraction = 1.0 - self.p if self.masks is None else self.masked_fraction_kept(self.masks)
        pl_module.log(f"{self.log_prefix}/stage", float(stage))
        pl_module.log(f"{self.log_prefix}/updated_fraction", fraction)

    def _stage_one(self, trainer: pl.Trainer, first: bool, score: bool = True) -> float:
        """Stage I's gradient work (with ``score``, once per step: accumulate the scores);
        returns the fraction of selected entries whose gradient is kept."""
        if score:
            self._score(first)
        return 1.0

    def _selection_scores(self) -> dict[str, Tensor]:
        """What stage II ranks: the accumulated ``g²``."""
        return self.scores

    def _score(self, first: bool) -> None:
        if first or self.scores is None:
            self.scores = {
                n: torch.zeros_like(p, dtype=torch.float32) for n, p in self.params.items()
            }
            self.masks = None
        self.scores = self.to_device(self.scores, self.params)
        names = [n for n, p in self.params.items() if p.grad is not None]
        grads = [self.params[n].grad.float() for n in names]
        if grads and all_finite(grads):  # a non-finite gradient would poison the ranking
            torch._foreach_addcmul_([self.scores[n] for n in names], grads, grads)

    def _select_masks(self, stage: int) -> None:
        if self.scores is None:
            raise RuntimeError(
                f"DPS reached stage {stage} (a masking stage) without scores from the stage "
                "before; was the callback added to a run resumed mid-way?"
            )
        ranked = self._selection_scores()
        self.masks = {n: top_fraction_mask(s, 1.0 - self.p) for n, s in ranked.items()}
        self.scores = None  # not needed until the next stage I resets them

    def state_dict(self) -> dict[str, Any]:
        def cpu(tensors: dict[str, Tensor] | None) -> dict[str, Tensor] | None:
            return None if tensors is None else {n: t.cpu() for n, t in tensors.items()}

        return {
            "stage_length": self.stage_length,
            "scores": cpu(self.scores),
            "masks": cpu(self.masks),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.stage_length = state_dict["stage_length"]
        self.scores = state_dict["scores"]
        self.masks = state_dict["masks"]
