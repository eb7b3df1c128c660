"""Elastic Weight Consolidation (Kirkpatrick et al., PNAS 2017) and online EWC (Schwarz et al.,
ICML 2018) as a callback: the baseline of P3's forgetting experiments."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import move_data_to_device
from torch import Tensor, nn

from lsframe.callbacks.base import ClosureCallback
from lsframe.callbacks.fisher import squared_gradient_mean
from lsframe.errors import ConfigError, MissingFileError
from lsframe.parts import check_patterns_match
from lsframe.validation import (
    check_choice,
    check_int_at_least,
    check_interval,
    check_non_negative,
    check_patterns,
)


class EWC(ClosureCallback):
    """Penalise moving the weights that mattered for earlier tasks.

    At the end of every ``fit`` (a stage of a task sequence) the callback *consolidates*: it
    estimates the diagonal empirical Fisher of the task just trained, ``F = (1/B) Σ_b g_b²`` over
    ``B`` training batches (``g_b`` the mean-loss gradient of batch ``b``, the convention of
    Avalanche's ``EWCPlugin``), and keeps the parameters as the anchor ``θ*``. In later fits every
    closure evaluation (line-search trials included) adds ::

        separate:  (λ/2) Σ_t Σ_i F_t,i (θ_i − θ*_t,i)²     one term per past task
        online:    (λ/2) Σ_i F_i (θ_i − θ*_i)²,  F ← γ F + F_new,  θ* = latest anchor

    Avalanche writes the penalty without the ½: ``EWC(ewc_lambda=2λ)`` here equals
    ``EWCPlugin(ewc_lambda=λ)``. The Fisher pass runs the model in evaluation mode (no dropout, as
    Avalanche), outside autocast and without a gradient scaler, with the random state restored
    afterwards; under DDP the Fisher is averaged across ranks. Fisher and anchors are in the
    callback's ``state_dict``, so a run resumed between stages keeps them; a fit resumed from a
    checkpoint of its last step (written before the end of training consolidates) consolidates
    at the fit's end. Logged: ``ewc/penalty``, at the point where the step's gradient is taken
    (as ``train/loss``; not at a line search's trials, which may be rejected).

    The scale of λ depends on the batch size of the Fisher pass, the training loader's batch
    (the module's micro-batch: ``accumulate_grad_batches`` does not enlarge it): the squared
    *batch-mean* gradient is about ``Var(g)/B + (E g)²``, so once a task is fit (``E g ≈ 0``)
    it is roughly ``B`` times smaller than a per-example Fisher, and a task the model barely
    learned can give a Fisher too small for λ in BERTcL's range (100–10,000) to change any
    prediction. Check ``ewc/penalty`` against the task loss when choosing λ.

    ``source="mlm"`` is the BERTcL baseline (λ = 1000): once, when the first fit starts, the Fisher
    of a masked-language-model loss (15 % of tokens masked, transformers'
    ``DataCollatorForLanguageModeling``) on ``mlm_texts`` is estimated with the pretrained
    checkpoint ``mlm_model`` (it needs an MLM head, e.g. ``bert-base-uncased``), and the anchor is
    its pretrained weights; parameters are matched by name (``bert.encoder...`` in both), the
    task head is left out, and later fits add no further terms. :meth:`consolidate` takes any
    other Fisher and anchor.

    Args:
        ewc_lambda: λ. Default: 1000 (BERTcL's baseline).
        mode: ``"separate"`` or ``"online"``. Default: "separate".
        decay: γ of the online mode. Default: 1.0.
        fisher_batches: Training batches for the Fisher (None: the whole train loader).
        include: Regular expressions selecting the penalised parameters (default: every trainable
            parameter).
        exclude: Regular expressions removing parameters (e.g. ``["classifier"]`` when each task
            keeps its own head; the sequential runner adds the head itself).
        source: ``"task"`` (the task loss after each fit) or ``"mlm"`` (see above).
        mlm_model: Checkpoint with an MLM head (``source="mlm"``).
        mlm_texts: Text file for the MLM Fisher, one document per non-empty line.
        mlm_max_length: Token limit per MLM document. Default: 128.
    """

    def __init__(
        self,
        ewc_lambda: float = 1000.0,
        mode: Literal["separate", "online"] = "separate",
        decay: float = 1.0,
        fisher_batches: int | None = None,
        include: list[str] | None = None,
        exclude: list[str] | None = None,
        source: Literal["task", "mlm"] = "task",
        mlm_model: str | None = None,
        mlm_texts: str | None = None,
        mlm_max_length: int = 128,
    ) -> None:
        check_choice("source", source, ("task", "mlm"))
        if source == "mlm" and (mlm_model is None or mlm_texts is None):
            raise ConfigError(
                "source='mlm' needs mlm_model (a checkpoint with an MLM head) and mlm_texts",
                argument="mlm_model" if mlm_model is None else "mlm_texts",
            )
        if mlm_texts is not None and not Path(mlm_texts).is_file():
            raise MissingFileError(f"{mlm_texts} is not a file", argument="mlm_texts")
        check_non_negative(ewc_lambda=ewc_lambda)
        check_choice("mode", mode, ("separate", "online"))
        check_interval(0.0, 1.0, False, False, decay=decay)
        check_int_at_least(1, allow_none=True, fisher_batches=fisher_batches)
        check_int_at_least(1, mlm_max_length=mlm_max_length)
        check_patterns(include=include, exclude=exclude)
        self.ewc_lambda = ewc_lambda
        self.mode = mode
        self.decay = decay
        self.fisher_batches = fisher_batches
        self.include = list(include) if include else None
        self.exclude = list(exclude) if exclude else []
        self.source, self.mlm_model, self.mlm_texts = source, mlm_model, mlm_texts
        self.mlm_max_length = mlm_max_length
        self.tasks: list[dict[str, dict[str, Tensor]]] = []  # [{"fisher": .., "anchor": ..}]
        self.params: dict[str, nn.Parameter] = {}
        # whether the task of the fit under way is in ``tasks`` already: a checkpoint written at
        # the fit's last step, before the end of training consolidates, has False (None: a
        # state saved before this flag existed)
        self._consolidated: bool | None = False

    #: Where lsframe kept this callback's state in checkpoints before 2026-12-06 (its class
    #: name); such a checkpoint resumes into the present key (``migrate_state_keys``).
    legacy_state_keys = ("EWC",)

    @property
    def state_key(self) -> str:
        # distinct keys let several instances (BERTcL's MLM baseline beside a task EWC, or two
        # sets of parameters) share a checkpoint
        return self._generate_state_key(
            source=self.source, mode=self.mode, include=self.include, exclude=self.exclude
        )

    def selected(self, model: nn.Module) -> dict[str, nn.Parameter]:
        def wanted(name: str) -> bool:
            if self.include and not any(re.search(p, name) for p in self.include):
                return False
            return not any(re.search(p, name) for p in self.exclude)

        return {n: p for n, p in model.named_parameters() if p.requires_grad and wanted(n)}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        self._consolidated = False  # a new fit; a resume restores the saved flag
        model = getattr(pl_module, "model", pl_module)
        check_patterns_match(model, "EWC", include=self.include, exclude=self.exclude)
        self.params = self.selected(model)
        if not self.params:
            raise ValueError(
                f"EWC selected no parameter (include={self.include}, exclude={self.exclude})"
            )

    # ------------------------------------------------------------------------------ penalty
    def closure_loss(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Tensor | None:
        if not self.tasks or self.ewc_lambda == 0:
            return None
        total = torch.zeros((), device=pl_module.device)
        for task in self.tasks:
            self._to_device(task)
            for name, param in self.params.items():
                if name in task["fisher"]:
                    diff = param - task["anchor"][name]
                    total = total + (task["fisher"][name] * diff * diff).sum()
        penalty = 0.5 * self.ewc_lambda * total
        # logged where the step's gradient is taken, as train/loss (a trial may be rejected)
        if trainer is not None and trainer.training and torch.is_grad_enabled():
            pl_module.log("ewc/penalty", penalty.detach())
        return penalty

    def _to_device(self, task: dict[str, dict[str, Tensor]]) -> None:
        for kind in ("fisher", "anchor"):
            for name, tensor in task[kind].items():
                param = self.params.get(name)
                if param is not None and tensor.device != param.device:
                    task[kind][name] = tensor.to(param.device)

    # ------------------------------------------------------------------------ consolidation
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.source == "mlm" and not self.tasks:
            self.consolidate(*self.mlm_fisher(trainer, pl_module))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Consolidate the task just trained (on the training's device, ranks together)."""
        if self.source != "mlm" and not self._consolidated:
            self._consolidate_now(trainer, pl_module)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Consolidate the task of a fit resumed from a checkpoint of its last step, written
        before the end of training consolidated it: Lightning skips the training loop, and its
        hooks, for such a fit. Lightning has moved the module to the CPU by now (teardown), so
        it goes back to the training's device for the pass (a DDP reduce needs it there)."""
        if self.source == "mlm" or trainer.ckpt_path is None or self._consolidated is not False:
            return  # None: a state saved before the flag existed, which skipped this case
        device = pl_module.device
        pl_module.to(trainer.strategy.root_device)
        try:
            self._consolidate_now(trainer, pl_module)
        finally:
            pl_module.to(device)

    def _consolidate_now(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        fisher = self.estimate_fisher(trainer, pl_module)
        anchor = {n: p.detach().clone() for n, p in self.params.items()}
        self.consolidate(fisher, anchor)
        self._consolidated = True

    def consolidate(self, fisher: dict[str, Tensor], anchor: dict[str, Tensor]) -> None:
        """Add a task (separate) or fold it into the running one (online)."""
        if set(fisher) != set(anchor):
            raise ValueError("fisher and anchor must name the same parameters")
        if self.mode == "online" and self.tasks:
            old = self.tasks[0]["fisher"]
            fisher = {
                n: self.decay * old[n].to(f.device) + f if n in old else f
                for n, f in fisher.items()
            }
            self.tasks = []
        self.tasks.append({"fisher": fisher, "anchor": anchor})

    def estimate_fisher(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loader: Any = None
    ) -> dict[str, Tensor]:
        """Mean over training batches of each selected parameter's squared batch gradient (the
        module's task loss only: no callback terms, no autocast, no scaler; evaluation mode)."""
        return squared_gradient_mean(
            trainer, pl_module, self.params, loader, self.fisher_batches, owner="EWC"
        )

    def mlm_fisher(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """Fisher of the MLM loss of ``mlm_model`` on ``mlm_texts`` and its pretrained weights,
        for the selected parameters whose names the MLM model shares."""
        from transformers import AutoModelForMaskedLM, DataCollatorForLanguageModeling

        from lsframe.hub import load_tokenizer, resolve_pretrained

        device = pl_module.device
        tokenizer = load_tokenizer(self.mlm_model)
        mlm, loading = AutoModelForMaskedLM.from_pretrained(
            resolve_pretrained(self.mlm_model), output_loading_info=True
        )
        missing = sorted(loading.get("missing_keys") or [])
        if missing:  # transformers initialised them at random: the Fisher would be of noise
            raise ConfigError(
                f"{type(self).__name__}: mlm_model {self.mlm_model} lacks weights of its "
                f"masked-LM model ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}; "
                f"{len(missing)} in all), which would start at random; give a checkpoint with "
                "an MLM head (e.g. bert-base-uncased)",
                argument="mlm_model",
            )
        mlm = mlm.to(device)
        shared = {n: p for n, p in mlm.named_parameters() if n in self.params}
        if not shared:
            raise ValueError(
                f"{type(self).__name__}: {self.mlm_model} shares no parameter name with the task "
                f"model (e.g. {next(iter(self.params))!r})"
            )
        lines = [x.strip() for x in Path(self.mlm_texts).read_text().splitlines() if x.strip()]
        collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
        fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in shared.items()}
        rng = torch.get_rng_state()
        mlm.eval()
        count = 0
        for start in range(0, len(lines), 16):
            if self.fisher_batches is not None and count >= self.fisher_batches:
                break
            encoded = tokenizer(
                lines[start : start + 16], truncation=True, max_length=self.mlm_max_length
            )
            features = [
                {k: v[i] for k, v in encoded.items()} for i in range(len(encoded["input_ids"]))
            ]
            batch = move_data_to_device(collator(features), device)
            mlm.zero_grad(set_to_none=True)
            with torch.enable_grad(), torch.autocast(device.type, enabled=False):
                mlm(**batch).loss.float().backward()
            for name, param in shared.items():
                if param.grad is not None:
                    fisher[name].add_(param.grad.detach().float().square())
            count += 1
        torch.set_rng_state(rng)
        if count == 0:
            raise ValueError(f"mlm_texts: {self.mlm_texts} has no text")
        fisher = {n: f / count for n, f in fisher.items()}
        if trainer.world_size > 1:  # masks are random: make every rank use the same Fisher
            fisher = {n: trainer.strategy.reduce(f, reduce_op="mean") for n, f in fisher.items()}
        anchor = {n: p.detach().clone() for n, p in shared.items()}
        del mlm
        return fisher, anchor

    # --------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "consolidated": self._consolidated,
            "tasks": [
                {k: {n: t.cpu() for n, t in task[k].items()} for k in ("fisher", "anchor")}
                for task in self.tasks
            ],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict["mode"] != self.mode:
            raise ValueError(
                f"EWC checkpoint was saved in mode {state_dict['mode']!r}, this callback is "
                f"{self.mode!r}"
            )
        self.tasks = [
            {k: dict(task[k]) for k in ("fisher", "anchor")} for task in state_dict["tasks"]
        ]
        self._consolidated = state_dict.get("consolidated")
