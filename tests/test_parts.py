"""Model parts: the BERT-base split of the papers, any depth, any family, each parameter once."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

from lsframe.parts import (
    find_layer_stack,
    layer_stack_parameters,
    part_groups,
    split_into_parts,
    weight_matrices,
)


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
    model = torch.nn.Module()  # not an nn.Sequential, whose last layer would be its head
    model.a, model.act = torch.nn.Linear(2, 3), torch.nn.ReLU()
    model.b, model.c = torch.nn.Linear(3, 3), torch.nn.Linear(3, 1)
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


# ------------------------------------------------------------------ any model: timm, classifiers
BERT_BASE_NAMES = [
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


def timm_model(name: str) -> torch.nn.Module:
    timm = pytest.importorskip("timm")
    return timm.create_model(name, pretrained=False)


def assert_each_trainable_parameter_once(model, parts):
    names = [n for p in parts for n in p.names]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(names) == sorted(trainable) and len(names) == len(set(names))


def test_a_timm_vit_gets_one_layer_per_block_and_its_head_as_head():
    model = timm_model("vit_tiny_patch16_224")
    parts = split_into_parts(model, num_parts=10)
    assert [p.name for p in parts] == BERT_BASE_NAMES  # 12 blocks, like BERT-base
    assert_each_trainable_parameter_once(model, parts)
    blocks = [{int(n.split(".")[1]) for n in p.names if n.startswith("blocks.")} for p in parts]
    assert blocks[1:-1] == [{0, 1}, {2}, {3, 4}, {5}, {6, 7}, {8}, {9, 10}, {11}]
    assert set(parts[0].names) >= {"cls_token", "pos_embed", "patch_embed.proj.weight"}
    assert parts[-1].names == ["head.weight", "head.bias"]
    biggest = max(sum(p.numel() for p in part.params) for part in parts)
    assert biggest < 0.2 * sum(p.numel() for p in model.parameters())
    assert find_layer_stack(model).num_layers == 12


def test_a_timm_resnet18_gets_a_stem_its_eight_basic_blocks_and_fc_as_head():
    model = timm_model("resnet18")
    parts = split_into_parts(model, num_parts=10)
    assert [p.name for p in parts] == ["embeddings", *(f"layers_{i}" for i in range(8)), "head"]
    assert_each_trainable_parameter_once(model, parts)
    blocks = [f"layer{stage}.{block}." for stage in range(1, 5) for block in range(2)]
    for part, block in zip(parts[1:-1], blocks):
        assert part.names and all(n.startswith(block) for n in part.names)
    assert {n.split(".")[0] for n in parts[0].names} == {"conv1", "bn1"}
    assert parts[-1].names == ["fc.weight", "fc.bias"]
    # fewer parts: the BasicBlocks are spread by the same floor(i * M / L)
    assert [p.name for p in split_into_parts(model, 6)][1:-1] == [
        "layers_0-1",
        "layers_2-3",
        "layers_4-5",
        "layers_6-7",
    ]


def test_child_tuning_selection_in_timm_models_is_their_blocks():
    names = [n for n, _ in layer_stack_parameters(timm_model("resnet18"))]
    assert names and all(n.startswith("layer") for n in names)
    vit = [n for n, _ in layer_stack_parameters(timm_model("vit_tiny_patch16_224"))]
    assert not any(n.startswith(("head", "patch_embed", "pos_embed", "cls_token")) for n in vit)


def test_the_bertcl_distribution_carries_over_to_a_vit_by_depth():
    from lsframe.lr_distribution import PRESETS, multipliers_for

    multipliers = multipliers_for(timm_model("vit_tiny_patch16_224"), "bertcl_combined")
    assert multipliers == PRESETS["bertcl_combined"]


class ClassifierFirst(torch.nn.Module):
    """A classifier registered before a Sequential stack, a norm after it."""

    def __init__(self, depth: int = 4) -> None:
        super().__init__()
        self.classifier = torch.nn.Linear(8, 2)
        self.embed = torch.nn.Linear(3, 8)
        self.blocks = torch.nn.Sequential(
            *(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU()) for _ in range(depth))
        )
        self.norm = torch.nn.LayerNorm(8)

    def forward(self, x):
        return self.classifier(self.norm(self.blocks(self.embed(x))))


def test_a_sequential_stack_counts_and_a_classifier_registered_first_is_the_head():
    model = ClassifierFirst(depth=4)
    parts = split_into_parts(model, num_parts=4)
    assert [p.name for p in parts] == ["embeddings", "layers_0-1", "layers_2-3", "head"]
    assert parts[0].names == ["embed.weight", "embed.bias"]
    assert parts[1].names[0] == "blocks.0.0.weight" and parts[2].names[-1] == "blocks.3.0.bias"
    assert parts[-1].names == [
        "classifier.weight",
        "classifier.bias",
        "norm.weight",
        "norm.bias",
    ]
    assert find_layer_stack(model) == ("blocks", 4)


def test_without_a_stack_a_frozen_top_level_layer_still_counts():
    model = torch.nn.Sequential(*(torch.nn.Linear(4, 4) for _ in range(4)))
    # a Sequential model's last layer is its head (rule 1)
    assert [p.name for p in split_into_parts(model)] == ["layers_0", "layers_1", "layers_2", "head"]
    model[0].requires_grad_(False)
    parts = split_into_parts(model)
    assert [(p.name, p.names[0]) for p in parts] == [
        ("layers_1", "1.weight"),
        ("layers_2", "2.weight"),
        ("head", "3.weight"),
    ]


def test_a_classifier_inside_the_stack_is_still_the_head():
    class Inside(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stack = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(3))
            self.stack.append(torch.nn.Linear(4, 2))

        def get_classifier(self) -> torch.nn.Module:
            return self.stack[3]

    model = Inside()
    parts = split_into_parts(model, num_parts=5)
    assert [p.name for p in parts] == ["layers_0", "layers_1", "layers_2", "head"]
    assert parts[-1].names == ["stack.3.weight", "stack.3.bias"]
    assert find_layer_stack(model) == ("stack", 3)
    # a distilled DeiT's get_classifier() gives two heads: both are the head part
    model.get_classifier = lambda: (model.stack[3], model.stack[0])
    parts = split_into_parts(model, num_parts=5)
    assert [p.name for p in parts] == ["layers_0", "layers_1", "head"]
    assert parts[-1].names == ["stack.0.weight", "stack.0.bias", "stack.3.weight", "stack.3.bias"]


def test_a_head_tied_to_the_embeddings_stays_with_the_embeddings():
    model = ClassifierFirst(depth=2)
    del model.classifier
    model.embed = torch.nn.Linear(2, 8)
    model.classifier = torch.nn.Linear(2, 8)  # an LM-style head tied to the input layer
    model.classifier.weight = model.embed.weight
    names = {p.name: p.names for p in split_into_parts(model, num_parts=4)}
    assert names["embeddings"] == ["embed.weight", "embed.bias"]
    assert "classifier.bias" in names["head"]
