"""The papers' protocol loop: a run interrupted between checkpoints continues to the same end."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from benchmarks.common import machine
from benchmarks.protocols import checkpoint_path, epoch_batches, train
from lsframe import optim
from lsframe.optim import WarmupCosineLR

STEPS = 12


def batches(data, seed: int = 0, crash_at: int | None = None):
    """Endless seeded batches of ``data``; raises at the ``crash_at``-th batch (a crash)."""
    x, y = data
    for i, index in enumerate(epoch_batches(len(y), 16, seed)):
        if i == crash_at:
            raise KeyboardInterrupt("stopped")
        yield x[index], y[index]


def fresh_run(name: str):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.2), nn.ReLU(), nn.Linear(16, 3))
    opt = optim.create(name, model.parameters()) if name != "adamw" else None
    opt = opt or torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = WarmupCosineLR(opt, warmup_ratio=0.1, total_steps=STEPS) if name == "adamw" else None
    return model, opt, sched


@pytest.mark.parametrize("name", ["adamw", "salsa"])
def test_a_run_stopped_after_a_checkpoint_ends_where_an_uninterrupted_run_ends(name, tmp_path):
    gen = torch.Generator().manual_seed(1)
    data = torch.randn(100, 6, generator=gen), torch.randint(0, 3, (100,), generator=gen)
    criterion = nn.CrossEntropyLoss()

    model, opt, sched = fresh_run(name)
    whole = train(model, opt, sched, batches(data), STEPS, criterion=criterion)

    ckpt = checkpoint_path(tmp_path / "table", f"{name}_seed0")
    model2, opt2, sched2 = fresh_run(name)
    with pytest.raises(KeyboardInterrupt):  # stopped at step 8: the checkpoint of step 6 stays
        train(model2, opt2, sched2, batches(data, crash_at=7), STEPS, criterion=criterion,
              checkpoint=ckpt, checkpoint_every=3)  # fmt: skip
    assert ckpt.exists() and torch.load(ckpt, weights_only=False)["step"] == 6
    torch.manual_seed(123)  # another process: its random state is not the run's
    model3, opt3, sched3 = fresh_run(name)
    resumed = train(model3, opt3, sched3, batches(data), STEPS, criterion=criterion,
                    checkpoint=ckpt, checkpoint_every=3)  # fmt: skip

    assert resumed.losses == whole.losses  # dropout masks and batches as in one sitting
    assert len(resumed.seconds) == STEPS and resumed.forwards == whole.forwards
    for a, b in zip(model.parameters(), model3.parameters()):
        assert torch.equal(a, b)
    assert list(ckpt.parent.iterdir()) == [ckpt]  # no temporary file left beside it


def test_a_run_resumed_on_another_machine_logs_which_machine_took_which_steps(tmp_path):
    gen = torch.Generator().manual_seed(1)
    data = torch.randn(100, 6, generator=gen), torch.randint(0, 3, (100,), generator=gen)
    ckpt = checkpoint_path(tmp_path / "table", "adamw_seed0")
    criterion = nn.CrossEntropyLoss()
    model, opt, sched = fresh_run("adamw")
    with pytest.raises(KeyboardInterrupt):
        train(model, opt, sched, batches(data, crash_at=7), STEPS, criterion=criterion,
              checkpoint=ckpt, checkpoint_every=3)  # fmt: skip
    state = torch.load(ckpt, weights_only=False)
    assert state["trace"]["sittings"] == [{"machine": machine("cpu"), "first_step": 1}]

    model, opt, sched = fresh_run("adamw")  # same machine: the log's own machine field stays
    same = train(model, opt, sched, batches(data), STEPS, criterion=criterion, checkpoint=ckpt)
    assert "machine" not in same.summary()

    state["trace"]["sittings"][0]["machine"] = "NVIDIA H200"  # as if the GPU had written it
    torch.save(state, ckpt)
    model, opt, sched = fresh_run("adamw")
    moved = train(model, opt, sched, batches(data), STEPS, criterion=criterion, checkpoint=ckpt)
    row = moved.summary()
    assert row["machine"] == f"NVIDIA H200 (steps 1–6), then {machine('cpu')} (steps 7–12)"
    assert row["steps_run"] == STEPS


def test_running_one_seed_at_a_time_keeps_every_logged_run_in_the_p1_table(
    shared_data, tmp_path, monkeypatch
):
    import json
    import sys

    from benchmarks import p1_final_loss

    out = tmp_path / "p1"
    for optimizer, seed in (("adam", 0), ("alsals", 1)):
        argv = ["p1", "--task", "gpt2", "--steps", "3", "--out", str(out)]
        argv += ["--optimizers", optimizer, "--seeds", str(seed)]
        monkeypatch.setattr(sys, "argv", argv)
        p1_final_loss.main()
    result = json.loads((tmp_path / "p1_gpt2.json").read_text())
    assert {(r["optimizer"], r["seed"]) for r in result["rows"]} == {("adam", 0), ("alsals", 1)}
    assert "seeds [0, 1]" in result["meta"]
    table = (tmp_path / "p1_gpt2.md").read_text()
    assert "| adam | 1 |" in table and "| alsals | 1 |" in table


def test_the_bf16_loss_of_p2_runs_the_forward_in_bf16_and_keeps_loss_and_gradients_in_fp32():
    from benchmarks.p2_large_batch import ResNet20, bf16_cross_entropy

    torch.manual_seed(0)
    model = ResNet20().to(memory_format=torch.channels_last)
    images, labels = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    seen = []
    model.head.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    loss = bf16_cross_entropy(model, (images, labels))
    loss.backward()
    assert seen == [torch.bfloat16] and loss.dtype == torch.float32
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())
    exact = nn.functional.cross_entropy(model(images), labels)
    assert float(loss) == pytest.approx(float(exact), rel=2e-2)  # bf16 rounding, same maths


def test_p2_runs_made_one_at_a_time_all_reach_the_table_of_their_precision(tmp_path, monkeypatch):
    import json
    import sys

    from benchmarks import p2_large_batch, protocols

    made = []

    def fake_run(name, batch_size, seed, data, args, checkpoint):
        made.append((name, batch_size, seed, args.bf16))
        acc = {"alto": 0.9, "lamb": 0.8, "adamw": 0.7}[name]
        return {"test_acc": acc, "final_train_loss": 0.1, "cpu_seconds_per_step": 1.0,
                "seconds": 2.0}  # fmt: skip

    labels = torch.zeros(2 * 8192, dtype=torch.long)  # 2 steps an epoch at 8,192
    monkeypatch.setattr(p2_large_batch, "run", fake_run)
    monkeypatch.setattr(p2_large_batch, "fashion_mnist", lambda: {"train": (None, labels)})
    monkeypatch.setattr(protocols, "ROOT", tmp_path)  # results under tmp_path/benchmarks/results
    base = ["p2", "--epochs", "1", "--seeds", "0", "--device", "cpu"]
    for extra in (["--bf16", "--optimizers", "alto"], ["--bf16", "--optimizers", "lamb"],
                  ["--optimizers", "adamw"]):  # fmt: skip
        monkeypatch.setattr(sys, "argv", [*base, "--batch-sizes", "4096", *extra])
        p2_large_batch.main()
    assert made == [("alto", 4096, 0, True), ("lamb", 4096, 0, True), ("adamw", 4096, 0, False)]

    results = tmp_path / "benchmarks" / "results"
    bf16, fp32 = results / "p2_large_batch_bf16_cpu", results / "p2_large_batch_cpu"
    log = bf16.with_suffix(".runs.jsonl")
    log.write_text(log.read_text() + log.read_text().splitlines()[0] + "\n")  # a run logged twice
    monkeypatch.setattr(sys, "argv", [*base, "--bf16", "--table-only"])
    p2_large_batch.main()
    assert len(made) == 3  # the table only: no run
    result = json.loads(bf16.with_suffix(".json").read_text())
    assert [(r["optimizer"], r["bf16"]) for r in result["rows"]] == [("lamb", True), ("alto", True)]
    assert "bf16 autocast" in result["meta"] and "seeds [0]" in result["meta"]
    table = bf16.with_suffix(".md").read_text()
    assert "| 4,096 | alto | 1 |" in table and "| 4,096 | lamb | 1 |" in table
    assert "adamw" not in table.split("|---|")[-1]  # the fp32 run is another protocol's
    other = json.loads(fp32.with_suffix(".json").read_text())  # fp32 keeps its own table
    assert [(r["optimizer"], r["bf16"]) for r in other["rows"]] == [("adamw", False)]


@pytest.mark.parametrize("warmup_ratio", [0.0, 0.2])
def test_warmup_cosine_inside_sequential_lr_resumes_the_learning_rates_it_would_have_had(
    warmup_ratio,
):
    # loading re-applied the multiplier of a schedule not yet started (last_epoch -1): lr 0
    # from step 5 on (warmup 0.2), or a ZeroDivisionError while loading (warmup 0)
    import copy

    from torch.optim.lr_scheduler import LinearLR, SequentialLR

    from lsframe.optim import WarmupCosineLR

    def build() -> tuple[torch.optim.Optimizer, SequentialLR]:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(3))], lr=1.0)
        parts = [
            LinearLR(opt, start_factor=0.1, total_iters=5),
            WarmupCosineLR(opt, warmup_ratio=warmup_ratio, total_steps=10),
        ]
        return opt, SequentialLR(opt, parts, milestones=[5])

    def lrs(opt, schedule, steps: int) -> list[float]:
        out = []
        for _ in range(steps):
            opt.step()
            schedule.step()
            out.append(opt.param_groups[0]["lr"])
        return out

    opt, schedule = build()
    lrs(opt, schedule, 2)
    saved = copy.deepcopy(opt.state_dict()), copy.deepcopy(schedule.state_dict())
    expected = lrs(opt, schedule, 12)
    opt, schedule = build()
    opt.load_state_dict(saved[0])
    schedule.load_state_dict(saved[1])
    assert lrs(opt, schedule, 12) == expected
