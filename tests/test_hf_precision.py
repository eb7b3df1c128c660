"""A search's full-precision evaluation (lsframe.optim._precision, which HF Trainer's closure and
lsframe's own use) bypasses accelerate's autocast patch of the model's forward, at any depth of
wrapping and however often the model was prepared, and puts the patch back."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

pytest.importorskip("accelerate")

from accelerate.utils import convert_outputs_to_fp32  # noqa: E402

from lsframe.optim._precision import full_precision, full_precision_forwards  # noqa: E402


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.seen: list[torch.dtype] = []
        self.linear.register_forward_hook(lambda _m, _i, out: self.seen.append(out.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class Wrapper(nn.Module):
    """DDP keeps the model as ``.module``, torch.compile as ``._orig_mod``."""

    def __init__(self, inner: nn.Module, attribute: str) -> None:
        super().__init__()
        setattr(self, attribute, inner)
        self.attribute = attribute

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, self.attribute)(x)


def patch_like_accelerate(model: nn.Module) -> None:
    """What ``Accelerator.prepare_model`` does to a model under bf16 (accelerate 1.x)."""
    model._original_forward = model.forward
    autocast = torch.autocast("cpu", dtype=torch.bfloat16)
    model.forward = types.MethodType(autocast(model.forward.__func__), model)
    model.forward = types.MethodType(convert_outputs_to_fp32(model.forward.__func__), model)


def trial(outer: nn.Module) -> torch.Tensor:
    """What a closure's forward-only evaluation does."""
    with full_precision_forwards([outer]):
        return outer(torch.randn(2, 4))


def evaluate(outer: nn.Module) -> None:
    """A search's full-precision evaluation inside the step's bf16 autocast."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full_precision(lambda: trial(outer), "cpu")()


@pytest.mark.parametrize("attribute", ["module", "_orig_mod"])
def test_a_wrapped_model_prepared_twice_evaluates_in_fp32_and_gets_its_patch_back(attribute):
    model = Tiny()
    patch_like_accelerate(model)
    patch_like_accelerate(model)  # an inner model accelerate prepared again
    patched = vars(model)["forward"]
    outer = Wrapper(model, attribute)

    outer(torch.randn(2, 4))  # the patched forward: bf16 inside, whatever surrounds it
    evaluate(outer)
    outer(torch.randn(2, 4))
    assert model.seen == [torch.bfloat16, torch.float32, torch.bfloat16]
    assert vars(model)["forward"] is patched


def test_the_patch_comes_back_when_the_evaluation_raises():
    model = Tiny()
    patch_like_accelerate(model)
    patched = vars(model)["forward"]

    def failing() -> None:
        with full_precision_forwards([model]):
            raise RuntimeError("trial failed")

    with pytest.raises(RuntimeError, match="trial"):
        full_precision(failing, "cpu")()
    assert vars(model)["forward"] is patched


def test_outside_a_full_precision_evaluation_nothing_is_swapped():
    """Only bf16 autocast around the step (Trainer's under bf16=True) makes the search evaluate
    in fp32; otherwise its loss at x and its trials must see the same forward as Trainer's."""
    model = Tiny()
    patch_like_accelerate(model)
    with torch.autocast("cpu", enabled=False):
        trial(model)
    assert model.seen == [torch.bfloat16]
