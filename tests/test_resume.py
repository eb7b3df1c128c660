"""Kill a run at an arbitrary step, resume from its last checkpoint, land on the same parameters.

Every registered optimizer and every callback's state, with dropout and a shuffled loader, on the
CPU in deterministic mode. The crash falls mid-epoch, after the last periodic checkpoint, so the
resumed run repeats some steps, continues inside an epoch and then crosses an epoch boundary.
"""

from __future__ import annotations

import re
from functools import partial

import pytest
import torch
from helpers import TinyRegression, ValidatedRegression, mlp, regression_data, trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from resume_helpers import (
    CRASH,
    EVERY,
    STEPS,
    Crash,
    assert_same_parameters,
    data,
    make_module,
)

from lsframe import optim
from lsframe.callbacks import DPS, EWC, ChildTuningD, ValleyExploration
from lsframe.checkpointing import BestAndLastCheckpoint
from lsframe.data.resumable import ResumableDataLoader
from lsframe.optim import WarmupCosineLR


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
    assert_same_parameters(module, resumed)
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


@pytest.mark.parametrize("validated", [False, True], ids=["train_epoch_end", "validation_end"])
def test_a_last_checkpoint_written_at_an_epochs_end_resumes_the_exact_trajectory(
    validated, tmp_path
):
    # written inside the epoch-end hooks, before Lightning counts the epoch done: Lightning ran
    # one more batch "in" it, then numbered the later epochs one ahead (other batch orders)

    def module() -> TinyRegression:
        torch.manual_seed(0)
        cls = ValidatedRegression if validated else TinyRegression
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
    assert_same_parameters(plain, resumed)


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

    def module() -> ValidatedRegression:
        torch.manual_seed(0)
        return ValidatedRegression(
            model=mlp(dropout=0.2), optimizer=partial(torch.optim.AdamW, lr=1e-2)
        )

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
    assert_same_parameters(plain, extended)


@pytest.mark.parametrize("max_epochs", [2, -1])
def test_a_run_stopped_inside_an_epoch_and_extended_goes_on_at_its_next_batch(max_epochs, tmp_path):
    # max_steps stopped the run at batch 5 of epoch 1; last.ckpt, written at the train's end,
    # counted the epoch processed: the extended run skipped its other 5 batches (or, under
    # max_epochs 2, trained nothing more), exit 0

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
    assert_same_parameters(plain, extended)
