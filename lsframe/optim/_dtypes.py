"""Parameter dtypes an optimizer's kernels are written for, checked when a group is added."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


def check_real_parameters(params: Iterable[Tensor], owner: str) -> None:
    """Raise ValueError for a complex parameter: the kernels square gradients as ``g · g``, not
    ``g · conj(g)``, so a complex parameter would move in the wrong direction without a word.
    torch's ``view_as_real`` turns it into a real parameter of twice the size."""
    for index, p in enumerate(params):
        if p.is_complex():
            raise ValueError(
                f"{owner} does not support complex parameters (parameter {index} of the group "
                f"is {p.dtype}); optimize torch.view_as_real(p) as a real parameter instead"
            )


def check_eps_representable(eps: float, params: Iterable[Tensor], owner: str) -> None:
    """Raise ValueError when ``eps > 0`` rounds to 0 in a parameter's dtype (Adam's default 1e-8
    in float16): the preconditioner ``1 / (√v + ε)`` is then infinite wherever ``v`` underflows,
    and a line search's trial ``x − η d`` cannot be moved back to ``x``."""
    if eps <= 0:
        return
    for dtype in {p.dtype for p in params if p.is_floating_point()}:
        if torch.tensor(eps, dtype=dtype) == 0:
            smallest = torch.finfo(dtype).smallest_normal
            raise ValueError(
                f"{owner}: eps={eps:g} rounds to 0 in {dtype}, the dtype of the group's "
                f"parameters; give eps >= {smallest:g} ({dtype}'s smallest normal value) or keep "
                "the parameters in float32 and lower the precision with autocast"
            )
