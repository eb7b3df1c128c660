"""A fit whose loss or parameters turn non-finite: no checkpoint holds them, the fit stops in
one line, and that line names the last checkpoint written before it."""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import helpers
import pytest
import torch
from cli_runs import fit_args, lsframe
from lightning.pytorch.callbacks import Callback

from lsframe.checkpointing import BestAndLastCheckpoint
from lsframe.cli import LSFrameCLI
from lsframe.errors import NonFiniteLossError, NonFiniteParametersError


class PoisonAfter(Callback):
    """Makes a weight NaN after step ``step``'s update, as an overflowing update would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.parameters())[0, 0] = float("nan")


@pytest.mark.parametrize("max_steps", [8, 4], ids=["a later loss", "the last step"])
def test_no_checkpoint_is_written_with_non_finite_parameters(tmp_path, max_steps):
    # validations at steps 2 and 4; the weights turn NaN after step 4's update, before its
    # validation; the NaN loss of step 5 stops the fit, or its end when step 4 is the last
    checkpoint = BestAndLastCheckpoint(
        dirpath=tmp_path, monitor="val/loss", mode="min", save_last=True, save_top_k=3
    )
    module = helpers.ValidatedRegression(optimizer=partial(torch.optim.SGD, lr=0.0))
    trainer = helpers.trainer(
        max_steps=max_steps, val_check_interval=2, check_val_every_n_epoch=None,
        enable_checkpointing=True, callbacks=[checkpoint, PoisonAfter(4)],
    )  # fmt: skip
    with pytest.raises(NonFiniteParametersError, match="at global step 4"):
        trainer.fit(module, helpers.loader(n=64), helpers.loader(n=8))
    saved = {p.name: torch.load(p, weights_only=False) for p in tmp_path.iterdir()}
    assert sorted(c["global_step"] for c in saved.values()) == [2, 2]  # last and the best
    for state in saved.values():
        assert all(torch.isfinite(t).all() for t in state["state_dict"].values())


def test_a_periodic_save_with_non_finite_parameters_stops_the_fit_instead(tmp_path):
    checkpoint = BestAndLastCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_last=True)
    module = helpers.ValidatedRegression(optimizer=partial(torch.optim.SGD, lr=0.0))
    trainer = helpers.trainer(
        max_steps=8, limit_val_batches=0, enable_checkpointing=True,
        callbacks=[checkpoint, PoisonAfter(4)],
    )  # fmt: skip
    with pytest.raises(NonFiniteParametersError, match="at global step 4"):
        trainer.fit(module, helpers.loader(n=64))
    saved = [torch.load(p, weights_only=False) for p in tmp_path.iterdir()]
    assert max(c["global_step"] for c in saved) == 3
    for state in saved:
        assert all(torch.isfinite(t).all() for t in state["state_dict"].values())


def test_the_error_line_of_non_finite_parameters_names_the_last_finite_checkpoint():
    def fit(**kwargs):
        raise NonFiniteParametersError("non-finite parameters at global step 9", "x.y")

    checkpoint = SimpleNamespace(last_model_path="runs/x/last.ckpt")
    cli = SimpleNamespace(trainer=SimpleNamespace(fit=fit), _lsframe_checkpoint=lambda: checkpoint)
    with pytest.raises(NonFiniteParametersError) as caught:
        LSFrameCLI.fit(cli)
    assert str(caught.value) == (
        "non-finite parameters at global step 9; the last checkpoint with finite parameters: "
        "runs/x/last.ckpt (x.y)"
    )


def test_a_non_finite_loss_line_names_last_only_where_it_was_saved_for_that_loss():
    error = NonFiniteLossError("non-finite training loss at global step 9", "x.y")

    def fit(**kwargs):
        raise error

    def line(saved_for):
        # a resume restores last_model_path from the checkpoint, saved for this loss or not
        # (checkpoint.save_last false in the resumed run)
        checkpoint = SimpleNamespace(last_model_path="runs/x/last.ckpt", saved_for=saved_for)
        cli = SimpleNamespace(
            trainer=SimpleNamespace(fit=fit), _lsframe_checkpoint=lambda: checkpoint
        )
        with pytest.raises(NonFiniteLossError) as caught:
            LSFrameCLI.fit(cli)
        return str(caught.value)

    assert line(None) == "non-finite training loss at global step 9 (x.y)"
    assert line(error) == (
        "non-finite training loss at global step 9; the run up to it: runs/x/last.ckpt (x.y)"
    )


class PoisonLossAt(Callback):
    """Puts a NaN in the inputs of step ``step``'s batch: its loss is not finite."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            batch[0][0, 0] = float("nan")


@pytest.mark.parametrize("fast_dev_run", [False, True], ids=["a fit", "fast_dev_run"])
def test_last_is_reported_saved_for_a_non_finite_loss_only_where_it_was_written(
    tmp_path, fast_dev_run
):
    checkpoint = BestAndLastCheckpoint(dirpath=tmp_path, save_last=True)
    module = helpers.ValidatedRegression(optimizer=partial(torch.optim.SGD, lr=0.01))
    trainer = helpers.trainer(
        max_steps=8, limit_val_batches=0, enable_checkpointing=True,
        fast_dev_run=4 if fast_dev_run else False, callbacks=[checkpoint, PoisonLossAt(2)],
    )  # fmt: skip
    with pytest.raises(NonFiniteLossError) as caught:
        trainer.fit(module, helpers.loader(n=64))
    written = (tmp_path / "last.ckpt").is_file()  # fast_dev_run writes no checkpoint
    assert written is not fast_dev_run
    assert (checkpoint.saved_for is caught.value) is written


def test_a_non_finite_loss_ends_the_fit_with_one_line_and_last_holds_the_run_up_to_it(tmp_path):
    # SGD at lr 1e38: step 1 is finite; after its update the logits overflow float32
    sgd = ["--model.init_args.optimizer", "torch.optim.SGD"]
    args = fit_args(tmp_path, *sgd, "--model.init_args.optimizer.init_args.lr", "1e38")
    done = lsframe(tmp_path, args)
    last = tmp_path / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt"
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    *_, line = done.stderr.strip().splitlines()
    assert line.startswith("lsframe fit: error: non-finite training loss ")
    assert line.endswith(
        "the parameters were not changed. Set nonfinite_loss='skip' to skip such steps instead; "
        f"the run up to it: {last} (model.init_args.nonfinite_loss)"
    )
    step = int(line.split(" at global step ")[1].split(";")[0])
    saved = torch.load(last, weights_only=False)
    assert saved["global_step"] == step
    assert all(torch.isfinite(t).all() for t in saved["state_dict"].values())
