"""The quality benchmark's runs (``benchmarks.quality``): its run log (resumed, shared by two
invocations, cut short), its arguments refused before anything loads, bf16 runs, held-out tasks
and the machines a table names."""

from __future__ import annotations

import pytest
import torch
from quality_helpers import row


def tiny_quality_argv(out) -> list[str]:
    """``benchmarks.quality``'s command line for one AdamW run on 8 RTE examples, logged at
    ``out``."""
    argv = ["quality", "--task", "rte", "--train-limit", "8", "--batch-size", "4"]
    argv += ["--max-length", "32", "--seeds", "0", "--optimizers", "adamw@1e-4"]
    return argv + ["--no-schedulefree", "--device", "cpu", "--out", str(out)]


def test_a_runs_steps_count_each_epochs_partial_last_batch():
    from benchmarks.quality import SETTINGS, most_steps, run_steps

    assert run_steps(2000, 16, 3) == 3 * 125
    assert run_steps(2001, 16, 3) == 3 * 126
    for setting, values in SETTINGS.items():  # a full DataLoader over the setting's examples
        loader = torch.utils.data.DataLoader(range(values["train_limit"]), values["batch_size"])
        assert most_steps(setting) == values["epochs"] * len(loader)


def test_a_spec_whose_package_is_missing_stops_the_benchmark_before_any_run(tmp_path, monkeypatch):
    import importlib.util
    import sys

    from benchmarks import quality

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(  # prodigyopt not installed (CI installs lsframe without [bench])
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "prodigyopt" else real_find_spec(name, *a),
    )
    out = tmp_path / "quality_rte"
    argv = tiny_quality_argv(out)
    argv.insert(argv.index("--no-schedulefree"), "prodigy")
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit, match=r"'prodigy' needs the package 'prodigyopt': .*\[bench\]"):
        quality.main()
    assert not out.with_suffix(".runs.jsonl").exists()  # the AdamW run before it did not start
    from benchmarks.specs import check_installed

    with pytest.raises(SystemExit, match="'prodigy\\^heldout' needs the package 'prodigyopt'"):
        check_installed(["adamw@1e-4^heldout", "prodigy^heldout"])  # a held-out pilot's row


def test_quality_runs_in_bf16_are_logged_apart_and_their_table_says_so(
    minilm, shared_data, tmp_path, monkeypatch
):
    import json
    import sys

    from benchmarks import quality

    out = tmp_path / "quality_rte"
    argv = tiny_quality_argv(out)
    monkeypatch.setattr(sys, "argv", [*argv, "--bf16"])
    quality.main()
    monkeypatch.setattr(sys, "argv", argv)  # fp32: the bf16 run is not reused
    quality.main()
    logged = [json.loads(line) for line in out.with_suffix(".runs.jsonl").read_text().splitlines()]
    assert [r["bf16"] for r in logged] == [True, False]
    assert logged[0]["train_loss"] != logged[1]["train_loss"]  # bf16 rounding: another run
    result = json.loads(out.with_suffix(".json").read_text())
    assert [r["bf16"] for r in result["rows"]] == [False] and "; fp32;" in result["meta"]
    monkeypatch.setattr(sys, "argv", [*argv, "--bf16", "--table-only"])
    quality.main()
    result = json.loads(out.with_suffix(".json").read_text())
    assert [r["bf16"] for r in result["rows"]] == [True] and "bf16 autocast" in result["meta"]


