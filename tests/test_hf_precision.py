"""lsframe.integrations._hf_precision: a search's full-precision evaluation under HF Trainer's
``bf16=True`` bypasses accelerate's autocast patch of the model's forward, at any depth of
wrapping and however often the model was prepared, and puts the patch back."""

from __future__ import annotations

import types
from types import SimpleNamespace

import pytest
import torch
from torch import nn

pytest.importorskip("accelerate")

from accelerate.utils import convert_outputs_to_fp32  # noqa: E402

from lsframe.integrations._hf_precision import original_forward_when_full_precision  # noqa: E402


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


def trainer(mixed_precision: str = "bf16") -> SimpleNamespace:
    accelerator = SimpleNamespace(native_amp=True, mixed_precision=mixed_precision)
    return SimpleNamespace(
        accelerator=accelerator, args=SimpleNamespace(device=torch.device("cpu"))
    )


def evaluate(outer: nn.Module, bf16_trainer: SimpleNamespace) -> None:
    """A search's evaluation: autocast off inside the step's bf16 autocast."""
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.autocast("cpu", enabled=False):
        with original_forward_when_full_precision([outer], bf16_trainer):
            outer(torch.randn(2, 4))


@pytest.mark.parametrize("attribute", ["module", "_orig_mod"])
def test_a_wrapped_model_prepared_twice_evaluates_in_fp32_and_gets_its_patch_back(attribute):
    model = Tiny()
    patch_like_accelerate(model)
    patch_like_accelerate(model)  # an inner model accelerate prepared again
    patched = vars(model)["forward"]
    outer = Wrapper(model, attribute)

    outer(torch.randn(2, 4))  # the patched forward: bf16 inside, whatever surrounds it
    evaluate(outer, trainer())
    outer(torch.randn(2, 4))
    assert model.seen == [torch.bfloat16, torch.float32, torch.bfloat16]
    assert vars(model)["forward"] is patched


def test_the_patch_comes_back_when_the_evaluation_raises():
    model = Tiny()
    patch_like_accelerate(model)
    patched = vars(model)["forward"]
    with pytest.raises(RuntimeError, match="trial"):
        with torch.autocast("cpu", enabled=False):
            with original_forward_when_full_precision([model], trainer()):
                raise RuntimeError("trial failed")
    assert vars(model)["forward"] is patched


@pytest.mark.parametrize("mixed_precision", ["fp8", "no"])
def test_without_trainers_bf16_autocast_nothing_is_swapped(mixed_precision):
    """Only under bf16=True does the step run in the autocast that makes the search evaluate
    in fp32; otherwise its loss at x and its trials must see the same forward as Trainer's."""
    model = Tiny()
    patch_like_accelerate(model)
    evaluate(model, trainer(mixed_precision))
    assert model.seen == [torch.bfloat16]
