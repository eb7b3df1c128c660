"""What every gradient-mask callback shares (DPS, ChildTuning): exact top-fraction masks
(:func:`top_fraction_mask`, :func:`global_top_fraction_masks`) and the two masking behaviours.

Masking behaviours (``mask_mode``):

* ``"gradient"`` (default, as the reference implementations): masked gradient entries are set to
  zero before the optimizer uses them. Whatever the optimizer builds from gradients (Adam moments,
  a line search's direction and its Armijo term) sees the masked gradient, but momentum gathered
  earlier and decoupled weight decay still move masked entries.
* ``"frozen"``: masked entries do not move at all. Besides the gradient, their first-moment
  buffers (``exp_avg`` of the Adam family, lsframe's line searches included, ``momentum_buffer``
  of SGD) are zeroed, so a line search's trial points and its Armijo slope leave them out too;
  their values are saved before the step and written back as the optimizer's step returns (its
  step post-hook, before any callback's batch-end hook sees the parameters), which also undoes
  weight decay. Masked entries are then bit-identical across the step. Second moments keep
  decaying.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lsframe.callbacks.base import ClosureCallback
from lsframe.errors import ConfigError
from lsframe.parts import check_patterns_match
from lsframe.validation import check_choice, check_patterns

FIRST_MOMENT_KEYS = ("exp_avg", "momentum_buffer")


def top_fraction_mask(score: Tensor, keep: float) -> Tensor:
    """Boolean mask of exactly ``ceil(keep · n)`` entries of ``score`` with the largest values.

    Ties are broken by position: among equal scores the entry with the lower flat index is kept
    (a stable sort). The reference implementations keep every entry tied with the threshold,
    which can keep more than the fraction (e.g. all of an all-zero score).
    """
    flat = score.reshape(-1)
    k = math.ceil(keep * flat.numel() - 1e-9)  # (1 - 0.7) * 10 is 3.0000000000000004
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if k > 0:
        mask[torch.sort(flat, descending=True, stable=True).indices[:k]] = True
    return mask.view(score.shape)


def global_top_fraction_masks(scores: dict[str, Tensor], keep: float) -> dict[str, Tensor]:
    """:func:`top_fraction_mask` over all tensors of ``scores`` at once (ties: earlier tensor,
    then lower index), split back per tensor."""
    names = list(scores)
    flat = top_fraction_mask(torch.cat([scores[n].reshape(-1).float() for n in names]), keep)
    sizes = [scores[n].numel() for n in names]
    return {n: m.view(scores[n].shape) for n, m in zip(names, flat.split(sizes))}


class GradientMaskCallback(ClosureCallback):
    """Base class: selected parameters, mask application, frozen-mode save and restore.

    Subclasses implement :meth:`select` and :meth:`ClosureCallback.on_gradients_ready`, which
    fires once per optimizer step after the full backward (all micro-batches) and before the
    optimizer's use of the gradients; before clipping (DPS, whose reference masks in the
    backward pass) or after it (``after_clipping``: ChildTuning, whose reference masks inside
    its optimizer).
    """

    def __init__(
        self,
        mask_mode: Literal["gradient", "frozen"] = "gradient",
        include: list[str] | None = None,
        exclude: list[str] | None = None,
    ) -> None:
        check_choice("mask_mode", mask_mode, ("gradient", "frozen"))
        check_patterns(include=include, exclude=exclude)
        self.mask_mode = mask_mode
        self.include = list(include) if include else None
        self.exclude = list(exclude) if exclude else None
        self.params: dict[str, nn.Parameter] = {}
        self._saved: list[tuple[nn.Parameter, Tensor, Tensor]] = []
        self._restore_hook: Any = None  # the optimizer's step post-hook that calls _restore

    def select(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        """The ``(name, parameter)`` pairs of ``model`` this callback masks."""
        raise NotImplementedError

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        name = type(self).__name__
        model = getattr(pl_module, "model", pl_module)
        check_patterns_match(model, name, include=self.include, exclude=self.exclude)
        self._check_exclude_removes_something(model)
        self.params = dict(self.select(model))
        if not self.params:
            raise ValueError(
                f"{name} selected no parameter of {type(model).__name__} "
                f"(include={self.include}, exclude={self.exclude})"
            )
        masks = [c for c in trainer.callbacks if isinstance(c, GradientMaskCallback)]
        if len(masks) > 1 and masks[0] is self:  # said once, by the first
            rank_zero_warn(
                f"{' and '.join(type(c).__name__ for c in masks)} all mask the gradients: an "
                "entry moves only where every mask keeps it, and each mask's own rescaling "
                "(ChildTuning-F's 1/reserve_p) applies on top of the others"
            )

    def _check_exclude_removes_something(self, model: nn.Module) -> None:
        """Each ``exclude`` pattern matches a parameter this callback would select without it:
        one that matches only others (``bias``, where DPS selects weight matrices) was accepted
        and removed nothing."""
        excluded, self.exclude = self.exclude, None
        try:
            candidates = [n for n, _ in self.select(model)]
        finally:
            self.exclude = excluded
        for pattern in excluded or []:
            if candidates and not any(re.search(pattern, n) for n in candidates):
                name = type(self).__name__
                raise ConfigError(
                    f"{name}: exclude pattern {pattern!r} matches none of the parameters {name} "
                    f"selects (such as {candidates[0]!r}), so it removes nothing",
                    argument="exclude",
                )

    def masked_fraction_kept(self, masks: dict[str, Tensor]) -> float:
        kept = sum(int(m.sum()) for m in masks.values())
        return kept / max(1, sum(m.numel() for m in masks.values()))

    @torch.no_grad()
    def apply_masks(
        self, optimizer: torch.optim.Optimizer, masks: dict[str, Tensor], scale: float = 1.0
    ) -> None:
        """Multiply each selected gradient by its boolean mask (and ``scale``); in frozen mode
        also zero the masked first moments and save the masked values for :meth:`_restore`."""
        params, grads, keep = [], [], []
        for name, mask in masks.items():
            param = self.params[name]
            if param.grad is None:
                continue
            params.append(param)
            grads.append(param.grad)
            keep.append(mask)
        if not grads:
            return
        torch._foreach_mul_(grads, keep)
        if scale != 1.0:
            torch._foreach_mul_(grads, scale)
        if self.mask_mode != "frozen":
            return
        if self._restore_hook is None:  # written back as the step ends, before any later hook
            self._restore_hook = optimizer.register_step_post_hook(lambda *_: self._restore())
        self._saved = []
        for param, mask in zip(params, keep):
            masked = ~mask
            state = optimizer.state.get(param, {})
            for key in FIRST_MOMENT_KEYS:
                buffer = state.get(key)
                if isinstance(buffer, Tensor) and buffer.shape == param.shape:
                    buffer.masked_fill_(masked, 0.0)
            self._saved.append((param, masked, param.detach()[masked].clone()))

    @torch.no_grad()
    def _restore(self) -> None:
        if self._restore_hook is not None:
            self._restore_hook.remove()
            self._restore_hook = None
        for param, masked, values in self._saved:
            param.detach().masked_scatter_(masked, values)
        self._saved = []

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        if self._saved:
            self._restore()

    @staticmethod
    def to_device(tensors: dict[str, Tensor] | None, params: dict[str, nn.Parameter]) -> Any:
        if tensors is None:
            return None
        missing = sorted(set(tensors) - set(params))
        if missing:
            raise KeyError(f"saved masks name parameters the model lacks: {missing[:5]}")
        return {n: t.to(params[n].device) for n, t in tensors.items()}
