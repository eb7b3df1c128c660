"""Model parts: the BERT-base split of the papers, any depth, any family, each parameter once."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

from lsframe.parts import layer_stack_parameters, part_groups, split_into_parts, weight_matrices


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


def test_dps_selection_in_bert_is_the_papers_matrices():
    names = [n for n, _ in weight_matrices(tiny_bert(2))]
    per_layer = [
        "attention.self.query.weight",
        "attention.self.key.weight",
        "attention.self.value.weight",
        "attention.output.dense.weight",
        "intermediate.dense.weight",
        "output.dense.weight",
    ]
    expected = [f"bert.encoder.layer.{i}.{n}" for i in range(2) for n in per_layer]
    assert names == expected + ["bert.pooler.dense.weight", "classifier.weight"]
    assert [n for n, _ in weight_matrices(tiny_bert(2), exclude=["classifier"])][-1] == (
        "bert.pooler.dense.weight"
    )
    only = weight_matrices(tiny_bert(2), include=[r"query\.weight$"])
    assert [n for n, _ in only] == [f"bert.encoder.layer.{i}.{per_layer[0]}" for i in range(2)]


def test_dps_selection_in_gpt2_takes_conv1d_and_skips_the_tied_head():
    config = GPT2Config(vocab_size=40, n_positions=16, n_embd=8, n_layer=2, n_head=2)
    names = [n for n, _ in weight_matrices(GPT2LMHeadModel(config))]
    per_layer = ["attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"]
    assert names == [f"transformer.h.{i}.{n}" for i in range(2) for n in per_layer]


def test_child_tuning_selection_is_the_layer_stack():
    model = tiny_bert(2)
    names = [n for n, _ in layer_stack_parameters(model)]
    stack = [n for n, _ in model.named_parameters() if n.startswith("bert.encoder.layer.")]
    assert names == stack and any(n.endswith("LayerNorm.bias") for n in names)
