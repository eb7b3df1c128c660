"""Dynamic Parameter Selection (P4) and ChildTuning-D/F as gradient-mask callbacks.

Both act in the once-per-step gradient hook of :class:`lsframe.modules.ClosureModule`
(``on_gradients_ready``), after the full backward and before the optimizer uses the gradients,
so they compose with every optimizer: a line search builds its direction and its Armijo term
from the masked gradient. See :mod:`lsframe.callbacks._masking` for ``mask_mode``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from lsframe.callbacks._common import squared_gradient_mean
from lsframe.callbacks._masking import (
    GradientMaskCallback,
    check_fraction,
    global_top_fraction_masks,
    top_fraction_mask,
)
from lsframe.optim._functional import all_finite
from lsframe.parts import layer_stack_parameters, weight_matrices


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

    Not implemented: DPS-Mix, whose stage I replaces each selected weight in the forward by a
    Mixout mix with the pretrained weights under a Bernoulli column mask (a different training
    model, not a gradient mask).

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
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"max_steps must be >= 1 or None, got {max_steps}")
        self.p = p
        self.update_ratio = update_ratio
        self.max_steps = max_steps
        self.stage_length: int | None = None
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
        self.scores, self.masks = None, None
        steps = self.max_steps or pl_module.num_optimizer_steps()
        self.stage_length = int(steps * self.update_ratio)
        if self.stage_length < 1:
            raise ValueError(
                f"DPS: int(max_steps * update_ratio) = int({steps} * {self.update_ratio}) is 0; "
                "raise update_ratio or train for more steps"
            )

    def stage(self, step: int) -> int:
        """Stage of the 1-based optimizer step ``step``."""
        return math.ceil(step / self.stage_length)

    @torch.no_grad()
    def on_gradients_ready(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        step = trainer.global_step + 1
        stage = self.stage(step)
        first = (step - 1) % self.stage_length == 0
        if stage % 2 == 1:
            self._score(first)
            fraction = 1.0
        else:
            if first or self.masks is None:
                self._select_masks(stage)
            self.masks = self.to_device(self.masks, self.params)
            self.apply_masks(optimizer, self.masks)
            fraction = 1.0 - self.p if self.masks is None else self.masked_fraction_kept(self.masks)
        pl_module.log("dps/stage", float(stage))
        pl_module.log("dps/updated_fraction", fraction)

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
        self.masks = {n: top_fraction_mask(s, 1.0 - self.p) for n, s in self.scores.items()}
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


class ChildTuningD(GradientMaskCallback):
    """ChildTuning (Xu et al., EMNLP 2021): a fixed Fisher mask (D) or a random one per step (F).

    * ``variant="D"``: before training, the diagonal Fisher ``F = (1/N) Σ_batches clip(g)²``
      is estimated over the training data (each parameter's gradient clipped to norm
      ``max_grad_norm`` first, as the reference); the ``ceil(reserve_p · n)`` entries with the
      largest Fisher over all selected parameters together are kept (ties: lower position), and
      every later gradient is multiplied by that fixed mask. Default selection: every parameter
      of the layer stack (:func:`lsframe.parts.layer_stack_parameters`, the reference's ``layer``
      rule). The Fisher pass runs the model in training mode and restores the random state, so
      training sees the same random numbers as a run without the callback; under DDP the Fisher
      is averaged across ranks.
    * ``variant="F"``: every step, each gradient entry of every trainable parameter is kept with
      probability ``reserve_p`` and scaled by ``1/reserve_p``.

    The mask (D) is in the ``state_dict``; a run resumed from a checkpoint does not recompute it,
    a new fit (the next task of a sequence) does.

    Args:
        reserve_p: Fraction of entries kept. Default: 0.3.
        variant: ``"D"`` (task-driven, Fisher) or ``"F"`` (task-free, Bernoulli). Default: "D".
        num_batches: Training batches for the Fisher (None: one pass over the train loader).
        max_grad_norm: Per-parameter gradient norm clip before squaring (None: no clip).
            Default: 1.0.
        include: Regular expressions replacing the default selection.
        exclude: Regular expressions removing parameters from the selection.
        mask_mode: ``"gradient"`` (the reference) or ``"frozen"``. Default: "gradient".
        seed: Seed of the F variant's masks (with the step number). Default: 0.
    """

    def __init__(
        self,
        reserve_p: float = 0.3,
        variant: Literal["D", "F"] = "D",
        num_batches: int | None = None,
        max_grad_norm: float | None = 1.0,
        include: list[str] | None = None,
        exclude: list[str] | None = None,
        mask_mode: Literal["gradient", "frozen"] = "gradient",
        seed: int = 0,
    ) -> None:
        super().__init__(mask_mode, include, exclude)
        self.seed = seed
        check_fraction("reserve_p", reserve_p, low_open=True)
        if variant not in ("D", "F"):
            raise ValueError(f"variant must be 'D' or 'F', got {variant!r}")
        if num_batches is not None and num_batches < 1:
            raise ValueError(f"num_batches must be >= 1 or None, got {num_batches}")
        if max_grad_norm is not None and max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be positive or None, got {max_grad_norm}")
        self.reserve_p = reserve_p
        self.variant = variant
        self.num_batches = num_batches
        self.max_grad_norm = max_grad_norm
        self.masks: dict[str, Tensor] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            variant=self.variant,
            reserve_p=self.reserve_p,
            include=self.include,
            exclude=self.exclude,
        )

    def select(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        if self.variant == "F":
            if self.include:
                return weight_matrices(model, self.include, self.exclude)
            # every trainable parameter (as the reference), less the exclude patterns
            return weight_matrices(model, [""], self.exclude)
        return layer_stack_parameters(model, self.include, self.exclude)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        resumed = trainer.ckpt_path is not None and self.masks is not None
        if self.variant == "D" and not resumed:  # each new fit (task) gets its own mask
            fisher = self.estimate_fisher(trainer, pl_module)
            self.masks = global_top_fraction_masks(fisher, self.reserve_p)

    def estimate_fisher(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> dict[str, Tensor]:
        """Mean over training batches of each selected parameter's squared (clipped) gradient,
        in training mode as the reference."""
        return squared_gradient_mean(
            trainer,
            pl_module,
            self.params,
            num_batches=self.num_batches,
            train_mode=True,
            max_grad_norm=self.max_grad_norm,
            owner="ChildTuningD",
        )

    @torch.no_grad()
    def on_gradients_ready(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self.variant == "F":
            # a generator of its own, seeded by (seed, step): the same masks on every DDP rank
            # and after a resume, whatever else consumed the global random state
            device = next(iter(self.params.values())).device
            generator = torch.Generator(device).manual_seed(
                self.seed * 1_000_003 + trainer.global_step
            )
            masks = {
                n: torch.rand(p.shape, generator=generator, device=p.device) < self.reserve_p
                for n, p in self.params.items()
                if p.grad is not None
            }
            self.apply_masks(optimizer, masks, scale=1.0 / self.reserve_p)
            pl_module.log("child_tuning/updated_fraction", self.masked_fraction_kept(masks))
            return
        if self.masks is None:
            raise RuntimeError("ChildTuningD: no mask; on_train_start did not run")
        self.masks = self.to_device(self.masks, self.params)
        self.apply_masks(optimizer, self.masks)

    def state_dict(self) -> dict[str, Any]:
        masks = None if self.masks is None else {n: m.cpu() for n, m in self.masks.items()}
        return {"masks": masks}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.masks = state_dict["masks"]
