"""Run by test_hf_trainer.py under torch.distributed.run (2 CPU processes, gloo, accelerate's
DDP): LineSearchTrainer with gradient accumulation where its item-count check must agree across
the ranks. A GPT-2 whose loss honours num_items_in_batch, with rank 0's first micro-batch fully
masked (it cannot tell); one whose loss ignores the count, with both of rank 0's micro-batches of
the first step masked (rank 1 can tell at once, rank 0 only at the second step: deciding apart,
rank 1 would gather counts rank 0 never sends); a BERT whose classification loss ignores it.
Rank 0 writes, per model, each rank's model_accepts_loss_kwargs after training and a sum of the
parameters."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from helpers import leave_process_group
from hf_helpers import DATA, VOCAB, arguments, bert
from transformers import GPT2Config, GPT2LMHeadModel

from lsframe.integrations.hf import LineSearchTrainer
from lsframe.optim import SaLSA


class InOrder(LineSearchTrainer):
    def _get_train_sampler(self, *args, **kwargs):
        return torch.utils.data.SequentialSampler(self.train_dataset)


class CountIgnoringGPT2(GPT2LMHeadModel):
    def forward(self, input_ids=None, labels=None, num_items_in_batch=None, **kwargs):
        return super().forward(input_ids=input_ids, labels=labels, **kwargs)


def lm_rows(masked: tuple[int, ...]) -> list[dict[str, torch.Tensor]]:
    """Rows 0, 2, 4, ... go to rank 0 (accelerate deals the batches out in turn)."""
    generator = torch.Generator().manual_seed(1)
    rows = []
    for i in range(16):
        ids = torch.randint(0, VOCAB, (8,), generator=generator)
        labels = ids.clone()
        labels[:4] = -100
        if i in masked:
            labels[:] = -100
        rows.append({"input_ids": ids, "labels": labels})
    return rows


def train(model: torch.nn.Module, rows: list, out: Path) -> dict:
    args = arguments(out, max_steps=2, per_device_train_batch_size=1, gradient_accumulation_steps=2)
    trainer = InOrder(
        model=model, args=args, train_dataset=rows, optimizers=(SaLSA(model.parameters()), None)
    )
    trainer.train()
    total = sum(float(p.double().sum()) for p in model.parameters())
    return {"accepts_loss_kwargs": bool(trainer.model_accepts_loss_kwargs), "sum": total}


def main(out: Path) -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    results = {
        "gpt2": train(GPT2LMHeadModel(config), lm_rows((0,)), out.parent / "gpt2"),
        "ignoring": train(CountIgnoringGPT2(config), lm_rows((0, 2)), out.parent / "ignoring"),
        "bert": train(bert(), DATA[:16], out.parent / "bert"),
    }
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, results)
    if dist.get_rank() == 0:
        out.write_text(json.dumps(gathered))
    leave_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
