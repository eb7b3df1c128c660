"""DataModules for the papers' tasks, with offline sources."""

from lsframe.data.glue import GLUE_TASKS, GlueDataModule, GlueTask, read_glue_tsv
from lsframe.data.text import (
    AmazonFineFoodReviews,
    TextClassificationDataModule,
    TextExamples,
    TokenizedDataset,
)

__all__ = [
    "GLUE_TASKS",
    "AmazonFineFoodReviews",
    "GlueDataModule",
    "GlueTask",
    "TextClassificationDataModule",
    "TextExamples",
    "TokenizedDataset",
    "read_glue_tsv",
]