def test_a_table_regenerated_elsewhere_names_the_machines_and_torch_versions_that_ran_its_runs(
    minilm, shared_data, tmp_path, monkeypatch
):
    import json
    import sys

    import torch

    from benchmarks import quality
    from benchmarks.common import machine

    out = tmp_path / "quality_rte"
    argv = tiny_quality_argv(out)
    monkeypatch.setattr(sys, "argv", argv)
    quality.main()
    log = out.with_suffix(".runs.jsonl")
    (row,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert row["machine"] == machine("cpu") and row["torch"] == torch.__version__
    meta = json.loads(out.with_suffix(".json").read_text())["meta"]
    assert f"device {machine('cpu')} (1 run)" in meta
    assert f"torch {torch.__version__} (1 run)." in meta
    # the same run as if another machine had logged it, and one from before machines were logged
    older = {k: v for k, v in row.items() if k not in ("machine", "torch")} | {"seed": 1}
    rows = [row | {"machine": "cpu: elsewhere", "torch": "2.11.0+cu130"}, older]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(sys, "argv", [*argv, "--seeds", "0", "1", "--table-only"])
    quality.main()
    meta = json.loads(out.with_suffix(".json").read_text())["meta"]
    assert "device cpu: elsewhere (1 run); not logged (1 run)," in meta
    assert "torch 2.11.0+cu130 (1 run); not logged (1 run)." in meta
    assert machine("cpu") not in meta and torch.__version__ not in meta


def test_a_quality_run_logs_each_steps_loss_the_ones_its_train_loss_averages(
    minilm, shared_data, tmp_path, monkeypatch
):
    import json
    import sys

    from benchmarks import quality

    out = tmp_path / "quality_rte"
    argv = tiny_quality_argv(out)
    argv[argv.index("--train-limit") + 1] = "20"  # 5 steps of 4: the tail is the last one
    monkeypatch.setattr(sys, "argv", argv)
    quality.main()
    (row,) = [json.loads(line) for line in out.with_suffix(".runs.jsonl").read_text().splitlines()]
    losses = row["per_step"]["loss"]
    assert len(losses) == len(row["per_step"]["step_size"]["0"]) == 5
    assert len(set(losses)) == 5 and all(0.0 < x < 5.0 for x in losses)
    assert losses[-1] == pytest.approx(row["train_loss"], rel=1e-3)  # 4 digits kept


def test_a_held_out_task_without_a_training_set_trains_and_evaluates_on_disjoint_dev_rows():
    from benchmarks.common import DEV_SPLIT, GLUE_DIR, glue_examples
    from lsframe.data.glue import glue_task, read_glue_tsv

    whole = read_glue_tsv(GLUE_DIR / "QNLI" / "dev.tsv", glue_task("qnli"))
    train, dev = glue_examples("qnli", "train"), glue_examples("qnli", "dev")
    assert len(train.text) == DEV_SPLIT["qnli"] == 2000
    assert train.text + dev.text == whole.text and train.labels + dev.labels == whole.labels
    assert train.text_pair + dev.text_pair == whole.text_pair
    assert glue_examples("qnli", "train", 500).text == train.text[:500]
    with pytest.raises(SystemExit, match="first 2000 of its dev.tsv"):
        glue_examples("qnli", "train", 2001)


def test_a_run_log_cut_short_resumes_and_a_bad_line_elsewhere_names_its_line(tmp_path, capsys):
    from benchmarks.common import append_run, read_run_log

    log = tmp_path / "x.runs.jsonl"
    log.write_text('{"optimizer": "a", "seed": 0}\n{"optimizer": "b", "se')  # killed mid-write
    assert read_run_log(log) == [{"optimizer": "a", "seed": 0}]
    assert "x.runs.jsonl:2: a cut-short last line, left out" in capsys.readouterr().out
    append_run(log, {"optimizer": "c", "seed": 1}, device="cpu")  # on a line of its own
    assert [r["optimizer"] for r in read_run_log(log)] == ["a", "c"]
    log.write_text('{"optimizer": "a"}\nnot json\n{"optimizer": "b"}\n')
    with pytest.raises(SystemExit, match=r"x.runs.jsonl:2: not a JSON row"):
        read_run_log(log)


def test_benchmark_arguments_are_refused_in_one_line_before_anything_loads():
    import argparse

    from benchmarks.common import positive_int
    from benchmarks.specs import check_specs

    assert positive_int("3") == 3
    for bad in ("0", "-5", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected an integer >= 1"):
            positive_int(bad)
    check_specs(["adamw@5e-5", "slope_tracking_adam", "adamw@1e-4^late_half"])
    for spec, message in (("bogus", "unknown optimizer spec"), ("adamw@abc", "could not convert")):
        with pytest.raises(SystemExit, match=f"optimizer spec '{spec}': {message}"):
            check_specs([spec])


def test_a_quality_table_holds_what_another_invocation_logged_meanwhile_and_no_other_tasks(
    minilm, shared_data, tmp_path, monkeypatch
):
    # the task was no logged setting (an MRPC table showed RTE's runs), and the table was built
    # from the log as it stood at the start (two invocations at once each dropped the other's)
    import json
    import sys

    from benchmarks import quality
    from benchmarks.common import append_run

    out = tmp_path / "quality_rte"
    log = tmp_path / "quality_rte.runs.jsonl"
    tiny = {"train_limit": 8, "batch_size": 4, "epochs": 1, "max_length": 32, "bf16": False}
    append_run(log, {**row("adamw@1e-5", 0, 0.9), **tiny, "task": "mrpc"}, device="cpu")

    def one_run(spec, seed, args, *data):
        meanwhile = {**row("adamw@5e-5", seed, 0.6), **quality.run_settings(args)}
        append_run(args.log, meanwhile, device="cpu")  # another invocation's run
        made = {**row(spec, seed, 0.55), **quality.run_settings(args)}
        append_run(args.log, made, device="cpu")
        return made

    monkeypatch.setattr(quality, "one_run", one_run)
    monkeypatch.setattr(sys, "argv", tiny_quality_argv(out))
    quality.main()
    result = json.loads((tmp_path / "quality_rte.json").read_text())
    assert sorted(r["optimizer"] for r in result["rows"]) == ["adamw@1e-4", "adamw@5e-5"]


def test_a_logs_last_row_without_a_newline_is_kept_and_the_next_row_starts_a_line(tmp_path):
    from benchmarks.common import append_run, read_run_log

    log = tmp_path / "x.runs.jsonl"
    log.write_text('{"optimizer": "a", "seed": 0}\n{"optimizer": "b", "seed": 0}')  # by hand
    append_run(log, {"optimizer": "c", "seed": 1}, device="cpu")
    assert [r["optimizer"] for r in read_run_log(log)] == ["a", "b", "c"]


def test_an_out_with_dots_keeps_its_own_log_and_tables():
    from pathlib import Path

    from benchmarks.common import beside

    assert beside(Path("r/q_v1.1"), ".runs.jsonl") == Path("r/q_v1.1.runs.jsonl")
    assert beside(Path("r/q_v1.1"), ".md") != beside(Path("r/q_v1.2"), ".md")


def test_a_setting_refuses_an_explicit_value_it_fixes(tmp_path, monkeypatch, capsys):
    import sys

    from benchmarks import quality

    argv = ["quality", "--setting", "S", "--task", "rte", "--train-limit", "64", "--table-only"]
    argv += ["--out", str(tmp_path / "quality_s_rte")]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit):
        quality.main()
    assert "--setting S fixes --train-limit to 500, got 64" in capsys.readouterr().err
