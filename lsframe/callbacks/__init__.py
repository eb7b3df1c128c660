"""Lightning callbacks, one concern each; they act through the hooks of
:class:`lsframe.modules.ClosureModule` (``on_gradients_ready``, ``closure_loss``)."""

from lsframe.callbacks.dps import DPS, ChildTuningD
from lsframe.callbacks.ewc import EWC
from lsframe.callbacks.valley import ValleyExploration

__all__ = ["DPS", "EWC", "ChildTuningD", "ValleyExploration"]
