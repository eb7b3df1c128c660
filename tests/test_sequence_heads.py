"""Tasks of different numbers of classes in one sequence (P3's pairs with MNLI): under
``heads: separate`` each task's head has its own stage's count; under ``shared`` the config is
refused in one line naming both stages."""

from __future__ import annotations

import json

import pytest
import torch
from bad_input_helpers import search, sequence, write

from lsframe.errors import ConfigError
from lsframe.sequential import build_parser, check_sequence_config

ROWS = [("A cat sat.", "An animal sat."), ("It rains.", "The sun shines."), ("I ran.", "I moved.")]
MNLI = ["entailment", "neutral", "contradiction"]
HEADER = "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tgold_label\n"


def two_and_three_class_tasks(tmp) -> None:
    """RTE (2 classes) and an MNLI-like task (3) in the GLUE layout, 8 rows per file."""
    rte = "index\tsentence1\tsentence2\tlabel\n" + "".join(
        f"{i}\t{ROWS[i % 3][0]}\t{ROWS[i % 3][1]}\t{['entailment', 'not_entailment'][i % 2]}\n"
        for i in range(8)
    )
    mnli = HEADER + "".join(
        f"{i}\t0\t0\tfiction\t{ROWS[i % 3][0]}\t{ROWS[i % 3][1]}\t{MNLI[i % 3]}\n" for i in range(8)
    )
    for name in ("train.tsv", "dev.tsv"):
        write(tmp / "glue" / "RTE" / name, rte)
    for name in ("train.tsv", "dev_matched.tsv", "dev_mismatched.tsv"):
        write(tmp / "glue" / "MNLI" / name, mnli)


def rte_then_mnli(tmp, **changes) -> dict:
    config = sequence(**changes)(tmp)
    config["stages"] = [config["stages"][0], json.loads(json.dumps(config["stages"][0]))]
    for stage, task in zip(config["stages"], ("rte", "mnli"), strict=True):
        stage["name"] = task
        stage["data"]["init_args"].update(
            task_name=task, train_subsample=None, max_length=16, batch_size=4
        )
    config["trainer"].update(max_epochs=-1, max_steps=2, enable_progress_bar=False)
    return config


def test_a_two_class_then_a_three_class_task_each_train_evaluate_and_export_with_their_own_head(
    minilm, tmp_path
):
    from transformers import AutoModelForSequenceClassification

    from lsframe.__main__ import main

    two_and_three_class_tasks(tmp_path)
    ewc = {"class_path": "lsframe.callbacks.EWC", "init_args": {"fisher_batches": 1}}
    config = write(tmp_path / "c.yaml", rte_then_mnli(tmp_path, trainer__callbacks=[ewc]))
    out = tmp_path / "out"
    main(["sequential", "--config", str(config)])
    saved = json.loads((out / "accuracy_matrix.json").read_text())
    assert saved["matrix"][0][1] is None
    assert all(0.0 <= value <= 1.0 for value in saved["matrix"][1])
    heads = torch.load(out / "sequence_state.pt", weights_only=True)["heads"]
    assert heads["rte"]["weight"].shape[0] == 2 and heads["mnli"]["weight"].shape[0] == 3
    for stage, count in ((0, 2), (1, 3)):
        state = torch.load(out / f"stage_{stage}.ckpt", weights_only=True)
        assert state["state_dict"]["model.classifier.weight"].shape[0] == count
        fisher = state["callbacks"][next(iter(state["callbacks"]))]["tasks"][-1]["fisher"]
        assert fisher and not any(name.startswith("classifier.") for name in fisher)
    # a rerun resumes with each head at its size (nothing left to train): the same matrix
    main(["sequential", "--config", str(config)])
    assert json.loads((out / "accuracy_matrix.json").read_text()) == saved
    # each stage exports with its own task's classes
    for stage, names in ((0, ["entailment", "not_entailment"]), (1, MNLI)):
        main(["export", str(out / f"stage_{stage}.ckpt"), str(tmp_path / f"hf_{stage}")])
        exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / f"hf_{stage}")
        assert list(exported.config.id2label.values()) == names
        assert exported.classifier.weight.shape[0] == len(names)


def test_tasks_of_different_numbers_of_classes_under_one_shared_head_are_refused_naming_both(
    minilm, tmp_path
):
    # each message's remedy (set num_labels to 3; then to 2) led to the other
    two_and_three_class_tasks(tmp_path)
    for heads in ("shared", "separate"):
        path = write(tmp_path / "c.yaml", rte_then_mnli(tmp_path, heads=heads))
        parsed = build_parser().parse_args(["--config", str(path)])
        if heads == "separate":
            check_sequence_config(parsed)
            continue
        with pytest.raises(ConfigError) as refused:
            check_sequence_config(parsed)
        assert str(refused.value) == (
            "heads: shared gives every task one head, but stages[0].data (GlueDataModule) has 2 "
            "classes and stages[1].data (GlueDataModule) has 3: use heads: separate (each task "
            "a head of its own number of classes), or tasks of one number of classes (heads)"
        )


def test_a_search_pair_of_different_numbers_of_classes_is_checked_as_a_sequence_is(
    minilm, tmp_path
):
    # lsframe search builds its pairs with the same runner
    from lsframe.search import main

    two_and_three_class_tasks(tmp_path)
    config = search(heads="shared")(tmp_path)
    config["pairs"] = [rte_then_mnli(tmp_path)["stages"]]
    with pytest.raises(
        ConfigError, match=r"but pairs\[0\]\[0\]\.init_args\.data .* has 2 classes and "
    ):
        main(["--config", str(write(tmp_path / "c.yaml", config))])
