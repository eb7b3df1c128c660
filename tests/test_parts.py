"""Model parts: the BERT-base split of the papers, any depth, any family, each parameter once."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from lsframe.parts import part_groups, split_into_parts


def tiny_bert(layers: int) -> torch.nn.Module:
    config = BertConfig(
        vocab_size=50,
        hidden_size=8,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
    )
    return BertForSequenceClassification(config)


def layers_of(part) -> set[int]:
    return {
        int(n.split("encoder.layer.")[1].split(".")[0]) for n in part.names if "encoder.layer." in n
    }


def test_bert_base_depth_gives_the_papers_ten_parts():
    parts = split_into_parts(tiny_bert(12), num_parts=10)
    assert [p.name for p in parts] == [
        "embeddings",
        "layers_0-1",
        "layers_2",
        "layers_3-4",
        "layers_5",
        "layers_6-7",
        "layers_8",
        "layers_9-10",
        "layers_11",
        "head",
    ]
    assert [layers_of(p) for p in parts[1:-1]] == [
        {0, 1},
        {2},
        {3, 4},
        {5},
        {6, 7},
        {8},
        {9, 10},
        {11},
    ]
    assert all(n.startswith("bert.embeddings") for n in parts[0].names)
    assert {n.split(".")[1] for n in parts[-1].names if n.startswith("bert.")} == {"pooler"}
    assert any(n.startswith("classifier") for n in parts[-1].names)


@pytest.mark.parametrize("layers, num_parts, expected", [(6, 10, 8), (24, 10, 10), (4, 4, 4)])
def test_every_trainable_parameter_is_in_exactly_one_part(layers, num_parts, expected):
    model = tiny_bert(layers)
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    parts = split_into_parts(model, num_parts)
    assert len(parts) == expected
    names = [n for p in parts for n in p.names]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(names) == sorted(trainable) and len(names) == len(set(names))


def test_models_without_a_layer_stack_use_their_children():
    model = torch.nn.Sequential(
        torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 3), torch.nn.Linear(3, 1)
    )
    # three children with parameters are the layers: floor(i * M / 3) with M = K - 2
    assert [len(g["params"]) for g in part_groups(model, num_parts=4)] == [4, 2]
    groups = part_groups(model, num_parts=5)
    assert [len(g["params"]) for g in groups] == [2, 2, 2]
    assert all(g["part"] == g["name"] for g in groups)


def test_too_few_parts_is_an_error():
    with pytest.raises(ValueError, match="num_parts"):
        split_into_parts(tiny_bert(2), num_parts=2)
