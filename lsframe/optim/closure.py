"""lsframe's closure for plain PyTorch loops: ``closure(backward: bool = True) -> Tensor``.

Every lsframe optimizer takes this closure (torch optimizers call it with no argument). With
``backward=True`` it zeroes the gradients, computes the loss and back-propagates it; with
``backward=False`` it only computes the loss, under :func:`torch.no_grad`. The random state
(CPU, and the CUDA device's) is taken when the closure is built and restored before every
evaluation, so all evaluations of one step, a line search's trials included, see the same
dropout masks. :class:`lsframe.modules.ClosureModule` builds its closure on the same random state.

Example::

    for batch in loader:
        closure = make_closure(model, batch, opt)  # Hugging Face model: model(**batch).loss
        opt.step(closure)

    # any loss function of (model, batch):
    closure = make_closure(model, (x, y), opt, loss_fn=lambda m, b: F.cross_entropy(m(b[0]), b[1]))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer


class StepRandomState:
    """The random state at the start of an optimizer step, restorable before each evaluation."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        device = torch.device(device)
        self.cpu = torch.get_rng_state()
        self.device = device if device.type == "cuda" else None
        self.cuda = torch.cuda.get_rng_state(device) if self.device is not None else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.device is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


class LossClosure:
    """``closure(backward=True)`` over a zero-argument loss function, for one optimizer step.

    Args:
        loss_fn: Computes the (scalar) loss at the current parameters; called once per evaluation.
        optimizer: Its gradients are zeroed before each backward evaluation.
        device: Whose CUDA random state to restore besides the CPU's. Default: the CPU only.

    Attributes:
        evaluations: How many times the closure ran (backward and forward-only).
    """

    def __init__(
        self,
        loss_fn: Callable[[], Tensor],
        optimizer: Optimizer,
        device: torch.device | str = "cpu",
    ) -> None:
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.random_state = StepRandomState(device)
        self.evaluations = 0

    def __call__(self, backward: bool = True) -> Tensor:
        self.random_state.restore()
        self.evaluations += 1
        if not backward:
            with torch.no_grad():
                return self.loss_fn().detach()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = self.loss_fn()
            loss.backward()
        return loss.detach()

    def forward(self) -> Tensor:
        """A forward-only evaluation (what line searches take as ``step(forward=...)``)."""
        return self(backward=False)


def hf_loss(model: nn.Module, batch: Any) -> Tensor:
    """The loss a Hugging Face model computes itself: ``model(**batch).loss``."""
    return model(**batch).loss


def make_closure(
    model: nn.Module,
    batch: Any,
    optimizer: Optimizer,
    loss_fn: Callable[[nn.Module, Any], Tensor] = hf_loss,
) -> LossClosure:
    """lsframe's closure for one step of ``model`` on ``batch``.

    Args:
        model: The network; its parameters' device decides whose random state is restored.
        batch: Passed to ``loss_fn`` unchanged (move it to the device first).
        optimizer: The optimizer whose gradients each backward evaluation zeroes.
        loss_fn: ``loss_fn(model, batch) -> Tensor``. Default: ``model(**batch).loss``.
    """
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return LossClosure(lambda: loss_fn(model, batch), optimizer, device)
