"""Per-part learning-rate distributions (BERTcL): parts → groups → learning rates."""

from __future__ import annotations

import warnings
from functools import partial

import pytest
import torch
from helpers import TinyRegression, loader, trainer
from test_parts import tiny_bert

from lsframe.lr_distribution import (
    base_lr_of,
    bert_base_equivalent,
    load_distribution,
    multipliers_for,
)
from lsframe.modules import ClosureModule
from lsframe.optim import SaLSA, WarmupCosineLR, apply_part_multipliers
from lsframe.parts import part_groups


def test_bert_base_preset_maps_to_its_ten_parts():
    model = tiny_bert(12)
    got = multipliers_for(model, "bertcl_combined")
    assert list(got.values()) == [1, 1, 0.3, 0.7, 1, 1, 1, 1, 1, 3]
    assert set(multipliers_for(model, "flat").values()) == {1.0}


def test_other_depths_take_the_bert_part_at_the_same_relative_depth():
    assert [bert_base_equivalent(f"layers_{i}", 6) for i in range(6)] == [
        "layers_0-1",
        "layers_3-4",
        "layers_5",
        "layers_6-7",
        "layers_9-10",
        "layers_11",
    ]
    got = multipliers_for(tiny_bert(6), "bertcl_combined")
    assert got == {
        "embeddings": 1.0,
        **{f"layers_{i}": m for i, m in enumerate([1, 0.7, 1, 1, 1, 1])},
        "head": 3.0,
    }
    direct = multipliers_for(tiny_bert(6), {"layers_2": 0.1, "head": 2.0})
    assert direct["layers_2"] == 0.1 and direct["layers_0"] == 1.0


def test_frozen_top_layers_keep_the_depth_of_the_whole_stack():
    model = tiny_bert(12)
    for layer in list(model.bert.encoder.layer)[6:]:
        layer.requires_grad_(False)
    got = multipliers_for(model, "bertcl_combined")
    assert got["layers_2"] == 0.3 and got["layers_3-4"] == 0.7 and got["head"] == 3


def test_a_part_whose_parameters_are_all_frozen_is_no_unknown_part():
    # it was refused as "unknown", where a ten-part preset naming it was accepted
    model = tiny_bert(2)
    model.bert.embeddings.requires_grad_(False)
    got = multipliers_for(model, {"embeddings": 0.5, "head": 3.0})
    assert "embeddings" not in got and got["head"] == 3.0
    with pytest.raises(ValueError, match=r"unknown parts \['decoder'\]"):
        multipliers_for(model, {"embeddings": 0.5, "decoder": 1.0})


def test_a_distribution_becomes_group_learning_rates_for_any_optimizer():
    model = tiny_bert(12)
    multipliers = multipliers_for(model, "bertcl_combined")
    adamw = torch.optim.AdamW(part_groups(model), lr=2e-5)
    apply_part_multipliers(adamw, multipliers)
    assert [g["lr"] for g in adamw.param_groups] == pytest.approx(
        [2e-5 * m for m in [1, 1, 0.3, 0.7, 1, 1, 1, 1, 1, 3]]
    )
    salsa = SaLSA(part_groups(model))
    apply_part_multipliers(salsa, multipliers)
    assert [g["lr_multiplier"] for g in salsa.param_groups] == [1, 1, 0.3, 0.7, 1, 1, 1, 1, 1, 3]


def test_module_applies_the_distribution_and_a_schedule_scales_it(tmp_path):
    spec = tmp_path / "dist.yaml"
    spec.write_text("layers_0: 0.5\nhead: 2.0\n")  # helpers.mlp: its first Linear, its last
    module = TinyRegression(
        optimizer=partial(torch.optim.SGD, lr=0.1),
        param_grouping="parts",
        lr_distribution=str(spec),
    )
    module_ls = TinyRegression(
        optimizer=SaLSA,
        param_grouping="parts",
        lr_distribution={"layers_0": 0.5, "head": 2.0},
        lr_scheduler=partial(WarmupCosineLR, warmup_ratio=0.0, total_steps=10),
    )
    trainer(max_steps=1).fit(module, loader(8, 4))
    trainer(max_steps=2).fit(module_ls, loader(8, 4))
    assert [g["lr"] for g in module.optimizers().optimizer.param_groups] == [0.05, 0.2]
    groups = module_ls.optimizers().optimizer.param_groups
    ratio = groups[1]["lr_multiplier"] / groups[0]["lr_multiplier"]
    assert ratio == pytest.approx(4.0) and groups[0]["lr_multiplier"] < 0.5  # cosine decays it


