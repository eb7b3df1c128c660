"""An optimizer step over micro-batches of different sizes (an epoch's short last batch among
full ones) is the mean over its examples: each micro-batch's mean loss counts for its size."""

from __future__ import annotations

import torch
from helpers import TinyRegression, loader, mlp, regression_data, trainer


def test_a_short_last_micro_batch_counts_for_its_size_as_in_one_large_batch():
    make = lambda params: torch.optim.SGD(params, lr=0.05)  # noqa: E731
    # 10 examples in micro-batches of 4, 4 and 2: one step on the mean of the 10 losses
    module = TinyRegression(optimizer=make, accumulate_grad_batches=3)
    trainer(max_steps=-1, max_epochs=1).fit(module, train_dataloaders=loader(10, 4))
    plain = mlp()
    opt = make(plain.parameters())
    x, y = regression_data(10).tensors
    torch.nn.functional.mse_loss(plain(x).squeeze(-1), y).backward()
    opt.step()
    for got, want in zip(module.model.parameters(), plain.parameters()):
        torch.testing.assert_close(got, want)


def test_a_micro_batch_counts_the_length_its_tensors_agree_on_else_an_equal_share():
    from lsframe.modules.micro_batches import examples_in, micro_batch_shares

    assert examples_in((torch.zeros(4, 3), torch.zeros(4))) == 4
    assert examples_in({"input_ids": torch.zeros(2, 9), "n": torch.tensor(18)}) == 2
    # sequences of their own lengths, or a sequence-first layout beside labels: no agreement
    assert examples_in([torch.zeros(7), torch.zeros(3)]) is None
    assert examples_in({"tokens": torch.zeros(9, 4), "labels": torch.zeros(4)}) is None
    assert examples_in(["a", "b"]) is None
    assert micro_batch_shares([4, 4, 2]) == [0.4, 0.4, 0.2]
    assert micro_batch_shares([4, 4, 4]) is None  # 1/n, bit for bit as before
    assert micro_batch_shares([4, None, 2]) is None
