"""DPS-Mix (P4): Dynamic Parameter Selection whose stage I mixes the selected weights toward the
pretrained ones in the forward (Mixout-like), as a callback.

Stage I reparametrises each selected ``nn.Linear`` for the stage: its instance ``forward`` is
replaced by one that uses the mixed weight, and deleted again when the stage ends, when the fit
ends or fails. Parameters, their names and ``state_dict`` keys never change, so checkpoints and
exports are plain Hugging Face models at every step. Stage II is DPS's gradient mask
(:class:`lsframe.callbacks.DPS`) on the plain layers.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lsframe.callbacks.dps import DPS
from lsframe.errors import ConfigError
from lsframe.optim import all_finite
from lsframe.validation import check_choice, check_int_at_least

__all__ = ["DPSMix"]


class _MixedForward:
    """A selected Linear's ``forward`` during stage I: the mixed weight inside a training step
    (module in training mode), the plain weight otherwise (evaluation, other callbacks'
    passes)."""

    def __init__(self, owner: DPSMix, name: str, module: nn.Linear) -> None:
        self.owner, self.name, self.module = owner, name, module

    def __call__(self, input: Tensor) -> Tensor:
        module = self.module
        weight = module.weight
        if module.training and self.owner.mixing:
            weight = self.owner.mixed_weight(self.name, weight)
        return F.linear(input, weight, module.bias)


class DPSMix(DPS):
    """DPS-Mix (Zhang et al., NeurIPS 2022, arXiv 2211.01642, §3): DPS whose stage I trains a
    Mixout mix of each selected weight with its pretrained value.

    Stages as :class:`DPS` (``u = int(max_steps · update_ratio)`` steps; step ``t`` is in stage
    ``ceil(t / u)``). In stage I (odd stages), at every optimizer step ``t`` each selected
    ``nn.Linear`` with weight ``W`` (``out × in``), pretrained value ``W₀`` (the weight when the
    fit started) draws a column mask ``m ∈ {0, 1}^in``, each column kept with probability
    ``1 − p``, and computes its output with

        ``W_mix = m ⊙ (W − p·W₀) / (1 − p) + (1 − m) ⊙ W₀``   (``E_m[W_mix] = W``)

    so a dropped column is the pretrained column and gets no gradient, a kept one gets
    ``∂L/∂W = ∂L/∂W_mix / (1 − p)`` (autograd's exact derivative). The mask is a function of
    ``(seed, t)`` only: every micro-batch and every closure evaluation of step ``t`` (a line
    search's trials included) sees the same mask, and a resumed run draws the same masks. Each
    selected matrix accumulates ``S += g²`` and, per column, the count ``c`` of steps it was kept.
    At the first step of stage II the ``ceil((1 − p)·n_W)`` entries with the largest
    ``S / max(c, 1)`` are kept (times ``exp(−c / u)`` when ``u ≥ count_decay_from``, as the
    reference) and, as in :class:`DPS`, the gradient is multiplied by that mask for the stage;
    the layers are plain Linear layers throughout stage II and after training.

    Logged each step: ``dps_mix/stage`` and ``dps_mix/updated_fraction`` (stage I: the fraction
    of selected entries in kept columns). ``state_dict`` holds the stage length, scores, counts,
    stage II masks and the pretrained weights (one extra copy of the selected weights, also in
    every checkpoint); a new fit (the next task of a sequence) takes its start as ``W₀``.

    Differences from the authors' code (ZhangHaojie077/DPS, ``transformers/DPSMix``):

    * Stage II: the reference keeps the Mixout forward with the fixed mask and the weights at
      the stage's start as target (masked entries pinned to that value in the forward, kept
      updates amplified by ``1/(1 − p)``); here stage II is DPS's gradient mask on the plain layer
      (``mask_mode="frozen"`` pins masked entries).
    * Gradient: the reference's backward returns ``∂L/∂W_mix ⊙ m`` without ``1/(1 − p)``
      (inherited from Mixout's code); lsframe uses the exact derivative, so a line search's
      Armijo slope is that of the loss it compares. ``mix_gradient="reference"`` multiplies the
      selected gradients by ``1 − p`` in stage I.
    * Clock and masks: the reference advances its stage clock and draws a new mask at every
      training-mode forward (so gradient accumulation or extra evaluations shift both); here both
      follow optimizer steps. The reference draws from the global generator; here from a
      generator of its own, seeded by ``(seed, step)``: the same masks on every DDP rank and
      after a resume, and the global random stream (dropout) is untouched.
    * Ranking: the reference keeps every entry tied with the threshold; here exactly
      ``ceil((1 − p)·n)``, ties by position. It scores ``(∂L/∂W_mix)² ⊙ m / 1000``, a constant
      factor from ``g²`` here, which does not change a matrix's ranking.
    * Layers: the reference swaps BERT's Q/K/V, attention output, FFN in/out, pooler and
      classifier for its own class; here :func:`lsframe.parts.weight_matrices` (the same
      matrices in BERT) keeps the class, and a selected weight that is not an ``nn.Linear``'s is
      an error. Biases are not mixed in either.
    * Setup: the reference's run script sets hidden and attention dropout to 0 for DPS runs
      (``max_steps < 2000``) and trains in fp16; this callback leaves dropout and precision to
      the run (``benchmarks/dps.py --protocol p4`` zeroes dropout as the reference, in fp32).

    Args:
        p: Drop probability of a column in stage I and fraction of each matrix's entries masked
            in stage II. Default: 0.3.
        update_ratio: Stage length as a fraction of the run's optimizer steps. Default: 0.05.
        max_steps: Optimizer steps the stage length is computed from. Default: the run's.
        include: Regular expressions replacing the default selection rule (``nn.Linear``
            weights only).
        exclude: Regular expressions removing matrices from the selection.
        mask_mode: Stage II: ``"gradient"`` or ``"frozen"`` (see :class:`DPS`).
        seed: Seed of the column masks (with the step number). Default: 0.
        mix_gradient: ``"exact"`` (autograd's derivative of the mix) or ``"reference"``
            (times ``1 − p``, as the authors' code). Default: "exact".
        count_decay_from: Stage lengths from this many steps multiply the mean score by
            ``exp(−c / u)`` (the reference: 50); None: never.

    Example (YAML)::

        trainer:
          callbacks:
            - class_path: lsframe.callbacks.DPSMix
              init_args: {p: 0.3, update_ratio: 0.05}
    """

    log_prefix = "dps_mix"

    def __init__(
        self,
        p: float = 0.3,
        update_ratio: float = 0.05,
        max_steps: int | None = None,
        include: list[str] | None = None,
        exclude: list[str] | None = None,
        mask_mode: Literal["gradient", "frozen"] = "gradient",
        seed: int = 0,
        mix_gradient: Literal["exact", "reference"] = "exact",
        count_decay_from: int | None = 50,
    ) -> None:
        super().__init__(p, update_ratio, max_steps, include, exclude, mask_mode)
        check_choice("mix_gradient", mix_gradient, ("exact", "reference"))
        check_int_at_least(1, allow_none=True, count_decay_from=count_decay_from)
        check_int_at_least(0, seed=seed)
        self.seed = seed
        self.mix_gradient = mix_gradient
        self.count_decay_from = count_decay_from
        self.pretrained: dict[str, Tensor] | None = None
        self.counts: dict[str, Tensor] | None = None
        self.column_masks: dict[str, Tensor] = {}
        self.mixing = False
        self._mask_step: int | None = None
        self._linears: dict[str, nn.Linear] = {}

    # ----------------------------------------------------------------------------- selection
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        model = getattr(pl_module, "model", pl_module)
        modules = dict(model.named_modules())
        self._linears = {}
        for name in self.params:
            owner, _, attribute = name.rpartition(".")
            module = modules.get(owner)
            if attribute != "weight" or not isinstance(module, nn.Linear):
                kind = type(module).__name__ if module is not None else "no module"
                raise ConfigError(
                    f"DPSMix mixes nn.Linear weights; {name} belongs to {kind}: narrow include "
                    "or add an exclude pattern",
                    argument="include",
                )
            if "forward" in vars(module) and not isinstance(vars(module)["forward"], _MixedForward):
                raise ConfigError(
                    f"{type(self).__name__}: {owner} already has its forward replaced (e.g. by "
                    "accelerate's device-map hooks); exclude it",
                    argument="exclude",
                )
            self._linears[name] = module

    # --------------------------------------------------------------------------- fit / steps
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        resumed = trainer.ckpt_path is not None and self.stage_length is not None
        super().on_train_start(trainer, pl_module)
        self._mask_step, self.mixing = None, False
        if resumed and self.pretrained is not None:
            self.pretrained = self.to_device(self.pretrained, self.params)
            return
        self.counts = None
        self.pretrained = {n: p.detach().clone() for n, p in self.params.items()}

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step + 1
        if self.stage(step) % 2 == 1:
            self._install()
            self._draw(step)
            self.mixing = True
        else:
            self._remove()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, *args)
        self.mixing = False
        if self.stage(trainer.global_step + 1) % 2 == 0:  # stage I is over: plain layers again
            self._remove()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._remove()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove()

    @property
    def installed(self) -> bool:
        """Whether the selected layers currently compute the mix (stage I of a running fit)."""
        return any(
            isinstance(vars(m).get("forward"), _MixedForward) for m in self._linears.values()
        )

    def _install(self) -> None:
        for name, module in self._linears.items():
            if not isinstance(vars(module).get("forward"), _MixedForward):
                module.forward = _MixedForward(self, name, module)

    def _remove(self) -> None:
        self.mixing = False
        for module in self._linears.values():
            if isinstance(vars(module).get("forward"), _MixedForward):
                del module.forward

    def _draw(self, step: int) -> None:
        """The column masks of optimizer step ``step`` (1-based), drawn once per step."""
        if self._mask_step == step:
            return
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        self.column_masks = {
            name: (torch.rand(module.in_features, generator=generator) < 1.0 - self.p).to(
                module.weight.device
            )
            for name, module in self._linears.items()
        }
        self._mask_step = step

    def mixed_weight(self, name: str, weight: Tensor) -> Tensor:
        """``m ⊙ (W − p·W₀) / (1 − p) + (1 − m) ⊙ W₀`` for the selected weight ``name``, with the
        current step's column mask ``m``."""
        target = self.pretrained[name]
        kept = (weight - self.p * target) / (1.0 - self.p)
        return torch.where(self.column_masks[name], kept, target)

    # ------------------------------------------------------------------------ gradient work
    @torch.no_grad()
    def _stage_one(self, trainer: pl.Trainer, first: bool, score: bool = True) -> float:
        self._draw(trainer.global_step + 1)
        if first or self.scores is None or self.counts is None:
            self.scores = {
                n: torch.zeros_like(p, dtype=torch.float32) for n, p in self.params.items()
            }
            self.counts = {
                n: torch.zeros(m.in_features, device=m.weight.device)
                for n, m in self._linears.items()
            }
            self.masks = None
        self.scores = self.to_device(self.scores, self.params)
        self.counts = self.to_device(self.counts, self.params)
        names = [n for n, p in self.params.items() if p.grad is not None]
        grads = [self.params[n].grad for n in names]
        if self.mix_gradient == "reference" and grads:
            torch._foreach_mul_(grads, 1.0 - self.p)
        squares = [g.float() for g in grads]
        if score and squares and all_finite(squares):  # a non-finite one would poison the ranking
            torch._foreach_addcmul_([self.scores[n] for n in names], squares, squares)
            for n in names:
                self.counts[n] += self.column_masks[n]
        kept = sum(int(self.column_masks[n].sum()) * self.params[n].shape[0] for n in self.params)
        return kept / max(1, sum(p.numel() for p in self.params.values()))

    def _selection_scores(self) -> dict[str, Tensor]:
        if self.counts is None:
            raise RuntimeError("DPSMix: scores without their counts; was the state incomplete?")
        decay = self.count_decay_from is not None and self.stage_length >= self.count_decay_from
        ranked = {}
        for name, score in self.scores.items():
            counts = self.counts[name]
            mean = score / counts.clamp(min=1.0)
            ranked[name] = mean * torch.exp(-counts / self.stage_length) if decay else mean
        return ranked

    def _select_masks(self, stage: int) -> None:
        super()._select_masks(stage)
        self.counts = None

    # --------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        def cpu(tensors: dict[str, Tensor] | None) -> dict[str, Tensor] | None:
            return None if tensors is None else {n: t.cpu() for n, t in tensors.items()}

        state = super().state_dict()
        state.update(pretrained=cpu(self.pretrained), counts=cpu(self.counts))
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.pretrained = state_dict["pretrained"]
        self.counts = state_dict["counts"]
