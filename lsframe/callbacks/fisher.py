"""The diagonal-Fisher pass several callbacks share (EWC, ChildTuning-D)."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import move_data_to_device
from torch import Tensor, nn

from lsframe.optim.closure import check_loss


def squared_gradient_mean(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    params: dict[str, nn.Parameter],
    loader: Iterable[Any] | None = None,
    num_batches: int | None = None,
    train_mode: bool = False,
    max_grad_norm: float | None = None,
    owner: str = "Fisher",
) -> dict[str, Tensor]:
    """Diagonal empirical Fisher: the mean over batches of each parameter's squared batch
    gradient of the module's task loss (``compute_loss``: no callback terms).

    Runs outside autocast and without a gradient scaler, in training mode (dropout on) or
    evaluation mode, with each gradient first clipped to norm ``max_grad_norm`` if given. The
    random state and the module's mode are restored afterwards, and a loader that records its
    place in the epoch (:class:`~lsframe.data.resumable.ResumableDataLoader`, through its
    ``uncounted``) keeps it, so training and its checkpoints continue as if the pass had not
    happened; under DDP the result is averaged across ranks.
    """
    loader = loader if loader is not None else trainer.train_dataloader
    if loader is None:
        raise RuntimeError(f"{owner}: no train dataloader to estimate the Fisher on")
    fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    was_training = pl_module.training
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    pl_module.train(train_mode)
    count = 0
    device = pl_module.device
    # the train loader's own place in the epoch must not count the pass's batches as trained
    keep_place = getattr(loader, "uncounted", nullcontext)
    try:
        with keep_place():
            for batch in loader:
                if num_batches is not None and count >= num_batches:
                    break
                batch = move_data_to_device(batch, device)
                pl_module.zero_grad(set_to_none=True)
                with torch.enable_grad(), torch.autocast(device.type, enabled=False):
                    loss = pl_module.compute_loss(batch)
                    check_loss(loss, f"{type(pl_module).__name__}.compute_loss", backward=True)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(
                            f"{owner}: non-finite loss on Fisher batch {count}"
                        )
                    loss.float().backward()
                with torch.no_grad():
                    for name, param in params.items():
                        if param.grad is None:
                            continue
                        if max_grad_norm is not None:
                            torch.nn.utils.clip_grad_norm_(param, max_grad_norm)
                        fisher[name].add_(param.grad.float().square())
                count += 1
    finally:
        pl_module.zero_grad(set_to_none=True)
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        pl_module.train(was_training)
    if count == 0:
        raise RuntimeError(f"{owner}: the train dataloader yielded no batch")
    for name in fisher:
        fisher[name].div_(count)
        if trainer.world_size > 1:
            fisher[name] = trainer.strategy.reduce(fisher[name], reduce_op="mean")
    return fisher
