"""What rule 2b of lsframe.parts does not take for layers: lists of task heads, a stem, a small
projection, a decoder's own embeddings; and a wrapped nn.Sequential keeps its head."""

from __future__ import annotations

import pytest
import torch
from test_parts_architectures import tiny_bart
from torch import nn

from lsframe.parts import find_layer_stack, layer_stack_parameters, split_into_parts


class Block(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.lin = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.lin(x))


class MultiTask(nn.Module):
    """Blocks, a final norm, and one linear head per task in a ModuleList (DETR's per-layer
    class_embed lists look the same)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(16, 8)
        self.layers = nn.ModuleList(Block() for _ in range(4))
        self.norm = nn.LayerNorm(8)
        self.heads = nn.ModuleList([nn.Linear(8, 2), nn.Linear(8, 3)])


class StemCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        self.blocks = nn.Sequential(*(Block() for _ in range(4)))
        self.fc = nn.Linear(8, 2)


class LSTMClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(16, 8)
        self.rnn = nn.LSTM(8, 8)
        self.proj = nn.Linear(8, 8)
        self.out = nn.Sequential(nn.Dropout(0.1), nn.Linear(8, 2))


def names(parts) -> dict[str, list[str]]:
    return {p.name: p.names for p in parts}


def test_a_list_of_task_heads_beside_the_blocks_stays_the_head():
    parts = names(split_into_parts(MultiTask(), num_parts=10))
    assert find_layer_stack(MultiTask()) == ("layers", 4)
    assert list(parts) == ["embeddings", "layers_0", "layers_1", "layers_2", "layers_3", "head"]
    assert parts["head"] == [
        "norm.weight",
        "norm.bias",
        "heads.0.weight",
        "heads.0.bias",
        "heads.1.weight",
        "heads.1.bias",
    ]
    assert not any(n.startswith("heads.") for n, _ in layer_stack_parameters(MultiTask()))


def test_a_stem_sequential_beside_the_blocks_is_the_embeddings():
    parts = names(split_into_parts(StemCNN(), num_parts=10))
    assert find_layer_stack(StemCNN()) == ("blocks", 4)
    assert parts["embeddings"] == ["stem.0.weight", "stem.0.bias", "stem.1.weight", "stem.1.bias"]
    assert parts["head"] == ["fc.weight", "fc.bias"]


def test_a_one_layer_projection_is_no_stack_for_a_model_without_one():
    model = LSTMClassifier()
    assert find_layer_stack(model) is None  # the top-level children are the layers
    parts = names(split_into_parts(model, num_parts=10))
    assert list(parts) == ["layers_0", "layers_1", "layers_2", "layers_3"]
    assert parts["layers_3"] == ["out.1.weight", "out.1.bias"]


def test_a_decoders_own_embeddings_are_embeddings_not_the_encoders_last_layer():
    model = tiny_bart()
    parts = names(split_into_parts(model, num_parts=10))
    assert "model.decoder.embed_positions.weight" in parts["embeddings"]
    selected = [n for n, _ in layer_stack_parameters(model)]  # ChildTuning-D's selection
    assert "model.decoder.embed_positions.weight" not in selected
    assert "model.encoder.layers.0.fc1.weight" in selected


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_an_mlp_holding_a_sequential_has_the_head_the_bare_sequential_has():
    wrapped = [(p.name, p.names) for p in split_into_parts(MLP(), num_parts=10)]
    bare = [(p.name, p.names) for p in split_into_parts(MLP().net, num_parts=10)]
    assert [(name, [f"net.{n}" for n in ns]) for name, ns in bare] == wrapped
    assert wrapped[-1] == ("head", ["net.3.weight", "net.3.bias"])


def test_shufflenets_stages_are_its_layers_not_its_largest_conv_bn_sequential():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.shufflenet_v2_x0_5(weights=None)
    assert find_layer_stack(model) == ("stage2, stage3, stage4", 16)
    parts = names(split_into_parts(model, num_parts=10))
    assert all(n.startswith("conv1.") for n in parts["embeddings"])
    assert parts["head"][:2] == ["conv5.0.weight", "conv5.1.weight"]
