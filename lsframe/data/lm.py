"""Causal language modelling data: text files cut into fixed-length token blocks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from lsframe.data.resumable import make_loader
from lsframe.errors import DataError, MissingFileError
from lsframe.validation import check_int_at_least, check_open_unit


class ByteTokenizer:
    """UTF-8 bytes as tokens (vocabulary 256): a tokenizer that needs no download, for small
    models built from a config (e.g. ``GPT2Config(vocab_size=256)``)."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def tokenize_text(text: str, tokenizer: Any, lines_per_chunk: int = 2000) -> torch.Tensor:
    """All tokens of ``text`` (no special tokens), encoded a chunk of lines at a time so that
    tokenizers with a maximum input length do not complain about a long document."""
    if isinstance(tokenizer, ByteTokenizer):
        return torch.tensor(tokenizer.encode(text), dtype=torch.long)
    lines = text.splitlines(keepends=True)
    ids: list[int] = []
    for start in range(0, len(lines), lines_per_chunk):
        chunk = "".join(lines[start : start + lines_per_chunk])
        ids += tokenizer(chunk, add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def to_blocks(ids: torch.Tensor, block_size: int) -> torch.Tensor:
    """Non-overlapping blocks of ``block_size`` tokens (the ragged tail is dropped)."""
    count = len(ids) // block_size
    return ids[: count * block_size].view(count, block_size)


def _stack_blocks(rows: list[tuple[torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.stack([row[0] for row in rows])}


def read_text(path: str) -> str:
    """The UTF-8 text of ``path`` exactly as its bytes say: line ends are kept as written
    (``\\r\\n`` and a lone ``\\r`` are not turned into ``\\n``, as text mode would), so
    ``bytes`` tokens are the file's bytes. A file in another encoding is a :class:`DataError`
    naming it and the first byte that does not decode."""
    try:
        return Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(
            f"not UTF-8 text: byte 0x{error.object[error.start]:02x} at offset {error.start} "
            "does not decode; convert the file to UTF-8 (iconv -t utf-8)",
            where=str(path),
        ) from None


def _load_named_tokenizer(name: str) -> Any:
    """The tokenizer ``data.tokenizer`` names; one that does not load is a :class:`DataError`
    (the path exists) or :class:`MissingFileError` (it does not, or the hub has no such name)
    at ``data.tokenizer``, as :func:`lsframe.hub.load_pretrained` says a model's."""
    from lsframe.hub import describe_load_failure, existing_path, load_tokenizer

    try:
        return load_tokenizer(name)
    except (OSError, ValueError) as error:
        kind = DataError if existing_path(name) is not None else MissingFileError
        message = describe_load_failure(name, error, what="tokenizer")
        raise kind(message, argument="data.tokenizer") from error


class TextFileLMDataModule(pl.LightningDataModule):
    """Text files → token blocks for causal LM fine-tuning (labels are the inputs; the model
    shifts them). Perplexity is ``exp`` of the mean token loss.

    Packing, as Hugging Face's ``run_clm`` groups texts: each file is one stream of tokens (the
    text tokenized in chunks of 2,000 lines, so a merge of tokens across a chunk's edge may
    differ from tokenizing the file whole), cut into non-overlapping blocks of ``block_size``;
    no end-of-text token is put between lines or articles, so a block may span two articles,
    and the last partial block is dropped. Files are read as their bytes say, in every
    tokenizer mode: line ends are not translated (a CRLF file keeps its ``\\r\\n``, a lone
    ``\\r`` stays), and a UTF-8 byte-order mark is kept as text. ``test`` evaluates the
    validation blocks (there is no separate test file), so its figures equal ``validate``'s.

    Args:
        train_file: UTF-8 text file to train on.
        val_file: Validation text; ``None`` keeps the last ``val_fraction`` of the training tokens
            for validation (they are not trained on).
        val_fraction: Share of the training tokens held out when ``val_file`` is None.
        tokenizer: ``None`` uses the model's tokenizer; ``"bytes"`` is :class:`ByteTokenizer`;
            anything else is a tokenizer name or path for ``AutoTokenizer`` (a local path or
            ``package:`` reference that does not exist is refused when the DataModule is built;
            one that does not load, when its data are set up, at ``data.tokenizer``).
        block_size: Tokens per training example. Default: 128.
        batch_size: Blocks per training micro-batch. Default: 8.
        eval_batch_size: Blocks per validation batch. Default: 16.
        train_limit: Keep only the first N training blocks (quick runs, tests).
        val_limit: Keep only the first N validation blocks.
        seed: Seed of the training order (a permutation per epoch from seed and epoch,
            resumable mid-epoch). Default: 0.
    """

    def __init__(
        self,
        train_file: str,
        val_file: str | None = None,
        val_fraction: float = 0.1,
        tokenizer: str | None = None,
        block_size: int = 128,
        batch_size: int = 8,
        eval_batch_size: int = 16,
        train_limit: int | None = None,
        val_limit: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for key, path in (("data.train_file", train_file), ("data.val_file", val_file)):
            if path is not None and not Path(path).is_file():
                raise MissingFileError(f"no such file {path}", argument=key)
        if tokenizer is not None and tokenizer != "bytes":
            from lsframe.hub import check_pretrained

            try:
                check_pretrained(tokenizer, what="tokenizer")
            except MissingFileError as error:
                raise MissingFileError(error.message, argument="data.tokenizer") from None
        if val_file is None:
            check_open_unit(**{"data.val_fraction": val_fraction})
        check_int_at_least(
            1,
            **{
                "data.block_size": block_size,
                "data.batch_size": batch_size,
                "data.eval_batch_size": eval_batch_size,
            },
        )
        check_int_at_least(
            1, allow_none=True, **{"data.train_limit": train_limit, "data.val_limit": val_limit}
        )
        self.save_hyperparameters()
        self.train_file, self.val_file, self.val_fraction = train_file, val_file, val_fraction
        self.tokenizer_name = tokenizer
        self._named_tokenizer: Any = None
        self.block_size, self.batch_size, self.eval_batch_size = (
            block_size,
            batch_size,
            eval_batch_size,
        )
        self.train_limit, self.val_limit, self.seed = train_limit, val_limit, seed
        self.blocks: dict[str, torch.Tensor] = {}

    @property
    def tokenizer(self) -> Any:
        if self.tokenizer_name == "bytes":
            return ByteTokenizer()
        if self.tokenizer_name is not None:  # loaded once: the model's check reads it too
            if self._named_tokenizer is None:
                self._named_tokenizer = _load_named_tokenizer(self.tokenizer_name)
            return self._named_tokenizer
        module = self.trainer.lightning_module if self.trainer is not None else None
        if module is None or getattr(module, "tokenizer", None) is None:
            raise ValueError(
                "TextFileLMDataModule: the model has no tokenizer; set data.tokenizer "
                "('bytes' for a byte-level model built from a config)"
            )
        return module.tokenizer

    def setup(self, stage: str) -> None:
        if self.blocks:
            return
        tokenizer = self.tokenizer
        ids = tokenize_text(read_text(self.train_file), tokenizer)
        if self.val_file is None:
            cut = int(len(ids) * (1 - self.val_fraction))
            ids, val_ids = ids[:cut], ids[cut:]
        else:
            val_ids = tokenize_text(read_text(self.val_file), tokenizer)
        for split, tokens, limit in (
            ("train", ids, self.train_limit),
            ("val", val_ids, self.val_limit),
        ):
            blocks = to_blocks(tokens, self.block_size)[:limit]
            if len(blocks) == 0:
                raise DataError(
                    f"{split} text has {len(tokens)} tokens, fewer than one block of "
                    f"data.block_size={self.block_size}",
                    where=str(
                        self.train_file if split == "train" or not self.val_file else self.val_file
                    ),
                )
            self.blocks[split] = blocks

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        blocks = TensorDataset(self.blocks[split])
        return make_loader(blocks, batch_size, shuffle, self.seed, collate_fn=_stack_blocks)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)
