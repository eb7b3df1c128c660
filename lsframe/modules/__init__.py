"""LightningModules: the closure-driven base and the task modules built on it."""

from lsframe.modules.base import ClosureModule, default_optimizer
from lsframe.modules.classification import SequenceClassificationModule
from lsframe.modules.language_model import CausalLMModule
from lsframe.modules.vision import ImageClassificationModule

__all__ = [
    "CausalLMModule",
    "ClosureModule",
    "ImageClassificationModule",
    "SequenceClassificationModule",
    "default_optimizer",
]
