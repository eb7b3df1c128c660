"""LoRA keeps the task head trainable whatever the family calls it (peft knows two names)."""

import pytest
import torch
from torch import nn

from lsframe.errors import ConfigError

pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

from test_parts_architectures import tiny_bart  # noqa: E402

from lsframe.modules.peft import apply_lora, task_head_names  # noqa: E402


def tiny_deberta() -> nn.Module:
    config = transformers.DebertaV2Config(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
    )
    return transformers.DebertaV2ForSequenceClassification(config)


def trainable_outside_adapters(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n}


def test_the_task_head_is_every_child_beside_the_backbone():
    assert task_head_names(tiny_bart()) == ["classification_head"]
    assert task_head_names(tiny_deberta()) == ["pooler", "classifier"]
    assert task_head_names(nn.Sequential(nn.Linear(2, 2))) == []


def test_a_bart_classification_head_trains_under_lora_and_learns():
    model = apply_lora(tiny_bart(), {"r": 2, "target_modules": ["q_proj", "v_proj"]}, "SEQ_CLS")
    trained = trainable_outside_adapters(model)
    assert trained and all("classification_head" in n for n in trained)
    head = {n: p.detach().clone() for n, p in model.named_parameters() if n in trained}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.tensor([[0, 5, 6, 7, 2], [0, 8, 9, 10, 2]])
    loss = model(input_ids=ids, labels=torch.tensor([0, 1])).loss
    loss.backward()
    opt.step()
    moved = [n for n, p in model.named_parameters() if n in head and not torch.equal(head[n], p)]
    assert moved, "the classification head did not move"


def test_deberta_keeps_its_new_pooler_trainable_under_lora():
    # DeBERTa's pooler is part of the head its ForSequenceClassification adds, not the backbone
    model = apply_lora(tiny_deberta(), {"r": 2, "target_modules": ["query_proj"]}, "SEQ_CLS")
    trained = trainable_outside_adapters(model)
    assert any(".pooler." in n for n in trained)
    assert any(".classifier." in n for n in trained)


def test_modules_to_save_given_by_the_user_are_kept():
    options = {"r": 2, "target_modules": ["q_proj"], "modules_to_save": ["classification_head"]}
    model = apply_lora(tiny_bart(), options, "SEQ_CLS")
    assert all("classification_head" in n for n in trainable_outside_adapters(model))


class HeadNamedHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def test_a_lora_run_that_would_train_only_adapters_is_refused_at_lora():
    with pytest.raises(ConfigError, match="lora.modules_to_save") as refused:
        apply_lora(HeadNamedHead(), {"r": 2, "target_modules": ["body.0"]}, "SEQ_CLS")
    assert refused.value.argument == "lora"
    options = {"r": 2, "target_modules": ["body.0"], "modules_to_save": ["head"]}
    assert trainable_outside_adapters(apply_lora(HeadNamedHead(), options, "SEQ_CLS"))
