"""All methods in one run: ALSALS + valley exploration + DPS (frozen) + EWC, and their contract."""

from __future__ import annotations

import json

import torch
from helpers import TinyRegression, loader, mlp, small_sequence_config, trainer
from test_dps import Recorder
from test_valley import hand_adapted

from lsframe.callbacks import DPS, EWC, ValleyExploration
from lsframe.optim import ALSALS

STEPS = 12


class Counter(EWC):
    """EWC that counts its penalty evaluations."""

    calls = 0

    def closure_loss(self, trainer, pl_module):
        self.calls += 1
        return super().closure_loss(trainer, pl_module)


def test_every_method_at_once_keeps_each_contract():
    torch.manual_seed(0)
    module = TinyRegression(model=mlp(), optimizer=ALSALS)
    ewc = Counter(ewc_lambda=10.0, fisher_batches=4)
    trainer(max_steps=4, callbacks=[ewc]).fit(module, loader(32, 4))  # task A: Fisher, anchor
    assert len(ewc.tasks) == 1

    evaluations = {"n": 0}
    compute_loss = module.compute_loss

    def counted(batch):
        evaluations["n"] += 1
        return compute_loss(batch)

    module.compute_loss = counted
    ewc.calls = 0
    before, after = Recorder(), Recorder()
    valley = ValleyExploration(alpha=0.5, beta=0.3)
    dps = DPS(p=0.5, update_ratio=0.25, mask_mode="frozen")  # stages of 3 steps
    run = trainer(max_steps=STEPS, callbacks=[before, valley, dps, ewc, after])
    run.fit(module, loader(64, 4))

    # EWC's penalty is part of every closure evaluation, the line search's trials included
    fisher_pass = 4  # the new task's Fisher at the end of the fit: losses without the penalty
    assert ewc.calls == evaluations["n"] - fisher_pass > STEPS
    assert run.optimizers[0].search_state["searches"] > 0
    # the gradient hook ran once per optimizer step
    assert len(before.grads) == len(after.grads) == STEPS
    for name in before.grads[0]:
        adapted = hand_adapted([g[name] for g in before.grads], 0.5, 0.3, False)
        for step, (seen, want) in enumerate(zip([g[name] for g in after.grads], adapted)):
            kept = seen != 0
            # the optimizer sees the adapted gradient, masked (stage II) or whole (stage I)
            torch.testing.assert_close(seen[kept], want[kept])
            in_stage_two = (step // dps.stage_length) % 2 == 1
            if name.endswith("weight"):
                assert in_stage_two == bool((~kept).any()), (name, step)
            if in_stage_two and step + 1 < STEPS:  # frozen: masked entries do not move
                moved = after.params[step + 1][name] != after.params[step][name]
                assert not (moved & ~kept).any(), (name, step)
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_the_composition_config_runs_on_the_real_encoder(minilm, shared_data, tmp_path):
    import yaml

    from lsframe.__main__ import main

    config = small_sequence_config("minilm_everything", shared_data / "glue")
    config["trainer"]["callbacks"][1]["init_args"]["update_ratio"] = 0.5  # 2 steps: stages of 1
    config["trainer"]["callbacks"][2]["init_args"]["fisher_batches"] = 2
    small = tmp_path / "small.yaml"
    small.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    main(["sequential", "--config", str(small), "--output_dir", str(out)])
    saved = json.loads((out / "accuracy_matrix.json").read_text())
    assert saved["tasks"] == ["sst2", "mrpc"]
    assert all(0.0 <= v <= 1.0 for v in saved["matrix"][1])
    checkpoint = torch.load(out / "stage_1.ckpt", weights_only=False)
    states = {key.split("{")[0]: value for key, value in checkpoint["callbacks"].items()}
    assert len(states["EWC"]["tasks"]) == 1  # online mode: one decayed Fisher, one anchor
    assert states["DPS"]["masks"] is not None or states["DPS"]["scores"] is not None
    assert "prev" in states["ValleyExploration"]
