"""DataModules for the papers' tasks, with offline sources."""

from lsframe.data.text import (
    AmazonFineFoodReviews,
    TextClassificationDataModule,
    TextExamples,
    TokenizedDataset,
)

__all__ = [
    "AmazonFineFoodReviews",
    "TextClassificationDataModule",
    "TextExamples",
    "TokenizedDataset",
]
