"""Evaluation metrics accumulate in float32 under bf16-true and 16-true (Lightning converts the
whole module, metric states included)."""

from __future__ import annotations

import warnings

import lightning.pytorch as pl
import pytest
import torch

from lsframe.data import TextFileLMDataModule
from lsframe.modules import CausalLMModule

TINY_GPT2 = {"model_type": "gpt2", "vocab_size": 256, "bos_token_id": None,
             "eos_token_id": None, "n_positions": 64, "n_layer": 1, "n_head": 2, "n_embd": 32}  # fmt: skip


def validate(precision: str, text_file: str) -> tuple[float, float, torch.dtype]:
    """``val/loss`` of a tiny byte-level GPT-2 at ``precision``, the mean of the same model's
    own batch losses (every batch holds the same number of tokens), and the metric's dtype."""
    torch.manual_seed(0)
    module = CausalLMModule(config=TINY_GPT2)
    data = TextFileLMDataModule(
        train_file=text_file, tokenizer="bytes", block_size=32, eval_batch_size=4
    )
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, precision=precision)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logged = trainer.validate(module, data, verbose=False)[0]["val/loss"]
    module.eval()
    with torch.no_grad():
        losses = [
            float(module.model(input_ids=b["input_ids"], labels=b["input_ids"]).loss)
            for b in data.val_dataloader()
        ]
    return logged, sum(losses) / len(losses), module.eval_loss.mean_value.dtype


@pytest.mark.parametrize("precision", ["bf16-true", "16-true"])
def test_a_half_precision_validation_loss_is_the_mean_of_its_batch_losses(precision, tmp_path):
    text = tmp_path / "text.txt"
    # 40 blocks of 32 bytes in the validation tail, 160 x 32 = 5,120 tokens (fp16 overflows
    # a sum of token weights past 65,504 only on larger sets; the rounding shows at once)
    text.write_text("".join(f"line {i}: the quick brown fox.\n" for i in range(1600)))
    logged, own, dtype = validate(precision, str(text))
    assert dtype == torch.float32
    assert logged == pytest.approx(own, abs=1e-5)
