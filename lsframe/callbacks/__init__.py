"""Lightning callbacks, one concern each. Those that act inside the optimizer step subclass
:class:`ClosureCallback` (hooks ``closure_loss`` and ``on_gradients_ready``), which a module
declaring :class:`ClosureHooks` (:class:`lsframe.modules.ClosureModule`) drives.

Gradient masks share :mod:`lsframe.callbacks.masking` (:func:`top_fraction_mask`,
:func:`global_top_fraction_masks`). :class:`HParamsMetrics` writes a fit's final and best
validation metrics to TensorBoard's HPARAMS tab; :class:`PredictionWriter` writes what
``predict`` computes, one JSON line per example.
"""

from lsframe.callbacks.base import ClosureCallback, ClosureHooks
from lsframe.callbacks.child_tuning import ChildTuningD
from lsframe.callbacks.dps import DPS
from lsframe.callbacks.dps_mix import DPSMix
from lsframe.callbacks.ewc import EWC
from lsframe.callbacks.hparams import HParamsMetrics
from lsframe.callbacks.masking import global_top_fraction_masks, top_fraction_mask
from lsframe.callbacks.predictions import PredictionWriter
from lsframe.callbacks.valley import ValleyExploration

__all__ = [
    "DPS",
    "DPSMix",
    "EWC",
    "HParamsMetrics",
    "PredictionWriter",
    "ChildTuningD",
    "ClosureCallback",
    "ClosureHooks",
    "ValleyExploration",
    "global_top_fraction_masks",
    "top_fraction_mask",
]
