"""LightningModules: the closure-driven base and the task modules built on it."""

from lsframe.modules.base import ClosureModule, default_optimizer
from lsframe.modules.classification import SequenceClassificationModule

__all__ = ["ClosureModule", "SequenceClassificationModule", "default_optimizer"]
