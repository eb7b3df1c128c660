"""Kill a run at an arbitrary step, resume from its last checkpoint, land on the same parameters.

Every registered optimizer and every callback's state, with dropout and a shuffled loader, on the
CPU in deterministic mode. The crash falls mid-epoch, after the last periodic checkpoint, so the
resumed run repeats some steps, continues inside an epoch and then crosses an epoch boundary.
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

import pytest
import torch
from helpers import TinyRegression, mlp, registry_module, regression_data, trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lsframe import optim
from lsframe.callbacks import DPS, EWC, ChildTuningD, ValleyExploration
from lsframe.checkpointing import BestAndLastCheckpoint
from lsframe.data.resumable import ResumableDataLoader
from lsframe.errors import DataError
from lsframe.optim import WarmupCosineLR

STEPS, EVERY, CRASH = 17, 4, 15  # 10 batches per epoch: the last checkpoint (12) is mid-epoch


class Crash(Callback):
    def __init__(self, at: int = CRASH) -> None:
        self.at = at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at:
            raise RuntimeError("killed")


def data(seed: int = 3) -> ResumableDataLoader:
    return ResumableDataLoader(regression_data(40), batch_size=4, shuffle=True, seed=seed)


def make_module(name: str, **kwargs) -> TinyRegression:
    return registry_module(name, model=mlp(dropout=0.2), **kwargs)


def run(
    make_callbacks,
    tmp_path,
    name: str = "adamw",
    before=None,
    by_epochs: bool = False,
    crash: int = CRASH,
) -> TinyRegression:
    """The final parameters of an uninterrupted run and of a killed-and-resumed one
    (``by_epochs``: two epochs under a schedule whose length Lightning counts from them;
    ``crash``: the step the run is killed at, after the last periodic checkpoint before it)."""
    torch.manual_seed(0)
    module_kwargs = {"lr_scheduler": WarmupCosineLR} if by_epochs else {}
    make_module_here = partial(make_module, **module_kwargs)
    module = make_module_here(name)
    if before is not None:
        before(module)
    length = {"max_epochs": 2} if by_epochs else {"max_steps": STEPS}
    fit = partial(trainer, deterministic=True, **length)
    fit(callbacks=make_callbacks()).fit(module, data())

    torch.manual_seed(0)
    killed = make_module_here(name)
    if before is not None:
        before(killed)
    checkpoints = ModelCheckpoint(tmp_path, every_n_train_steps=EVERY, save_last=True)
    with pytest.raises(RuntimeError, match="killed"):
        fit(
            callbacks=[*make_callbacks(), checkpoints, Crash(crash)], enable_checkpointing=True
        ).fit(killed, data())
    torch.manual_seed(1234)  # a fresh process: whatever state the generators are in
    resumed = make_module_here(name)
    fit(callbacks=make_callbacks()).fit(resumed, data(), ckpt_path=tmp_path / "last.ckpt")
    assert resumed.trainer.global_step == module.trainer.global_step > crash
    for (key, a), b in zip(module.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), key
    return resumed


@pytest.mark.parametrize("name", optim.names())
def test_every_optimizer_resumes_the_exact_trajectory(name, tmp_path):
    run(list, tmp_path, name)


CALLBACKS = {
    "dps": lambda: [DPS(p=0.5, update_ratio=0.2, mask_mode="frozen")],  # stages of 3 steps
    "childtuning_d": lambda: [ChildTuningD(reserve_p=0.5, include=[r"weight"])],
    "childtuning_f": lambda: [ChildTuningD(reserve_p=0.5, variant="F", seed=5)],
    "valley": lambda: [ValleyExploration(alpha=-1.0, beta=0.9)],
    "all": lambda: [DPS(p=0.5, update_ratio=0.2), ValleyExploration(alpha=-1.0, beta=0.9)],
}


@pytest.mark.parametrize("kind", list(CALLBACKS))
def test_every_callback_state_resumes_the_exact_trajectory(kind, tmp_path):
    run(CALLBACKS[kind], tmp_path, "alsals")


@pytest.mark.parametrize("kind", ["childtuning_d", "childtuning_f"])
def test_a_callback_s_pass_over_the_train_loader_leaves_its_place_in_the_epoch(kind, tmp_path):
    # ChildTuning-D's Fisher pass at the fit's start iterates the train loader: a checkpoint in
    # the first epoch (step 4 of 10) recorded its batches as trained, and the resume skipped the
    # rest of the epoch
    run(CALLBACKS[kind], tmp_path, "alsals", crash=6)


def test_a_pass_inside_uncounted_keeps_a_pending_resume_and_the_count():
    loader = data()
    loader.load_state_dict({"epoch": 0, "batches": 3, "seed": 3})
    with loader.uncounted():  # before the resumed iterator: the whole epoch, from its start
        whole = [x for x, _ in loader]
    assert len(whole) == 10 and loader.state_dict()["batches"] == 3
    resumed = iter(loader)
    assert torch.equal(next(resumed)[0], whole[3])
    with loader.uncounted():  # while the resumed iterator is under way
        assert len(list(loader)) == 10
    assert torch.equal(next(resumed)[0], whole[4]) and loader.state_dict()["batches"] == 5


@pytest.mark.parametrize("name", ["adamw", "salsa", "slope_tracking_adam"])
def test_a_schedule_over_epochs_resumes_mid_epoch_the_exact_trajectory(name, tmp_path):
    # the schedule's length loads the train loader before Lightning restores its position:
    # the resumed epoch started over from its first batch
    run(list, tmp_path, name, by_epochs=True)


def test_ewc_penalty_state_resumes_the_exact_trajectory(tmp_path):
    task_a: dict = {}

    def first_task(module):  # task A, a finished fit: its Fisher and anchor carry into task B
        ewc = EWC(ewc_lambda=100.0, mode="online", decay=0.5)
        trainer(max_steps=4, callbacks=[ewc]).fit(module, data(seed=9))
        task_a.setdefault("state", ewc.state_dict())

    def callbacks():
        ewc = EWC(ewc_lambda=100.0, mode="online", decay=0.5)
        ewc.load_state_dict(task_a["state"])
        return [ewc]

    run(callbacks, tmp_path, "salsa", before=first_task)


def test_resume_at_an_epoch_boundary_starts_the_next_epoch(tmp_path):
    loader = data()
    first_epoch = [b[1] for b in loader]
    state = loader.state_dict()
    assert state["batches"] == len(loader) == 10
    again = data()
    again.load_state_dict(state)
    again.sampler.set_epoch(state["epoch"] + 1)
    second = [b[1] for b in again]
    assert len(second) == 10 and not torch.equal(torch.cat(first_epoch), torch.cat(second))


def test_a_loader_with_another_seed_batch_size_or_length_is_refused_at_its_key():
    # another batch size skipped 3 batches of 8 where 3 of 4 were trained: 12 of 40 examples
    # never trained in that epoch; the seed's refusal was a traceback
    from lsframe.errors import ConfigError

    loader = data(seed=3)
    next(iter(loader))
    state = loader.state_dict()
    other = [
        (data(seed=4), "shuffled with seed 3, this one with 4", "data.seed"),
        (
            ResumableDataLoader(regression_data(40), batch_size=8, shuffle=True, seed=3),
            "batches of 4, this one of 8",
            "data.batch_size",
        ),
        (
            ResumableDataLoader(regression_data(20), batch_size=4, shuffle=True, seed=3),
            "had 40 examples, this one has 20",
            None,
        ),
    ]
    for refusing, text, key in other:
        with pytest.raises(ConfigError, match=text) as refused:
            refusing.load_state_dict(state)
        assert refused.value.argument == key
    data(seed=3).load_state_dict(state)
    data(seed=3).load_state_dict({"epoch": 0, "batches": 1, "seed": 3})  # saved before today
    # at an epoch's end nothing of it is left: a smaller batch after running out of memory
    smaller = ResumableDataLoader(regression_data(40), batch_size=2, shuffle=True, seed=3)
    smaller.load_state_dict({**state, "batches": 10})
    assert smaller.sampler.epoch == 1 and len(list(smaller)) == 20


def test_a_ddp_place_resumed_by_other_processes_or_another_order_seed_is_refused():
    # Lightning's DistributedSampler orders the epoch from seed_everything and splits it over the
    # processes: a resume on 1 process of a 2-process place trained 44 of 96 examples twice
    from torch.utils.data import DistributedSampler

    from lsframe.errors import ConfigError

    def ddp(replicas: int, seed: int) -> ResumableDataLoader:
        dataset = regression_data(40)
        sampler = DistributedSampler(dataset, num_replicas=replicas, rank=0, seed=seed)
        return ResumableDataLoader(dataset, batch_size=4, sampler=sampler, seed=3)

    loader = ddp(2, 7)
    next(iter(loader))
    state = loader.state_dict()
    assert state["processes"] == 2 and state["order_seed"] == 7
    for refusing, text, where in (
        (data(seed=3), "split its epoch over 2 processes, this one over 1", "trainer.devices"),
        (
            ddp(2, 8),
            "order with seed 7, this one with 8 (under DDP: seed_everything)",
            "seed_everything",
        ),
    ):
        with pytest.raises(ConfigError, match=re.escape(text)) as refused:
            refusing.load_state_dict(state)
        assert refused.value.where == where
    ddp(2, 7).load_state_dict(state)
    # the epoch's end (5 batches of a process's 20 examples): the next epoch starts afresh
    data(seed=3).load_state_dict({**state, "batches": 5})
    # a sampler that does not shuffle: no seed changes its order
    unshuffled = ddp(2, 7)
    unshuffled.sampler.shuffle = False
    next(iter(unshuffled))
    in_order = unshuffled.state_dict()
    assert in_order["order_seed"] is None
    other_seed = ddp(2, 8)
    other_seed.sampler.shuffle = False
    other_seed.load_state_dict(in_order)


def test_weights_loaded_for_a_new_fit_keep_that_fit_s_random_state(tmp_path):
    module = make_module("adamw")
    run = trainer(max_steps=2)
    run.fit(module, data())
    run.save_checkpoint(tmp_path / "a.ckpt")
    loaded = TinyRegression.load_from_checkpoint(
        tmp_path / "a.ckpt", model=mlp(dropout=0.2), weights_only=False
    )
    torch.manual_seed(77)
    expected = torch.get_rng_state()
    seen = {}

    class Probe(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.setdefault("state", torch.get_rng_state())

    trainer(max_steps=1, callbacks=[Probe()]).fit(loaded, data())
    assert torch.equal(seen["state"], expected)  # not the checkpoint's generator state


class Validated(TinyRegression):
    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", torch.nn.functional.mse_loss(self.model(x).squeeze(-1), y))


@pytest.mark.parametrize("validated", [False, True], ids=["train_epoch_end", "validation_end"])
def test_a_last_checkpoint_written_at_an_epochs_end_resumes_the_exact_trajectory(
    validated, tmp_path
):
    # written inside the epoch-end hooks, before Lightning counts the epoch done: Lightning ran
    # one more batch "in" it, then numbered the later epochs one ahead (other batch orders)
    from lsframe.checkpointing import BestAndLastCheckpoint

    def module() -> TinyRegression:
        torch.manual_seed(0)
        cls = Validated if validated else TinyRegression
        return cls(model=mlp(dropout=0.2), optimizer=partial(torch.optim.AdamW, lr=1e-2))

    val = regression_data(8, seed=1)
    fit = partial(trainer, deterministic=True, max_steps=25, limit_val_batches=1)
    plain = module()
    fit().fit(plain, data(), torch.utils.data.DataLoader(val, batch_size=4))
    killed = module()
    last = BestAndLastCheckpoint(dirpath=tmp_path, save_last=True, monitor=None)
    with pytest.raises(RuntimeError, match="killed"):  # the last checkpoint: epoch 0's end
        fit(callbacks=[last, Crash(15)], enable_checkpointing=True).fit(
            killed, data(), torch.utils.data.DataLoader(val, batch_size=4)
        )
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == 10
    torch.manual_seed(1234)
    resumed = module()
    fit().fit(
        resumed,
        data(),
        torch.utils.data.DataLoader(val, batch_size=4),
        ckpt_path=last.last_model_path,
    )
    assert resumed.trainer.global_step == 25
    assert resumed.trainer.current_epoch == plain.trainer.current_epoch
    for (key, a), b in zip(plain.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), key


@pytest.mark.parametrize("name", ["adamw", "salsa"])
def test_a_finished_run_extended_to_more_steps_continues_its_schedule_over_the_new_length(
    name, tmp_path
):
    # the checkpoint's schedule ran over 8 steps: restoring its length trained steps 9..16 at
    # the final multiplier, 0, and the parameters stayed where the first run left them
    torch.manual_seed(0)
    module = make_module(name, lr_scheduler=WarmupCosineLR)
    checkpoints = ModelCheckpoint(tmp_path, save_last=True)
    fit = partial(trainer, deterministic=True, enable_checkpointing=True)
    fit(max_steps=8, callbacks=[checkpoints]).fit(module, data())
    lr_at_end = module.trainer.optimizers[0].param_groups[0]["lr"]
    assert lr_at_end == 0.0
    before = [p.detach().clone() for p in module.parameters()]

    extended = make_module(name, lr_scheduler=WarmupCosineLR)
    with pytest.warns(UserWarning, match="ran over 8 steps and this run takes 16"):
        fit(max_steps=16, callbacks=[ModelCheckpoint(tmp_path / "2")]).fit(
            extended, data(), ckpt_path=tmp_path / "last.ckpt"
        )
    schedule = extended.trainer.lr_scheduler_configs[0].scheduler
    assert extended.trainer.global_step == 16 and schedule.total_steps == 16
    assert schedule.last_epoch == 16
    moved = [not torch.equal(a, b) for a, b in zip(before, extended.parameters())]
    assert all(moved)


def test_a_run_extended_by_an_epoch_from_its_train_end_checkpoint_trains_that_epoch(tmp_path):
    # a resume with nothing left to train rewrote ``last.ckpt`` at ``on_train_end``, after
    # Lightning counted the epoch done, with the finished epoch's batch count: a later run
    # extended by an epoch resumed it "at its last batch" and trained nothing, with exit 0
    from lsframe.checkpointing import BestAndLastCheckpoint

    def module() -> Validated:
        torch.manual_seed(0)
        return Validated(model=mlp(dropout=0.2), optimizer=partial(torch.optim.AdamW, lr=1e-2))

    def val() -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(regression_data(8, seed=1), batch_size=4)

    fit = partial(trainer, deterministic=True, limit_val_batches=1, val_check_interval=10)
    plain = module()
    fit(max_epochs=2).fit(plain, data(), val())
    last = partial(BestAndLastCheckpoint, dirpath=tmp_path, save_last=True, monitor=None)
    # the first run stops on max_steps at the epoch's last batch, the second resumes it with
    # more steps but the same max_epochs (nothing to train), the third adds an epoch
    for epochs, steps in ((1, 10), (1, 20), (2, 20)):
        torch.manual_seed(1234)
        extended = module()
        resume = {"ckpt_path": tmp_path / "last.ckpt"} if (tmp_path / "last.ckpt").exists() else {}
        fit(max_epochs=epochs, max_steps=steps, callbacks=[last()], enable_checkpointing=True).fit(
            extended, data(), val(), **resume
        )
    assert extended.trainer.global_step == plain.trainer.global_step == 20
    for (key, a), b in zip(plain.named_parameters(), extended.parameters()):
        assert torch.equal(a, b), key


@pytest.mark.parametrize("max_epochs", [2, -1])
def test_a_run_stopped_inside_an_epoch_and_extended_goes_on_at_its_next_batch(max_epochs, tmp_path):
    # max_steps stopped the run at batch 5 of epoch 1; last.ckpt, written at the train's end,
    # counted the epoch processed: the extended run skipped its other 5 batches (or, under
    # max_epochs 2, trained nothing more), exit 0
    from lsframe.checkpointing import BestAndLastCheckpoint

    def module() -> TinyRegression:
        torch.manual_seed(0)
        return make_module("adamw")

    fit = partial(trainer, deterministic=True, max_epochs=max_epochs)
    plain = module()
    fit(max_steps=20).fit(plain, data())
    last = BestAndLastCheckpoint(dirpath=tmp_path, save_last=True, monitor=None)
    fit(max_steps=15, callbacks=[last], enable_checkpointing=True).fit(module(), data())
    torch.manual_seed(1234)
    extended = module()
    fit(max_steps=20).fit(extended, data(), ckpt_path=tmp_path / "last.ckpt")
    assert extended.trainer.global_step == 20
    for (key, a), b in zip(plain.named_parameters(), extended.parameters()):
        assert torch.equal(a, b), key


class _Undecodable(torch.utils.data.Dataset):
    """regression_data(40) with random noise added, where example ``bad`` raises a DataError
    while it is set."""

    bad: int | None = None

    def __init__(self) -> None:
        self.base = regression_data(40)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        if index == _Undecodable.bad:
            raise DataError("image does not decode", where=f"images/{index}.png")
        x, y = self.base[index]
        return x + 0.1 * torch.rand_like(x), y  # a random augmentation, as a crop draws


class _StopAndResume:
    """SaLSA (``accumulate`` micro-batches a step) over ``loader()``: the uninterrupted run, a
    second module for a run that stops on an error (with ``last``, its BestAndLastCheckpoint),
    and :meth:`resume_and_compare` from that run's ``last.ckpt``."""

    def __init__(self, accumulate: int, loader, tmp_path) -> None:
        self.loader, self.tmp_path = loader, tmp_path
        self.fit = partial(trainer, deterministic=True, max_steps=STEPS // accumulate)
        self.make = partial(make_module, "salsa", accumulate_grad_batches=accumulate)
        torch.manual_seed(0)
        self.uninterrupted = self.make()
        self.fit().fit(self.uninterrupted, loader())
        torch.manual_seed(0)
        self.stopped = self.make()
        self.last = BestAndLastCheckpoint(dirpath=tmp_path, save_last=True)

    def resume_and_compare(self) -> TinyRegression:
        torch.manual_seed(1234)
        resumed = self.make()
        self.fit().fit(resumed, self.loader(), ckpt_path=self.tmp_path / "last.ckpt")
        for (key, a), b in zip(self.uninterrupted.named_parameters(), resumed.parameters()):
            assert torch.equal(a, b), key
        return resumed


@pytest.mark.parametrize("accumulate", [1, 2])
def test_a_file_that_does_not_decode_mid_epoch_keeps_the_run_up_to_it_to_resume_exactly(
    accumulate, tmp_path
):
    # the fit ended with no checkpoint: every step since the last save was lost
    def loader() -> ResumableDataLoader:
        return ResumableDataLoader(_Undecodable(), batch_size=4, shuffle=True, seed=3)

    run = _StopAndResume(accumulate, loader, tmp_path)
    _Undecodable.bad = 5  # met while the batch after step 9 is fetched
    try:
        with pytest.raises(DataError, match="does not decode"):
            run.fit(callbacks=[run.last], enable_checkpointing=True).fit(run.stopped, loader())
    finally:
        _Undecodable.bad = None
    step = run.stopped.trainer.global_step
    # inside an accumulation the micro-batch fetched before the bad one is fetched again
    assert (
        step > 0 and torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == step
    )
    run.resume_and_compare()


def test_a_resume_that_cannot_load_its_checkpoint_leaves_last_as_it_was(tmp_path):
    # a data error while the state is half restored must not overwrite last with it
    last = BestAndLastCheckpoint(dirpath=tmp_path, save_last=True)
    trainer(max_steps=3, enable_checkpointing=True, callbacks=[last]).fit(
        make_module("adamw"), data()
    )
    before = (tmp_path / "last.ckpt").read_bytes()
    again = BestAndLastCheckpoint(dirpath=tmp_path, save_last=True)
    with pytest.raises(DataError, match="another optimizer saved it"):
        trainer(max_steps=6, enable_checkpointing=True, callbacks=[again]).fit(
            make_module("salsa"), data(), ckpt_path=tmp_path / "last.ckpt"
        )
    assert (tmp_path / "last.ckpt").read_bytes() == before and again.saved_for is None


def test_a_file_that_does_not_decode_in_a_validation_leaves_last_where_it_was(tmp_path):
    # a resume from a save there counted the interrupted validation as done, and went on
    # otherwise than the uninterrupted run
    class Validated(TinyRegression):
        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val/loss", torch.nn.functional.mse_loss(self.model(x).squeeze(-1), y))

    val = torch.utils.data.DataLoader(_Undecodable(), batch_size=8)
    last = BestAndLastCheckpoint(dirpath=tmp_path, save_last=True)
    run = trainer(
        max_steps=8,
        val_check_interval=4,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        enable_checkpointing=True,
        callbacks=[last],
    )
    _Undecodable.bad = 5  # in the validation's first batch
    try:
        with pytest.raises(DataError, match="does not decode"):
            run.fit(Validated(), data(), val)
    finally:
        _Undecodable.bad = None
    assert run.global_step == 4 and last.saved_for is None
    assert not (tmp_path / "last.ckpt").exists()


def test_a_data_error_of_one_process_of_several_saves_nothing(monkeypatch):
    # the save waited for the other processes, which never came: the run hung
    from types import SimpleNamespace

    last = BestAndLastCheckpoint(save_last=True)
    last._step_end_random, last._completed_at_step = {}, 0
    saves = []
    monkeypatch.setattr(last, "_bring_last_up_to_date", saves.append)
    module = SimpleNamespace(_micro_batches=[], device=torch.device("cpu"))
    error = DataError("image does not decode", where="x.png")
    last.on_exception(SimpleNamespace(training=True, world_size=2), module, error)
    assert saves == [] and last.saved_for is None


def test_a_saved_place_is_checked_against_the_data_settings_before_the_resume_starts():
    from types import SimpleNamespace

    # one of lsframe's DataModules, whose seed and batch_size are its training loader's
    ours = type("GlueDataModule", (SimpleNamespace,), {"__module__": "lsframe.data.glue"})

    from lsframe.data.resumable import refuse_another_place
    from lsframe.errors import ConfigError

    def loops(batches: int) -> dict:
        place = {"epoch": 0, "batches": batches, "seed": 3, "batch_size": 4, "examples": 10}
        return {"fit_loop": {"state_dict": {"combined_loader": [place]}}}

    with pytest.raises(ConfigError, match="seed 3, this one with 4") as refused:
        refuse_another_place(loops(1), ours(seed=4, batch_size=4))
    assert refused.value.where == "data.init_args.seed"
    with pytest.raises(ConfigError, match="batches of 4, this one of 2") as refused:
        refuse_another_place(loops(1), ours(seed=3, batch_size=2))
    assert refused.value.where == "data.init_args.batch_size"
    refuse_another_place(loops(3), ours(seed=3, batch_size=2))  # the epoch is over
    # 2 of 10 // 4 = 2 full batches: over only if the loader drops the last one, which the
    # loader itself knows: left to it
    refuse_another_place(loops(2), ours(seed=3, batch_size=2))
    refuse_another_place(None, ours(seed=9, batch_size=9))  # nothing saved

    class TheirOwn:  # a user's DataModule: its seed picks a split, not the loader's order
        seed, batch_size = 42, 4

    refuse_another_place(loops(1), TheirOwn())


class _FailsOnce(Callback):
    """At the batch of optimizer step ``at`` (once): a DataError from ``on_train_batch_start``
    (a check of the fetched batch), or a non-finite loss from the module's closure."""

    def __init__(self, at: int, how: str) -> None:
        self.at, self.how, self.done = at, how, False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # a check of the step's outputs, before the checkpoint callback's own batch end
        if self.how == "check after the step" and trainer.global_step == self.at + 1:
            if not self.done:
                self.done = True
                raise DataError("the step's outputs fail their check", where="side.txt")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        last_micro_batch = (batch_idx + 1) % pl_module.accumulate_grad_batches == 0
        if trainer.global_step != self.at or self.done or not last_micro_batch:
            return
        if self.how == "check after the step":
            return
        self.done = True
        if self.how == "batch check":
            raise DataError("batch fails its check", where="side.txt")
        loss = pl_module.compute_loss
        pl_module.compute_loss = lambda batch: loss(batch) * float("nan")
        pl_module.compute_loss_restore = loss


class _Restores(Callback):
    def on_train_batch_end(self, trainer, pl_module, *args):
        if hasattr(pl_module, "compute_loss_restore"):
            pl_module.compute_loss = pl_module.__dict__.pop("compute_loss_restore")


@pytest.mark.parametrize("at", ["late", "first", "epoch start"])
@pytest.mark.parametrize("accumulate", [1, 2])
@pytest.mark.parametrize("how", ["batch check", "non-finite loss", "check after the step"])
def test_a_step_that_fails_after_its_batch_was_fetched_is_trained_again_by_the_resume(
    how, accumulate, at, tmp_path
):
    # last.ckpt recorded the loader one batch ahead of the run: the resume skipped the batch
    # of the failed step (16 steps where the uninterrupted run took 17); in an accumulation,
    # every micro-batch of it
    from lsframe.errors import NonFiniteLossError

    steps = STEPS // accumulate
    # late: inside epoch 1; first: the fit's first step (its generators as it began); epoch
    # start: epoch 1's first step (its batch count was taken before Lightning reset it)
    step = {"late": steps - 4, "first": 0, "epoch start": 10 // accumulate}[at]
    run = _StopAndResume(accumulate, data, tmp_path)
    failing = [_FailsOnce(at=step, how=how), _Restores(), run.last]
    with pytest.raises(NonFiniteLossError if how == "non-finite loss" else DataError):
        run.fit(callbacks=failing, enable_checkpointing=True).fit(run.stopped, data())
    if at == "first" and how != "non-finite loss":  # no step before the data error's
        assert run.last.saved_for is None and not (tmp_path / "last.ckpt").exists()
        return
    assert run.last.saved_for is not None
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert saved["global_step"] == step + (how == "check after the step")
    assert run.resume_and_compare().trainer.global_step == steps


def _accumulating() -> Validated:
    """Two micro-batches a step, with dropout: a validation every 3 batches (see
    :data:`_validating`) falls between the micro-batches of every other step."""
    return Validated(model=mlp(dropout=0.2), optimizer=optim.SGDSLS, accumulate_grad_batches=2)


_validating = partial(trainer, deterministic=True, max_steps=8, val_check_interval=3,
                      check_val_every_n_epoch=None)  # fmt: skip


def _validation_data() -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(regression_data(8), batch_size=8)


def _assert_resumes_to(uninterrupted: Validated, ckpt_path: Path, label: str) -> None:
    """A fresh module resumed from ``ckpt_path`` ends with ``uninterrupted``'s parameters."""
    torch.manual_seed(1234)
    resumed = _accumulating()
    _validating().fit(resumed, data(), _validation_data(), ckpt_path=ckpt_path)
    for (key, a), b in zip(uninterrupted.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), (label, key)


def test_a_validation_between_two_micro_batches_saves_the_step_a_resume_goes_on_from(tmp_path):
    # last.ckpt of a validation after the first micro-batch of a step recorded the loader after
    # it: the resume's next step skipped it; a failure at that step kept that file
    from lsframe.errors import NonFiniteLossError

    torch.manual_seed(0)
    uninterrupted = _accumulating()
    _validating().fit(uninterrupted, data(), _validation_data())
    for failure in ("crash", "non-finite loss"):
        torch.manual_seed(0)
        stopped, last = _accumulating(), BestAndLastCheckpoint(dirpath=tmp_path, save_last=True)
        callbacks = [last] + (
            [Crash(at=2)] if failure == "crash" else [_FailsOnce(2, failure), _Restores()]
        )
        with pytest.raises(RuntimeError if failure == "crash" else NonFiniteLossError):
            fit = _validating(callbacks=callbacks, enable_checkpointing=True)
            fit.fit(stopped, data(), _validation_data())
        _assert_resumes_to(uninterrupted, tmp_path / "last.ckpt", failure)
        (tmp_path / "last.ckpt").unlink()


def test_every_best_checkpoint_of_validations_between_micro_batches_resumes_exactly(tmp_path):
    # a best checkpoint saved at a validation between two micro-batches of a step recorded the
    # loader past the first: a resume from it never trained that micro-batch
    best = BestAndLastCheckpoint(dirpath=tmp_path, monitor="val/loss", save_top_k=-1)
    torch.manual_seed(0)
    uninterrupted = _accumulating()
    fit = _validating(callbacks=[best], enable_checkpointing=True)
    fit.fit(uninterrupted, data(), _validation_data())
    files = sorted(tmp_path.glob("*.ckpt"))
    assert len(files) == 5  # validations after batches 3, 6, 9 (epoch 0), 2 and 5 (epoch 1)
    for path in files:
        _assert_resumes_to(uninterrupted, path, path.name)


def test_a_resumed_fit_saves_a_validation_between_its_first_micro_batches_as_its_step_left_it(
    tmp_path,
):
    # Lightning calls no on_train_epoch_start for an epoch restarted mid-way: the resumed fit took
    # its first micro-batch's end for a step, so the checkpoints of its validation before its
    # first step ended recorded the loader past that micro-batch, which their resume never trained
    def best(folder: str) -> BestAndLastCheckpoint:
        return BestAndLastCheckpoint(
            dirpath=tmp_path / folder, monitor="val/loss", save_top_k=-1, save_last=True
        )

    torch.manual_seed(0)
    uninterrupted = _accumulating()
    _validating(callbacks=[best("a")], enable_checkpointing=True).fit(
        uninterrupted, data(), _validation_data()
    )
    start = tmp_path / "a" / "epoch=0-step=1.ckpt"  # the validation after batch 3
    torch.manual_seed(1234)
    fit = _validating(callbacks=[best("b")], enable_checkpointing=True)
    fit.fit(_accumulating(), data(), _validation_data(), ckpt_path=start)
    written = sorted((tmp_path / "b").glob("*.ckpt"))
    # its validations after batches 3 (between step 2's micro-batches, again), 6, 9, 2, 5; last
    assert len(written) == 6 and tmp_path / "b" / "epoch=0-step=1.ckpt" in written
    for path in written:
        _assert_resumes_to(uninterrupted, path, path.name)


@pytest.mark.parametrize("length", [{"max_steps": 17}, {"max_epochs": 3}])
def test_a_resume_at_the_end_of_an_epoch_limit_train_batches_ended_starts_the_next(
    length, tmp_path
):
    # the loader, which does not know the limit, went on with the rest of the ended epoch's
    # order (4 batches of epoch 0 "in epoch 1"), and the run ended elsewhere
    fit = partial(trainer, deterministic=True, limit_train_batches=6, **length)
    torch.manual_seed(0)
    uninterrupted = make_module("adamw")
    fit().fit(uninterrupted, data())
    torch.manual_seed(0)
    last = BestAndLastCheckpoint(dirpath=tmp_path, save_last=True)
    with pytest.raises(RuntimeError, match="killed"):
        fit(callbacks=[Crash(at=8), last], enable_checkpointing=True).fit(
            make_module("adamw"), data()
        )
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] == 6
    torch.manual_seed(1234)
    resumed = make_module("adamw")
    fit().fit(resumed, data(), ckpt_path=tmp_path / "last.ckpt")
    for (key, a), b in zip(uninterrupted.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), key


def test_each_process_resumes_with_its_own_generators_and_an_older_checkpoint_with_rank_0s():
    from lsframe.modules.random_state import own_random_states

    saved = {"random_states": "rank 0", "random_states_by_rank": ["rank 0", "rank 1"]}
    assert [own_random_states(saved, rank) for rank in (0, 1)] == ["rank 0", "rank 1"]
    # saved by one process, by lsframe before 2026-12-07, or by fewer processes than resume
    assert own_random_states({"random_states": "rank 0"}, 1) == "rank 0"
    assert own_random_states(saved, 2) == "rank 0"


def _post_fit_module() -> TinyRegression:
    torch.manual_seed(0)
    return make_module("adamw")


def _extended_to_20_steps_equals_the_run_through_them(checkpoint) -> None:
    """The fit from ``checkpoint`` to step 20 ends where one fit through 20 steps ends."""
    fit = partial(trainer, deterministic=True, max_steps=20)
    plain = _post_fit_module()
    fit().fit(plain, data())
    torch.manual_seed(99)  # a fresh process: whatever state the generators are in
    extended = _post_fit_module()
    fit().fit(extended, data(), ckpt_path=checkpoint)
    assert extended.trainer.global_step == 20
    for (key, a), b in zip(plain.named_parameters(), extended.parameters()):
        assert torch.equal(a, b), key


def test_a_checkpoint_saved_after_a_fit_stopped_inside_an_epoch_goes_on_at_its_next_batch(
    tmp_path,
):
    # trainer.save_checkpoint after fit returned from max_steps inside epoch 1: Lightning had
    # counted that epoch completed, and the extended run began epoch 2, skipping 5 batches
    stopped = trainer(deterministic=True, max_steps=15)
    stopped.fit(_post_fit_module(), data())
    stopped.save_checkpoint(tmp_path / "final.ckpt")
    _extended_to_20_steps_equals_the_run_through_them(tmp_path / "final.ckpt")


def test_a_checkpoint_saved_after_a_resumed_fit_that_trained_nothing_keeps_its_generators(
    tmp_path,
):
    # the resumed fit never reached on_train_start, where the held generators are restored:
    # its save kept the fresh process's, and the run extended from it drew other dropout masks
    fit = partial(trainer, deterministic=True, max_steps=15)
    first = fit()
    first.fit(_post_fit_module(), data())
    first.save_checkpoint(tmp_path / "a.ckpt")
    torch.manual_seed(1234)
    idle = fit()
    idle.fit(_post_fit_module(), data(), ckpt_path=tmp_path / "a.ckpt")  # nothing to train
    idle.save_checkpoint(tmp_path / "b.ckpt")
    _extended_to_20_steps_equals_the_run_through_them(tmp_path / "b.ckpt")


def test_last_checkpoint_bookkeeping_reads_this_process_s_generators(tmp_path):
    from types import SimpleNamespace

    saved = {"random_states": "rank 0", "random_states_by_rank": ["rank 0", "rank 1"]}
    callback = BestAndLastCheckpoint(dirpath=tmp_path, save_last=True)
    callback.on_load_checkpoint(SimpleNamespace(global_rank=1), None, {"lsframe": saved})
    assert callback._resumed_random == "rank 1"


class _StopAfter(Callback):
    """Asks the fit to stop at the end of its ``batches``-th training batch, as the Trainer's
    ``max_time`` does (``Timer`` sets ``should_stop`` at a batch's end)."""

    def __init__(self, batches: int) -> None:
        self.batches, self.seen = batches, 0

    def on_train_batch_end(self, trainer, *args) -> None:
        self.seen += 1
        if self.seen == self.batches:
            trainer.should_stop = True


def _lsframe_validation_data() -> torch.utils.data.DataLoader:
    from lsframe.data.resumable import make_loader

    return make_loader(regression_data(8), batch_size=8, shuffle=False)


def _stopped_and_resumed_equals_the_run_through(stop_after: int, tmp_path, **settings) -> None:
    """A fit asked to stop after ``stop_after`` batches, then resumed from its last.ckpt and
    from a save after ``fit`` returned, ends where the fit through 8 steps ends."""
    fit = partial(_validating, **settings)
    torch.manual_seed(0)
    uninterrupted = _accumulating()
    fit().fit(uninterrupted, data(), _lsframe_validation_data())
    torch.manual_seed(0)
    last = BestAndLastCheckpoint(dirpath=tmp_path, save_last=True)
    stopped = fit(callbacks=[_StopAfter(stop_after), last], enable_checkpointing=True)
    stopped.fit(_accumulating(), data(), _lsframe_validation_data())
    assert 0 < stopped.global_step < 8
    stopped.save_checkpoint(tmp_path / "after_fit.ckpt")
    for name in ("last.ckpt", "after_fit.ckpt"):
        torch.manual_seed(1234)
        resumed = _accumulating()
        fit().fit(resumed, data(), _lsframe_validation_data(), ckpt_path=tmp_path / name)
        for (key, a), b in zip(uninterrupted.named_parameters(), resumed.parameters()):
            assert torch.equal(a, b), (name, key)


def test_a_stop_asked_between_two_micro_batches_waits_for_the_step(tmp_path):
    # max_time's stop after batch 3, the first micro-batch of step 2, saved the loader past it
    # and dropped its gradients: the resume never trained it, and every later step paired other
    # batches (SaLSA 0.77 away after 12 steps). The fit now stops once the step is taken
    _stopped_and_resumed_equals_the_run_through(3, tmp_path, val_check_interval=4)


def test_a_stop_between_validations_resumes_without_the_validation_lightning_adds(tmp_path):
    # a fit asked to stop runs one more validation: its loader's iterator drew a base seed from
    # torch's generator before the checkpoint saved it, so the resume's dropout masks differed
    _stopped_and_resumed_equals_the_run_through(2, tmp_path, val_check_interval=5)


def test_a_checkpoint_at_the_end_of_an_epoch_without_a_validation_resumes_exactly(tmp_path):
    # the restart's bookkeeping at an epoch's end opens the validation loader although this
    # epoch had no validation (every second epoch has one): one draw the run never made
    every_ten = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=10, save_top_k=-1)
    fit = partial(trainer, deterministic=True, max_steps=20, check_val_every_n_epoch=2)
    torch.manual_seed(0)
    uninterrupted = Validated(model=mlp(dropout=0.2), optimizer=optim.SGDSLS)
    fit(callbacks=[every_ten], enable_checkpointing=True).fit(
        uninterrupted, data(), _lsframe_validation_data()
    )
    torch.manual_seed(1234)
    resumed = Validated(model=mlp(dropout=0.2), optimizer=optim.SGDSLS)
    (epoch_end,) = tmp_path.glob("*step=10.ckpt")  # epoch 0's last batch: 10 batches an epoch
    fit().fit(resumed, data(), _lsframe_validation_data(), ckpt_path=epoch_end)
    for (key, a), b in zip(uninterrupted.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), key


