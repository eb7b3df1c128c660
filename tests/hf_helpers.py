"""Shared pieces of the Hugging Face ``Trainer`` tests: a tiny random-init BERT, a synthetic task
it learns in a few dozen CPU steps, and Trainer's arguments for it."""

from __future__ import annotations

import helpers
import pytest
import torch
from transformers import BertForSequenceClassification, Trainer, TrainingArguments

from lsframe.optim import create, info
from lsframe.parts import part_groups

VOCAB, LENGTH = 40, 8


def dataset(n: int = 128, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Class 1 draws 70 % of its tokens from the upper half of the vocabulary, class 0 from the
    lower half: every token carries evidence, so a 2-layer BERT learns it in ~30 steps."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=generator)
    low = torch.randint(4, VOCAB // 2 + 2, (n, LENGTH), generator=generator)
    high = torch.randint(VOCAB // 2 + 2, VOCAB, (n, LENGTH), generator=generator)
    upper = (torch.rand(n, LENGTH, generator=generator) < 0.7) == labels[:, None].bool()
    ids = torch.where(upper, high, low)
    return [{"input_ids": ids[i], "labels": labels[i]} for i in range(n)]


DATA = dataset()


def bert(seed: int = 0) -> BertForSequenceClassification:
    # dropout 0.1 (BERT's default): the trials must see the backward pass's masks
    return helpers.tiny_bert(seed, vocab=VOCAB, hidden=32, layers=2)


def arguments(tmp_path, **overrides) -> TrainingArguments:
    settings = dict(
        output_dir=str(tmp_path),
        max_steps=10,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=128,
        logging_steps=5,
        lr_scheduler_type="constant",
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    settings.update(overrides)
    return TrainingArguments(**settings)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add overhead on the 2-core machine
    yield
    torch.set_num_threads(threads)


def optimizer_for(name: str, model: torch.nn.Module):
    if info(name).param_grouping == "parts":
        return create(name, part_groups(model, num_parts=4))
    kwargs = {} if info(name).test_lr is None else {"lr": info(name).test_lr}
    return create(name, model.parameters(), **kwargs)


def training_logs(trainer: Trainer) -> list[dict]:
    return [entry for entry in trainer.state.log_history if "loss" in entry]