def test_a_searched_file_used_at_another_lr_than_its_base_lr_warns_with_the_ratio(tmp_path):
    spec = tmp_path / "best.yaml"
    spec.write_text(
        "# best (lsframe search); base_lr 0.05, objective 0.9\nlayers_0: 0.5\nhead: 2.0\n"
    )

    def fit(optimizer) -> list[str]:
        module = TinyRegression(
            optimizer=optimizer, param_grouping="parts", lr_distribution=str(spec)
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer(max_steps=1).fit(module, loader(8, 4))
        return [str(w.message) for w in caught if "base_lr" in str(w.message)]

    (message,) = fit(partial(torch.optim.SGD, lr=0.1))
    assert f"lr_distribution {spec}" in message and "base_lr 0.05" in message and "2×" in message
    assert fit(partial(torch.optim.SGD, lr=0.05)) == []
    assert fit(SaLSA) == []  # a line search's multipliers scale its searched step


def test_bad_distributions_are_clear_errors():
    with pytest.raises(ValueError, match="unknown parts"):
        multipliers_for(tiny_bert(2), {"decoder": 1.0})
    mlp = torch.nn.Sequential(*(torch.nn.Linear(4, 4) for _ in range(3)))  # no layer stack
    message = r"BERT-base ten-part distribution.*Sequential has none.*\['layers_0', 'layers_1'"
    with pytest.raises(ValueError, match=message):
        multipliers_for(mlp, "bertcl_combined")
    with pytest.raises(ValueError, match="lr_distribution: part 'head'"):
        load_distribution({"head": -1.0})
    with pytest.raises(ValueError, match="neither a preset"):
        load_distribution("no_such_preset")
    with pytest.raises(ValueError, match="part 'head' must be a number, got True"):
        load_distribution({"head": True})
    assert load_distribution({"head": "3e0"}) == {"head": 3.0}  # YAML 1.1 reads 3e0 as a string
    with pytest.warns(UserWarning, match="look like learning rates"):
        load_distribution({"embeddings": 2e-5, "head": 6e-5})
    with pytest.raises(ValueError, match="param_grouping='parts'"):
        TinyRegression(lr_distribution="flat", param_grouping="decay")
    assert issubclass(TinyRegression, ClosureModule)


def test_a_schedule_on_a_line_search_resumes_where_it_stood():
    from torch.optim.lr_scheduler import ExponentialLR

    from lsframe.optim import StepSizeSchedule

    def build():
        opt = SaLSA(part_groups(tiny_bert(2)))
        apply_part_multipliers(
            opt, {"embeddings": 2.0, "layers_0": 1.0, "layers_1": 1.0, "head": 1.0}
        )
        return opt, StepSizeSchedule(opt, lambda o: ExponentialLR(o, gamma=0.5))

    opt, schedule = build()
    for _ in range(3):
        schedule.step()
    assert opt.param_groups[0]["lr_multiplier"] == pytest.approx(2.0 * 0.125)
    state = schedule.state_dict()
    opt2, schedule2 = build()
    schedule2.load_state_dict(state)
    assert opt2.param_groups[0]["lr_multiplier"] == pytest.approx(2.0 * 0.125)
    schedule2.step()
    assert opt2.param_groups[0]["lr_multiplier"] == pytest.approx(2.0 * 0.0625)
    assert opt2.param_groups[1]["lr_multiplier"] == pytest.approx(0.0625)


def test_combine_names_its_inputs_in_its_errors(tmp_path, capsys):
    # positions (#0, #1) and the key lr_distribution, which combine does not have, named them
    from lsframe.__main__ import main

    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("head: 2\nlayers_0-1: 0.5\n")
    second.write_text("head: 2\nembeddings: 0.5\n")
    for argv, line in (
        ([first, tmp_path / "gone.yaml"], "(argument 2 of lsframe combine)"),
        ([first, second], f"{first} has ['head', 'layers_0-1'], {second} has ['embeddings'"),
        (["flat", second, first], f"{second} has ['embeddings', 'head'], {first} has"),
    ):
        with pytest.raises(SystemExit):
            main(["combine", *map(str, argv)])
        assert line in capsys.readouterr().err
    main(["combine", "flat", str(first)])
    assert "head: 1.414" in capsys.readouterr().out


def test_unknown_parts_in_a_distribution_file_name_the_file(tmp_path):
    file = tmp_path / "parts.yaml"
    file.write_text("decoder: 2\n")
    with pytest.raises(ValueError, match="unknown parts") as info:
        multipliers_for(tiny_bert(2), str(file))
    assert info.value.where == str(file)


def test_combine_refuses_what_it_would_combine_wrongly_and_keeps_a_frozen_part_frozen(
    tmp_path, capsys
):
    from lsframe.__main__ import main

    def file(name: str, text: str | bytes, base_lr: float | None = None) -> str:
        path = tmp_path / name
        header = "" if base_lr is None else f"# best (lsframe search); base_lr {base_lr:g}, x\n"
        path.write_bytes(header.encode() + (text.encode() if isinstance(text, str) else text))
        return str(path)

    a = file("a.yaml", "head: 2\nembeddings: 0.5\n", 5e-5)
    cases = (
        (
            [a, file("b.yaml", "head: 2\nembeddings: 1\n", 2e-5)],
            "to 2e-05; combine distributions searched",
        ),
        ([a, a, "--out", str(tmp_path)], f"{tmp_path} is a folder; name the YAML file"),
        ([a, file("dup.yaml", "head: 2\nhead: 3\nembeddings: 1\n")], "duplicate key 'head'"),
        ([a, file("latin.yaml", b"head: 2 # caf\xe9\nembeddings: 1\n")], "not UTF-8 text"),
        ([a, file("dup.json", '{"head": 2, "head": 3, "embeddings": 1}')], "duplicate key 'head'"),
        ([a, file("ones.yaml", "1: 2\n'1': 3\nhead: 1\n")], "part '1' is named twice"),
        ([a, a, "--out", str(tmp_path / "new") + "/"], "is a folder; name the YAML file"),
        ([a, a, "--out", a], "is one of the distributions to combine; write the result"),
    )
    for argv, message in cases:
        with pytest.raises(SystemExit):
            main(["combine", *argv])
        assert message in capsys.readouterr().err
    out = tmp_path / "c.yaml"
    main(["combine", a, file("zero.yaml", "head: 0\nembeddings: 2\n", 5e-5), "--out", str(out)])
    combined = load_distribution(str(out))
    assert combined == {"head": 0.0, "embeddings": 1.0}  # was 7e-151: a frozen part stays 0
    assert base_lr_of(out) == 5e-5
    capsys.readouterr()
    main(["combine", a, a])
    assert capsys.readouterr().out == "head: 2.0\nembeddings: 0.5\n"  # not 2.0000000000000004
