"""``lsframe predict`` writes what it computes (one JSON line per example) and refuses, before
anything loads, a module or DataModule that cannot predict."""

from __future__ import annotations

import json

import lightning.pytorch as pl
import pytest
import torch
from helpers import trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lsframe.callbacks import PredictionWriter
from lsframe.config_checks import check_predicts
from lsframe.errors import ConfigError


class Classifier(pl.LightningModule):
    label_names = ("no", "yes")

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 2)

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        probabilities = self.layer(batch[0]).softmax(-1)
        return {"labels": probabilities.argmax(-1), "probabilities": probabilities}


def test_every_example_gets_one_line_with_its_index_label_name_and_probabilities(tmp_path):
    torch.manual_seed(0)
    inputs = torch.randn(10, 3)
    module = Classifier()
    writer = PredictionWriter(output_dir=str(tmp_path))
    loader = DataLoader(TensorDataset(inputs), batch_size=4)
    returned = trainer(callbacks=[writer]).predict(module, loader)
    lines = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [line["index"] for line in lines] == list(range(10))
    labels = torch.cat([batch["labels"] for batch in returned]).tolist()
    assert [line["label"] for line in lines] == labels
    assert [line["label_name"] for line in lines] == [("no", "yes")[k] for k in labels]
    expected = module.layer(inputs).softmax(-1)
    torch.testing.assert_close(torch.tensor([line["probabilities"] for line in lines]), expected)


def test_a_second_predict_to_the_same_file_keeps_the_first_under_a_numbered_name(tmp_path, capsys):
    # with trainer.logger false (or one output_dir) a second predict overwrote the first's file
    def predict(n: int) -> str:
        loader = DataLoader(TensorDataset(torch.randn(n, 3)), batch_size=4)
        trainer(callbacks=[PredictionWriter(output_dir=str(tmp_path))]).predict(
            Classifier(), loader
        )
        return capsys.readouterr().out

    predict(6)
    first = (tmp_path / "predictions.jsonl").read_text()
    printed = predict(3)
    assert (tmp_path / "predictions.1.jsonl").read_text() == first
    assert len((tmp_path / "predictions.jsonl").read_text().splitlines()) == 3
    assert f"3 predictions written to {tmp_path / 'predictions.jsonl'}" in printed
    assert "kept as predictions.1.jsonl" in printed
    second = (tmp_path / "predictions.jsonl").read_text()
    assert "kept as predictions.2.jsonl" in predict(5)
    assert (tmp_path / "predictions.2.jsonl").read_text() == second
    assert (tmp_path / "predictions.1.jsonl").read_text() == first


class TwoSets(pl.LightningDataModule):
    eval_names = ["matched", "mismatched"]

    def predict_dataloader(self):
        return [DataLoader(TensorDataset(torch.randn(n, 3)), batch_size=2) for n in (3, 4)]


def test_several_predict_sets_are_told_apart_by_their_names(tmp_path):
    # MNLI's matched and mismatched went to one file with indices 0.. twice and no set name
    writer = PredictionWriter(output_dir=str(tmp_path))
    trainer(callbacks=[writer]).predict(Classifier(), datamodule=TwoSets())
    lines = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [(line["set"], line["index"]) for line in lines] == [
        *(("matched", i) for i in range(3)),
        *(("mismatched", i) for i in range(4)),
    ]


class WithForward(pl.LightningModule):
    """No predict_step of its own: Lightning's calls forward on the batch."""

    def forward(self, batch):
        return batch


def node(class_path: str) -> dict:
    return {"class_path": class_path, "init_args": {}}


def test_predict_is_refused_for_a_module_or_data_without_a_predict_step_or_loader():
    text = node("lsframe.data.GlueDataModule")
    with pytest.raises(ConfigError, match="CausalLMModule has no predict_step") as error:
        check_predicts({"model": node("lsframe.modules.CausalLMModule"), "data": text})
    assert error.value.where == "model.class_path"
    with pytest.raises(ConfigError, match="TextFileLMDataModule has no predict_dataloader"):
        check_predicts(
            {
                "model": node("lsframe.modules.SequenceClassificationModule"),
                "data": node("lsframe.data.TextFileLMDataModule"),
            }
        )
    for model, data in (
        ("lsframe.modules.SequenceClassificationModule", "lsframe.data.GlueDataModule"),
        ("lsframe.modules.ImageClassificationModule", "lsframe.data.IdxImageDataModule"),
        ("test_predict.WithForward", "lsframe.data.GlueDataModule"),  # Lightning's default step
    ):
        check_predicts({"model": node(model), "data": node(data)})


def test_a_folder_where_the_predictions_file_goes_is_one_error_naming_it(tmp_path):
    from lsframe.errors import DataError

    (tmp_path / "predictions.jsonl").mkdir()
    loader = DataLoader(TensorDataset(torch.randn(4, 3)), batch_size=4)
    with pytest.raises(
        DataError, match="the predictions file is a folder: move it away"
    ) as refused:
        trainer(callbacks=[PredictionWriter(output_dir=str(tmp_path))]).predict(
            Classifier(), loader
        )
    assert refused.value.where == str(tmp_path / "predictions.jsonl")
