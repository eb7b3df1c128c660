"""A stop that a callback requests between the micro-batches of an optimizer step waits for the
step (:class:`HeldStop`)."""

from __future__ import annotations

from typing import Any


class HeldStop:
    """Lightning ends a fit after any batch at whose end, or at whose validation's end,
    ``trainer.should_stop`` was set (``EarlyStopping``, the Trainer's ``max_time``). Between two
    micro-batches of one step that drops the micro-batches trained so far, and every checkpoint
    written then (``last.ckpt`` at the fit's end, a ``trainer.save_checkpoint`` after ``fit``
    returned) holds the loader past them: a resume never trained them, and each step after it
    paired other batches. So a stop requested there is held until the step's last micro-batch
    has been trained, and requested again at that batch's end, as lsframe's ``Preemption``
    waits for the step on a signal.
    """

    def __init__(self) -> None:
        self.held = False

    def update(self, trainer: Any, pending: bool) -> None:
        """At a training batch's end or a validation's end during fit: ``pending``, whether
        micro-batches wait for their step."""
        if pending and trainer.should_stop:
            trainer.should_stop, self.held = False, True
        elif not pending and self.held:
            trainer.should_stop, self.held = True, False
