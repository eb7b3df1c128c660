"""lsframe's optimizers inside other training loops.

* :mod:`lsframe.integrations.hf`: Hugging Face ``transformers.Trainer``
  (:class:`~lsframe.integrations.hf.LineSearchTrainer`, or
  :class:`~lsframe.integrations.hf.LineSearchTrainerMixin` for another ``Trainer`` subclass).

A plain PyTorch loop needs no integration: :func:`lsframe.optim.make_closure` builds the closure.
Each integration is imported on its own (``import lsframe.integrations.hf``), so importing this
package pulls in no other library. This layer sits above :mod:`lsframe.optim` and never imports
Lightning.
"""

__all__: list[str] = []
