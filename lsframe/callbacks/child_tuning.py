"""ChildTuning (Xu et al., EMNLP 2021) as a gradient-mask callback: ChildTuning-D (a fixed
Fisher mask) and ChildTuning-F (a random mask per step).

Like every gradient mask it acts in the once-per-step gradient hook
(:meth:`lsframe.callbacks.ClosureCallback.on_gradients_ready`), so it composes with every
optimizer. See :mod:`lsframe.callbacks.masking` for ``mask_mode``.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lsframe.callbacks.fisher import squared_gradient_mean
from lsframe.callbacks.masking import GradientMaskCallback, global_top_fraction_masks
from lsframe.optim import info_for
from lsframe.parts import layer_stack_parameters, weight_matrices
from lsframe.validation import check_choice, check_fraction, check_int_at_least, check_positive


class ChildTuningD(GradientMaskCallback):
    """ChildTuning (Xu et al., EMNLP 2021): a fixed Fisher mask (D) or a random one per step (F).

    * ``variant="D"``: before training, the diagonal Fisher ``F = (1/N) Σ_batches clip(g)²``
      is estimated over the training data, one gradient per batch of the training loader (the
      module's micro-batch, as the reference's per-device batch: ``accumulate_grad_batches``
      does not enlarge it), each parameter's gradient clipped to norm ``max_grad_norm`` first,
      as the reference; the ``ceil(reserve_p · n)`` entries with the
      largest Fisher over all selected parameters together are kept (ties: lower position), and
      every later gradient is multiplied by that fixed mask. Default selection: every parameter
      of the layer stack (:func:`lsframe.parts.layer_stack_parameters`, the reference's ``layer``
      rule). The Fisher pass runs the model in training mode and restores the random state, so
      training sees the same random numbers as a run without the callback; under DDP the Fisher
      is averaged across ranks.
    * ``variant="F"``: every step, each gradient entry of every trainable parameter is kept with
      probability ``reserve_p`` and scaled by ``1/reserve_p``. Under a line search with trials
      (SGDSLS, AdamSLS, PLASLS, ALSALS, SaLSA) the kept entries are not scaled, a difference from
      the reference (which runs AdamW): the search sets the step size, which the scale only
      multiplies, and its sufficient-decrease test reads the slope from the gradient, which the
      scale would make ``1/reserve_p`` times the loss's (⟨g, M⊙g⟩/p against ‖M⊙g‖²/p²): with
      ``reserve_p`` below ``c`` no small step passed (SaLSA, ``c`` 0.5, backtracked to ~1e-8).

    The mask (D) is in the ``state_dict``; a run resumed from a checkpoint does not recompute it,
    a new fit (the next task of a sequence) does.

    The mask acts after the module's gradient clipping (``gradient_clip_val``;
    :attr:`~lsframe.callbacks.ClosureCallback.after_clipping`), as the reference's optimizer
    masks the gradient its trainer clipped: clipping after the mask would undo F's ``1/reserve_p``
    scale (with clip 0.1, an F update 0.64× the reference's).

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

    after_clipping = True

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
        check_int_at_least(0, seed=seed)
        self.seed = seed
        check_fraction("reserve_p", reserve_p, low_open=True)
        check_choice("variant", variant, ("D", "F"))
        check_int_at_least(1, allow_none=True, num_batches=num_batches)
        check_positive(allow_none=True, max_grad_norm=max_grad_norm)
        self.reserve_p = reserve_p
        self.variant = variant
        if reserve_p == 1:  # a sweep's edge that would report plain fine-tuning as this method
            rank_zero_warn(
                f"{type(self).__name__}(reserve_p=1) keeps every gradient: the run is plain "
                "fine-tuning"
            )
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

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit" or self.variant != "F":
            return
        entries = sum(p.numel() for p in self.params.values())
        kept = self.reserve_p * entries
        if kept < 1:  # D keeps ceil(reserve_p · n) ≥ 1 entries
            raise ValueError(
                f'ChildTuningD(variant="F"): reserve_p={self.reserve_p:g} keeps {kept:.2g} of the '
                f"{entries} selected gradient entries per step on average, so most steps would "
                f"update nothing; reserve_p must be at least 1/{entries} = {1 / entries:.2g}"
            )

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
            searched = info_for(optimizer).forward_trials  # the search sets the step size
            self.apply_masks(optimizer, masks, scale=1.0 if searched else 1.0 / self.reserve_p)
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
