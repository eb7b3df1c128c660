"""The bad-input cases of ``tests/test_bad_input.py`` about config files and keys (part of
``CASES`` in bad_input_cases.py): a config file that does not read, an unknown key or option, a
value of the wrong type, an option given before its class. ``{line[text]}`` in an expected line
is the line of the case's ``bad.yaml`` that holds ``text``."""

from __future__ import annotations

from bad_input_helpers import FIT_HELP, OPT, Args, fit

# fmt: off
# name: (command line builder, exit status, stderr after "lsframe fit: error: ")
CONFIG_CASES: dict[str, tuple[Args, int, str]] = {
    "yaml syntax": (
        fit(text="trainer:\n  max_steps: [1\nmodel: {}\n"), 2,
        "YAML syntax error: expected ',' or ']', but got ':', while parsing a flow sequence "
        f"from line 2, column 14 ({{tmp}}/bad.yaml:3:6){FIT_HELP}"),
    "duplicate key": (
        fit(text="trainer:\n  max_steps: 1\nmodel: {}\ntrainer:\n  max_epochs: 1\n"), 2,
        "duplicate key 'trainer' (first on line 1): YAML would keep only the second, and drop "
        f"every setting under the first ({{tmp}}/bad.yaml:4){FIT_HELP}"),
    "config file a list": (fit(text="- trainer\n- model\n"), 2,
                           "config file is a list, expected a mapping of sections (trainer:, "
                           f"model:, ...) ({{tmp}}/bad.yaml){FIT_HELP}"),
    "config file empty": (fit(text=""), 2,
                          "config file is empty, expected a mapping of sections (trainer:, "
                          f"model:, ...) ({{tmp}}/bad.yaml){FIT_HELP}"),
    "config file missing": (lambda tmp: ["fit", "--config", str(tmp / "nope.yaml")], 2,
                            f"config file not found ({{tmp}}/nope.yaml){FIT_HELP}"),
    "a config value that is neither a file nor a YAML mapping": (
        fit("--config", "glue_minilm"), 2, f"config file not found (glue_minilm){FIT_HELP}"),
    "an inline config that is a list": (
        fit("--config", "[{tmp}/a.yaml]"), 2,
        f"inline --config is a list, expected a mapping ([{{tmp}}/a.yaml]){FIT_HELP}"),
    "unknown key": (
        fit(trainer__max_stepz=3), 2,
        "unknown key 'max_stepz', did you mean 'max_steps'? "
        f"(trainer.max_stepz in {{tmp}}/bad.yaml:{{line[max_stepz: 3]}}){FIT_HELP}"),
    "unknown section": (
        fit(trainr__max_steps=3), 2,
        f"unknown key 'trainr', did you mean 'trainer'? (trainr in {{tmp}}/bad.yaml:{{line[trainr:]}}){FIT_HELP}"),
    "unknown nested key": (
        fit(model__init_args__num_lables=3), 2,
        "unknown key 'num_lables', did you mean 'num_labels'? (model.init_args.num_lables in "
        "{tmp}/bad.yaml:{line[num_lables: 3]})" + FIT_HELP),
    "unknown key in a callback of a list": (
        fit(trainer__callbacks=[{"class_path": "lightning.pytorch.callbacks.LearningRateMonitor"},
                                {"class_path": "lsframe.callbacks.ChildTuningD",
                                 "init_args": {"reserve_q": 0.2}}]), 2,
        "unknown key 'reserve_q', did you mean 'reserve_p'? "
        f"(trainer.callbacks[1].init_args.reserve_q in {{tmp}}/bad.yaml:{{line[reserve_q: 0.2]}}){FIT_HELP}"),
    "an option before the --config that gives its class": (
        lambda tmp: ["fit", "--data.init_args.batch_size", "8", *fit()(tmp)[1:]], 2,
        "--data.init_args.batch_size comes before the class of data, which --config "
        "{tmp}/bad.yaml gives: put --config {tmp}/bad.yaml first (the arguments apply in order) "
        f"(data.init_args.batch_size){FIT_HELP}"),
    "an optimizer option before the --config that gives its class": (
        lambda tmp: ["fit", "--model.optimizer.lr", "0.1", *fit()(tmp)[1:]], 2,
        "--model.optimizer.lr comes before the class of model.optimizer, which --config "
        "{tmp}/bad.yaml gives: put --config {tmp}/bad.yaml first (the arguments apply in order) "
        f"({OPT}.lr){FIT_HELP}"),
    "an unknown key in a stacked config file names that file": (
        fit("--config", "{tmp}/more.yaml", files={"more.yaml": "data:\n  batch_sise: 8\n"}), 2,
        "unknown key 'batch_sise', did you mean 'batch_size'? "
        f"(data.init_args.batch_sise in {{tmp}}/more.yaml:2){FIT_HELP}"),
    "a wrong type in the second of two stacked files names the second": (
        fit("--config", "{tmp}/more.yaml", "--trainer.max_steps", "4",
            files={"more.yaml": "seed_everything: 1\ntrainer:\n  max_steps: two\n"}), 2,
        f"expected an integer, got 'two' (trainer.max_steps in {{tmp}}/more.yaml:3){FIT_HELP}"),
    "a wrong type on the command line names no file": (
        fit("--trainer.max_steps", "two"), 2,
        f"expected an integer, got 'two' (trainer.max_steps){FIT_HELP}"),
    "unknown option": (
        fit("--trainer.max_stepz", "3"), 2,
        "unknown option '--trainer.max_stepz', did you mean '--trainer.max_steps'? "
        f"(trainer.max_stepz){FIT_HELP}"),
}
# fmt: on
