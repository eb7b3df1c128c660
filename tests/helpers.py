"""Small models, data and probe optimizers shared by the tests (synthetic: maths only)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lsframe import optim
from lsframe.modules import ClosureModule
from lsframe.optim import OptimizerInfo


def tiny_bert(
    seed: int = 0,
    *,
    vocab: int = 30,
    hidden: int = 16,
    layers: int = 1,
    positions: int = 16,
    dropout: float = 0.1,
    head: bool = True,
) -> nn.Module:
    """A random-init BERT (2 attention heads, intermediate 2 × hidden; with ``head`` a two-label
    ``BertForSequenceClassification`` in train mode, else a bare ``BertModel``), seeded."""
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=positions,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        num_labels=2,
    )
    return BertForSequenceClassification(config).train() if head else BertModel(config)


def regression_data(n: int = 32, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=generator)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(n, generator=generator)
    return TensorDataset(x, y)


def loader(n: int = 32, batch_size: int = 4) -> DataLoader:
    return DataLoader(regression_data(n), batch_size=batch_size, shuffle=False)


def mlp(dropout: float = 0.0, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Dropout(dropout), nn.Linear(16, 1))


class TinyRegression(ClosureModule):
    """A ClosureModule on an MLP with a mean-squared-error loss."""

    def __init__(self, model: nn.Module | None = None, **kwargs: Any) -> None:
        # one group in model order, so recorded gradients line up with model.parameters()
        kwargs.setdefault("param_grouping", "single")
        super().__init__(model=model if model is not None else mlp(), **kwargs)

    def compute_loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        return F.mse_loss(self.model(x).squeeze(-1), y)


class ValidatedRegression(TinyRegression):
    """A TinyRegression whose validation logs ``val/loss``."""

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val/loss", F.mse_loss(self.model(x).squeeze(-1), y))


def registry_module(name: str, model: nn.Module | None = None, **kwargs: Any) -> TinyRegression:
    """A TinyRegression driven by the registered optimizer ``name``, at its record's ``test_lr``
    (if any) and grouped as the record asks (one group per part, else a single group)."""
    record = optim.info(name)
    lr = {} if record.test_lr is None else {"lr": record.test_lr}
    kwargs.setdefault("param_grouping", "parts" if record.param_grouping == "parts" else "single")
    return TinyRegression(model=model, optimizer=partial(optim.create, name, **lr), **kwargs)


def trainer(**kwargs: Any) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


class ProbeOptimizer(torch.optim.Optimizer):
    """SGD that also runs ``trials`` forward-only evaluations per step and records everything.

    Registered as ``probe`` (forward trials) when first built, not at import: tests parametrized
    by ``optim.names()`` at collection must not see it.
    """

    def __init__(self, params: Any, lr: float = 0.1, trials: int = 2) -> None:
        optim.register(PROBE)
        super().__init__(params, {"lr": lr})
        self.trials = trials
        self.records: list[dict[str, Any]] = []

    def _grads(self) -> list[Tensor | None]:
        return [
            None if p.grad is None else p.grad.clone()
            for group in self.param_groups
            for p in group["params"]
        ]

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor], forward: Callable[[], Tensor] | None = None):
        record: dict[str, Any] = {"trial_losses": [], "trial_requires_grad": []}
        with torch.enable_grad():
            loss = closure()
        record["loss"] = loss.item()
        record["grads"] = self._grads()
        for _ in range(self.trials):
            trial = forward()
            record["trial_losses"].append(trial.item())
            record["trial_requires_grad"].append(trial.requires_grad or trial.grad_fn is not None)
        record["grads_after_trials"] = self._grads()
        self.records.append(record)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"])
        return loss


PROBE = OptimizerInfo("probe", ProbeOptimizer, forward_trials=True)


def small_sequence_config(name: str, glue_dir: Any) -> dict:
    """``configs/sequential/<name>.yaml`` on 32-example slices, 1 epoch of 4 batches per stage."""
    from pathlib import Path

    import yaml

    path = Path(__file__).resolve().parents[1] / "configs" / "sequential" / f"{name}.yaml"
    config = yaml.safe_load(path.read_text())
    for stage in config["stages"]:
        stage["data"]["init_args"].update(
            data_dir=str(glue_dir), train_subsample=32, val_limit=32, max_length=32
        )
    config["trainer"].update(max_epochs=1, limit_train_batches=4)
    return config


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now (for a test's process group)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def leave_process_group() -> None:
    """End a test worker's process group as every rank finishes: all ranks meet, then tear it
    down. Left to interpreter shutdown, or torn down by one rank while the other still writes
    its results, gloo's threads now and then abort a finished rank with SIGABRT ("terminate
    called without an active exception"): a flaky test, not a failed claim."""
    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()


def two_process_results(worker: Path, out: Path) -> dict:
    """Run ``worker out`` under ``torch.distributed.run`` on 2 CPU processes and read the JSON
    results it wrote to ``out``."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_port", str(free_port()), str(worker), str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(out.read_text())


class UnreadableSideFile(pl.Callback):
    """A user's callback that reads a file at a step and finds it malformed: it raises an
    lsframe DataError in lsframe's ``Owner: ...`` form, naming its argument."""

    def __init__(self, path: str, at_step: int = 3) -> None:
        self.path, self.at_step = path, at_step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.at_step:
            from lsframe.errors import DataError

            raise DataError(f"UnreadableSideFile: {self.path} does not parse", argument="path")


class NoArgumentsLogger(pl.loggers.Logger):
    """A logger configured from elsewhere (a service client): no arguments, no folders."""

    name, version = "no-arguments", "0"

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass


def tiny_bert_dir(path: Path, hidden: int = 16) -> Path:
    """A model directory as ``from_pretrained`` reads it: a random-init one-layer BERT encoder
    (64 tokens, ``hidden`` wide) and a word-piece tokenizer of its own (letters, offline)."""
    from transformers import BertTokenizer

    tiny_bert(vocab=64, hidden=hidden, positions=32, head=False).save_pretrained(path)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *(f"##{c}" for c in letters)]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(vocab_file=str(path / "vocab.txt")).save_pretrained(path)
    return path


def lightning_checkpoint(
    module: pl.LightningModule, path: Path, data: dict | None = None, **init_args: Any
) -> Path:
    """``module``'s weights saved as ``lsframe fit`` saves them for ``load_module``: its
    ``state_dict``, with ``init_args`` under its class path for LightningCLI's instantiator
    (and ``data``, the DataModule's init arguments, where given)."""
    cls = type(module)
    hparams = {
        "_class_path": f"{cls.__module__}.{cls.__qualname__}",
        "_instantiator": "lightning.pytorch.cli.instantiate_module",
        **init_args,
    }
    checkpoint = {
        "state_dict": module.state_dict(),
        "pytorch-lightning_version": pl.__version__,
        "hyper_parameters": hparams,
    }
    if data is not None:
        checkpoint["datamodule_hyper_parameters"] = data
    torch.save(checkpoint, path)
    return path
