"""GLUE: every task's file format, malformed files, GLUE's metrics, and training runs offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_cli import ROOT, scalars

from lsframe.__main__ import main
from lsframe.data import GLUE_TASKS, GlueDataModule, read_glue_tsv
from lsframe.data.glue import glue_task
from lsframe.modules.classification import task_metrics

# (task, split file, examples, count of label 0) of the real files in ../shared/data/glue
REAL = [
    ("sst2", "train.tsv", 67349, 29780),
    ("sst2", "dev.tsv", 872, 428),
    ("mrpc", "train.tsv", 3668, 1194),
    ("mrpc", "dev.tsv", 408, 129),
    ("rte", "train.tsv", 2490, 1249),  # label 0 = entailment, as in HF datasets
    ("rte", "dev.tsv", 277, 146),
    ("qnli", "dev.tsv", 5463, 2702),
]


@pytest.mark.parametrize(("task", "name", "count", "zeros"), REAL)
def test_real_glue_files_parse_with_the_official_counts(shared_data, task, name, count, zeros):
    spec = glue_task(task)
    examples = read_glue_tsv(shared_data / "glue" / spec.directory / name, spec)
    assert len(examples.labels) == count
    assert examples.labels.count(0) == zeros
    assert (examples.text_pair is None) == (task == "sst2")
    assert all(examples.text) and (examples.text_pair is None or all(examples.text_pair))


# Written fixtures in the GLUE layout for the tasks whose files are not in ../shared/data
FIXTURES = {
    "CoLA/train.tsv": "gj04\t1\t\tOur friends won't buy this analysis.\n"
    "gj04\t0\t*\tThey drank the pub.\n"
    "gj04\t1\t\tThe sailors rode the breeze clear of the rocks.\n",
    "STS-B/train.tsv": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\t"
    "sentence2\tscore\n"
    "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane is taking off.\t"
    "An air plane is taking off.\t5.000\n"
    "1\tmain-captions\tMSRvid\t2012test\t0004\tnone\tnone\tA man is playing a flute.\t"
    "A man is playing a bamboo flute.\t3.800\n",
    "MNLI/dev_matched.tsv": "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tgold_label\n"
    "0\t1\t1e\tgov\tThe new rights are nice.\tEveryone likes the rights.\tneutral\n"
    "1\t2\t2c\tgov\tThis site has statistics.\tThe site has no statistics.\tcontradiction\n",
    "MNLI/dev_mismatched.tsv": "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tgold_label\n"
    "0\t3\t3e\tletters\tYour gift is appreciated.\tWe thank you for the gift.\tentailment\n",
    "QQP/train.tsv": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
    "1\t3\t4\tHow do I learn Python?\tWhat is the best way to learn Python?\t1\n"
    "2\t5\t6\tWhy is the sky blue?\tHow tall is Everest?\t0\n",
    "WNLI/train.tsv": "index\tsentence1\tsentence2\tlabel\n"
    "0\tI stuck a pin through a carrot. When I pulled the pin out, it had a hole.\t"
    "The carrot had a hole.\t1\n",
}


@pytest.fixture
def glue_dir(tmp_path: Path) -> Path:
    for name, text in FIXTURES.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize(
    ("task", "name", "labels", "pairs"),
    [
        ("cola", "CoLA/train.tsv", [1, 0, 1], False),
        ("stsb", "STS-B/train.tsv", [5.0, 3.8], True),
        ("mnli", "MNLI/dev_matched.tsv", [1, 2], True),
        ("mnli", "MNLI/dev_mismatched.tsv", [0], True),
        ("qqp", "QQP/train.tsv", [1, 0], True),
        ("wnli", "WNLI/train.tsv", [1], True),
    ],
)
def test_each_glue_format_parses(glue_dir, task, name, labels, pairs):
    examples = read_glue_tsv(glue_dir / name, glue_task(task))
    assert examples.labels == labels
    assert (examples.text_pair is not None) == pairs
    if task == "cola":
        assert examples.text[1] == "They drank the pub."


def test_every_task_has_a_spec_and_hf_label_order():
    assert set(GLUE_TASKS) == {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"}
    assert GLUE_TASKS["mnli"].labels == ("entailment", "neutral", "contradiction")
    assert GLUE_TASKS["stsb"].num_labels == 1 and GLUE_TASKS["mnli"].num_labels == 3
    assert glue_task("SST-2") is GLUE_TASKS["sst2"]
    with pytest.raises(ValueError, match="unknown GLUE task 'sst3'.*cola"):
        glue_task("sst3")


@pytest.mark.parametrize(
    ("task", "text", "message"),
    [
        (
            "sst2",
            "sentence\tlabel\ngood film\t1\nbad\tfilm\t0\n",
            r"3 columns, expected 2 \(.*train\.tsv:3\)",
        ),
        (
            "sst2",
            "sentence\tlabel\ngood film\t1\nbad film\tneg\n",
            r"label 'neg' is not one of .*\(.*train\.tsv:3\)",
        ),
        (
            "stsb",
            "sentence1\tsentence2\tscore\na\tb\tfive\n",
            r"score 'five' is not a number \(.*train\.tsv:2\)",
        ),
        (
            "stsb",
            "sentence1\tsentence2\tscore\na\tb\t4.2\nc\td\tnan\n",
            r"score 'nan' is not a finite number in \[0, 5\] \(STS-B\) \(.*train\.tsv:3\)",
        ),
        (
            "stsb",
            "sentence1\tsentence2\tscore\na\tb\t7.5\n",
            r"score '7.5' is not a finite number in \[0, 5\] \(STS-B\) \(.*train\.tsv:2\)",
        ),
        ("rte", "index\tpremise\tlabel\n", r"header .* lacks a column .*\(.*train\.tsv:1\)"),
        ("cola", "gj04\t1\tthree columns only\n", r"3 columns, expected 4 \(.*train\.tsv:1\)"),
    ],
)
def test_malformed_files_name_the_file_and_line(tmp_path, task, text, message):
    path = tmp_path / "train.tsv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        read_glue_tsv(path, glue_task(task))
    assert str(path) in str(info.value)


def test_missing_data_dir_and_file_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.data_dir"):
        GlueDataModule("rte", data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="RTE/train.tsv"):
        GlueDataModule("rte", data_dir=str(tmp_path)).load_split("train")


def test_metrics_match_hand_computed_values():
    pred, target = torch.tensor([1, 1, 0, 0, 1, 0]), torch.tensor([1, 0, 0, 1, 1, 0])
    # tp=2 fp=1 fn=1 tn=2: acc 4/6, f1 2*2/(2*2+1+1) = 2/3, mcc (2*2-1*1)/sqrt(3*3*3*3) = 1/3
    scores = task_metrics(["acc", "f1", "mcc"], 2)(pred, target)
    assert float(scores["acc"]) == pytest.approx(4 / 6)
    assert float(scores["f1"]) == pytest.approx(2 / 3)
    assert float(scores["mcc"]) == pytest.approx(1 / 3)
    # regression: pearson of (1,2,3,4) vs (1,3,2,4) = 0.8; spearman of ranks, the same here
    x, y = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, 3.0, 2.0, 4.0])
    scores = task_metrics(["pearson", "spearman"], 1)(x, y)
    assert float(scores["pearson"]) == pytest.approx(0.8)
    assert float(scores["spearman"]) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="model.metrics: unknown metric 'bleu'"):
        task_metrics(["bleu"], 2)
    with pytest.raises(ValueError, match="'pearson' needs a regression head"):
        task_metrics(["pearson"], 2)


def fit_glue(args: list[str], runs: Path) -> None:
    main(
        [
            "fit",
            "--config",
            str(ROOT / "configs" / "glue" / "minilm.yaml"),
            "--trainer.max_steps",
            "3",
            "--trainer.log_every_n_steps",
            "1",
            "--trainer.logger.init_args.save_dir",
            str(runs),
            "--data.max_length",
            "32",
            "--data.val_limit",
            "16",
            *args,
        ]
    )


def test_minilm_trains_on_real_rte_and_reports_accuracy(minilm, shared_data, tmp_path, capsys):
    runs = tmp_path / "runs"
    fit_glue(["--data.data_dir", str(shared_data / "glue"), "--data.train_limit", "48"], runs)
    logged = scalars(runs / "glue_minilm" / "version_0")
    assert len(logged["train/loss"]) == 3 and {"val/acc", "step_size/decay"} <= set(logged)
    assert "val/acc = " in capsys.readouterr().out


def test_regression_and_two_dev_sets_from_written_files(minilm, glue_dir, tmp_path, capsys):
    runs = tmp_path / "runs"
    stsb = ["--data.task_name", "stsb", "--data.data_dir", str(glue_dir)]
    (glue_dir / "STS-B" / "dev.tsv").write_text(FIXTURES["STS-B/train.tsv"])
    with pytest.raises(SystemExit) as refused:  # before the weights load: no run directory
        fit_glue([*stsb, "--model.num_labels", "2"], runs)
    assert refused.value.code == 2
    assert (
        "lsframe fit: error: num_labels is 2 but the data (GlueDataModule) has 1: set it to 1 "
        "(model.init_args.num_labels)"
    ) in capsys.readouterr().err.splitlines()
    assert not runs.exists()
    fit_glue(stsb, runs)  # num_labels follows the task (data.num_labels is linked)
    logged = scalars(runs / "glue_minilm" / "version_0")
    assert {"val/pearson", "val/spearman", "val/loss"} <= set(logged)
    assert "best checkpoint (val/pearson = " in capsys.readouterr().out

    mnli = glue_dir / "MNLI"
    (mnli / "train.tsv").write_text((mnli / "dev_matched.tsv").read_text())
    fit_glue(
        ["--data.task_name", "mnli", "--data.data_dir", str(glue_dir)],
        runs,
    )
    logged = scalars(runs / "glue_minilm" / "version_1")
    assert {"val/acc", "val_mismatched/acc"} <= set(logged)
    closing = capsys.readouterr().out.split("lsframe: fit finished")[-1]
    assert "  val/acc = " in closing and "  val_mismatched/acc = " in closing  # both sets


def test_a_max_length_with_no_room_for_the_text_is_refused_at_its_key(minilm):
    # below the special tokens a sentence was not truncated at all, and every RTE pair became
    # [CLS] [SEP] [SEP]
    from lsframe.data.examples import TextExamples
    from lsframe.data.text import TokenizedDataset
    from lsframe.errors import ConfigError
    from lsframe.hub import load_tokenizer

    tokenizer = load_tokenizer(minilm)
    single = TextExamples(["a fine film"], [1])
    pair = TextExamples(["A man plays."], [0], ["Music is played."])
    for examples, short, enough in ((single, 2, 3), (pair, 4, 5)):
        with pytest.raises(ConfigError, match=f"data.max_length {short} leaves no room") as error:
            TokenizedDataset(examples, tokenizer, short)
        assert error.value.argument == "data.max_length"
        assert error.value.where == "data.init_args.max_length"  # as every other data key
        item = TokenizedDataset(examples, tokenizer, enough)[0]
        assert len(item["input_ids"]) == enough
