"""DataModules for the papers' tasks, with offline sources."""

from lsframe.data.examples import TextExamples
from lsframe.data.glue import GLUE_TASKS, GlueDataModule, GlueTask, read_glue_tsv
from lsframe.data.images import (
    CIFARDataModule,
    IdxImageDataModule,
    ImageDataModule,
    ImageFolderDataModule,
    read_idx,
)
from lsframe.data.lm import ByteTokenizer, TextFileLMDataModule
from lsframe.data.resumable import EpochSeededRandomSampler, ResumableDataLoader
from lsframe.data.text import AmazonFineFoodReviews, TextClassificationDataModule, TokenizedDataset

__all__ = [
    "GLUE_TASKS",
    "AmazonFineFoodReviews",
    "ByteTokenizer",
    "EpochSeededRandomSampler",
    "CIFARDataModule",
    "IdxImageDataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "TextFileLMDataModule",
    "ResumableDataLoader",
    "GlueDataModule",
    "GlueTask",
    "TextClassificationDataModule",
    "TextExamples",
    "TokenizedDataset",
    "read_glue_tsv",
    "read_idx",
]
