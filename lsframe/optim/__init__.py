"""Pure-PyTorch optimizers, schedules and parameter-group helpers (no Lightning import).

Line-search family (closure contract ``closure(backward: bool = True) -> Tensor``):
:class:`SGDSLS`, :class:`AdamSLS`, :class:`PLASLS`, :class:`ALSALS`, :class:`SaLSA`, and
lsframe's learning-rate-free default :class:`SlopeTrackingAdam`.
Large batch and valley exploration: :class:`Lamb`, :class:`ALTO`, :class:`AdamE`.
The registry (:func:`create`, :func:`info`, :func:`info_for`) holds one :class:`OptimizerInfo`
per optimizer; :func:`make_closure` builds the closure for a plain loop.
"""

from lsframe.optim._functional import all_finite
from lsframe.optim._linesearch import LineSearchOptimizer
from lsframe.optim._registry import (
    OptimizerInfo,
    create,
    info,
    info_for,
    line_searches,
    names,
    register,
)
from lsframe.optim.adam_e import AdamE
from lsframe.optim.adam_sls import AdamSLS
from lsframe.optim.alsals import ALSALS
from lsframe.optim.alto import ALTO
from lsframe.optim.closure import LossClosure, StepRandomState, make_closure
from lsframe.optim.data_passes import innermost_optimizer, start_pass
from lsframe.optim.lamb import Lamb
from lsframe.optim.param_groups import apply_part_multipliers, weight_decay_groups
from lsframe.optim.plasls import PLASLS
from lsframe.optim.run_length import long_run_start, set_run_length
from lsframe.optim.salsa import SaLSA
from lsframe.optim.schedulers import WarmupCosineLR
from lsframe.optim.slope_tracking_adam import SlopeTrackingAdam
from lsframe.optim.sls import SGDSLS
from lsframe.optim.step_size_schedule import StepSizeSchedule

__all__ = [
    "ALSALS",
    "ALTO",
    "PLASLS",
    "SGDSLS",
    "AdamE",
    "AdamSLS",
    "Lamb",
    "LineSearchOptimizer",
    "LossClosure",
    "OptimizerInfo",
    "SaLSA",
    "SlopeTrackingAdam",
    "StepRandomState",
    "StepSizeSchedule",
    "WarmupCosineLR",
    "all_finite",
    "apply_part_multipliers",
    "create",
    "info",
    "info_for",
    "innermost_optimizer",
    "line_searches",
    "long_run_start",
    "make_closure",
    "names",
    "register",
    "set_run_length",
    "start_pass",
    "weight_decay_groups",
]


def __getattr__(name: str):  # lsframe's earlier constant, now the registry's answer
    if name == "LINE_SEARCH":
        import warnings

        warnings.warn(
            "lsframe.optim.LINE_SEARCH is deprecated: use lsframe.optim.line_searches()",
            DeprecationWarning,
            stacklevel=2,
        )
        return tuple(line_searches())
    raise AttributeError(f"module 'lsframe.optim' has no attribute {name!r}")
