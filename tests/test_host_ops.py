"""benchmarks/host_ops.py: it counts the optimizer's own operators, not its closure's."""

from __future__ import annotations

import torch
from torch import nn

from benchmarks.host_ops import ops_outside_closure


def test_the_count_is_the_optimizers_own_operators_per_tensor_and_none_of_the_closures():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))  # four tensors
    batch = torch.randn(5, 6), torch.randint(0, 3, (5,))
    criterion = nn.CrossEntropyLoss()
    loop = torch.optim.SGD(model.parameters(), lr=0.1, foreach=False)
    ops = ops_outside_closure(model, loop, batch, criterion=criterion)
    assert ops["aten::add_"] == 4  # one update per tensor
    assert not {"aten::linear", "aten::addmm", "aten::cross_entropy_loss"} & set(ops)
    batched = torch.optim.SGD(model.parameters(), lr=0.1, foreach=True)
    ops = ops_outside_closure(model, batched, batch, criterion=criterion)
    assert ops["aten::_foreach_add_"] == 1 and ops["aten::add_"] == 0  # one call for all four
