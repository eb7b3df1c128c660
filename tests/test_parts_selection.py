"""DPS's default selection on models built from torch's own attention."""

import torch
from torch import nn

from lsframe.callbacks import DPS
from lsframe.parts import weight_matrices


class TorchTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(16, 8)
        layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.cross = nn.MultiheadAttention(8, 2, kdim=4, vdim=4, batch_first=True)
        self.classifier = nn.Linear(8, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encoder(self.embed(ids)).mean(1))


def test_the_query_key_value_projections_of_torch_attention_are_selected():
    names = [n for n, _ in weight_matrices(TorchTransformer())]
    for i in (0, 1):
        assert f"encoder.layers.{i}.self_attn.in_proj_weight" in names
        assert f"encoder.layers.{i}.self_attn.out_proj.weight" in names
        assert f"encoder.layers.{i}.linear1.weight" in names
    # separate key/value sizes keep three projections
    assert {"cross.q_proj_weight", "cross.k_proj_weight", "cross.v_proj_weight"} <= set(names)
    assert not any(n.endswith("bias") or n.startswith("embed") for n in names)


def test_dps_selects_the_attention_projections_by_default():
    selected = dict(DPS().select(TorchTransformer()))
    assert "encoder.layers.0.self_attn.in_proj_weight" in selected
