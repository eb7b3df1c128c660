"""Within-dataset shifts (P3): length split and KMeans-2 clusters of sentence embeddings."""

from __future__ import annotations

import pytest
import torch

from lsframe.data import GlueDataModule
from lsframe.data.shifts import fit_shift, kmeans2, word_lengths
from lsframe.data.text import TextExamples


def test_length_split_uses_the_training_median_for_every_split():
    train = TextExamples(["a", "a b", "a b c", "a b c d", "a b c d e"], [0, 1, 0, 1, 0])
    rule = fit_shift("length", train)
    assert rule(train).tolist() == [0, 0, 0, 1, 1]  # median 3 words: <= 3 is part 0
    dev = TextExamples(["x y z w", "x"], [1, 0], text_pair=["p", "q r s"])
    assert word_lengths(dev).tolist() == [5, 4]
    assert rule(dev).tolist() == [1, 1]


def test_kmeans2_recovers_two_separated_blobs():
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(30, 3, generator=gen), torch.randn(20, 3, generator=gen) + 8])
    centroids, assignment = kmeans2(x, seed=3)
    assert len(set(assignment[:30].tolist())) == 1 and len(set(assignment[30:].tolist())) == 1
    assert assignment[0] != assignment[-1]
    torch.testing.assert_close(centroids[assignment[-1]], x[30:].mean(0))


def test_bad_shift_options_are_named():
    with pytest.raises(ValueError, match="data.shift must"):
        GlueDataModule(task_name="sst2", data_dir=".", shift="topic")
    with pytest.raises(ValueError, match="data.shift_part"):
        GlueDataModule(task_name="sst2", data_dir=".", shift="length", shift_part=2)


@pytest.mark.parametrize("shift", ["length", "kmeans"])
def test_real_sst2_splits_into_two_disjoint_tasks(shift, minilm, shared_data):
    parts = []
    for part in (0, 1):
        data = GlueDataModule(
            task_name="sst2",
            data_dir=str(shared_data / "glue"),
            tokenizer=minilm,
            train_limit=200,
            val_limit=None,
            shift=shift,
            shift_part=part,
        )
        data.setup("fit")
        parts.append(data)
    train = [len(p.datasets["train"]) for p in parts]
    dev = [len(p.datasets["validation"]) for p in parts]
    assert sum(train) == 200 and min(train) > 0
    assert sum(dev) == 872 and min(dev) > 0  # the full SST-2 dev set, split by the same rule
    if shift == "length":
        assert train[0] >= 100  # part 0 holds everything up to the median