def test_a_stop_asked_by_a_validation_between_two_micro_batches_waits_for_the_step(tmp_path):
    # EarlyStopping at the validation after batch 3 (inside step 2): a save after fit returned
    # held the loader past batch 3 (0.77 away); its hold runs at the validation's end
    from lightning.pytorch.callbacks import EarlyStopping

    stop = EarlyStopping("val/loss", stopping_threshold=1e9)  # stops at its first check
    fit = partial(_validating, val_check_interval=3)
    torch.manual_seed(0)
    uninterrupted = _accumulating()
    fit().fit(uninterrupted, data(), _lsframe_validation_data())
    torch.manual_seed(0)
    stopped = fit(callbacks=[stop])
    stopped.fit(_accumulating(), data(), _lsframe_validation_data())
    assert stopped.global_step == 2  # the step after the validation's micro-batch is taken
    stopped.save_checkpoint(tmp_path / "after_fit.ckpt")
    torch.manual_seed(1234)
    resumed = _accumulating()
    fit().fit(resumed, data(), _lsframe_validation_data(), ckpt_path=tmp_path / "after_fit.ckpt")
    for (key, a), b in zip(uninterrupted.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), key


def test_every_evaluation_set_of_a_text_data_module_leaves_torchs_generator_alone(minilm):
    # MNLI's matched and mismatched sets were plain DataLoaders: each validation drew a base
    # seed from torch's generator, which parts a resumed run (see the tests above)
    from lsframe.data.text import TextClassificationDataModule, TextExamples

    class TwoDevSets(TextClassificationDataModule):
        eval_names = ["matched", "mismatched"]

        def load_split(self, split):
            examples = TextExamples(["a good film", "a bad film", "fine", "awful"], [1, 0, 1, 0])
            return examples if split == "train" else [examples, examples]

    data_module = TwoDevSets(tokenizer=minilm, eval_batch_size=2)
    data_module.setup("validate")
    loaders = data_module.val_dataloader()
    assert len(loaders) == 2
    before = torch.get_rng_state()
    for loader in loaders:
        assert sum(len(batch["labels"]) for batch in loader) == 4
    assert torch.equal(before, torch.get_rng_state())
