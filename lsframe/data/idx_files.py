"""MNIST-style idx files (MNIST, Fashion-MNIST): the format's header and data, and the files of
a split in a data folder."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import torch

from lsframe.errors import DataError, MissingFileError

_IDX_MAGIC = {2051: "images", 2049: "labels"}


def read_idx(path: str | Path) -> torch.Tensor:
    """An idx file (``.gz`` or raw) as a uint8 tensor: images ``(n, rows, cols)``, labels ``(n,)``.

    Raises:
        DataError: (a ``ValueError``) an unknown magic number or a size that disagrees with the
            header, naming the file.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:  # cut short, or not gzip
        raise DataError(f"not a complete gzip file ({error})", where=str(path)) from None
    if len(data) < 8:
        raise DataError(f"{len(data)} bytes, too short for an idx header", where=str(path))
    magic, count = struct.unpack(">II", data[:8])
    if magic not in _IDX_MAGIC:
        raise DataError(
            f"magic number {magic}, expected 2051 (images) or 2049 (labels)", where=str(path)
        )
    shape, offset = (count,), 8
    if magic == 2051:
        rows, cols = struct.unpack(">II", data[8:16])
        shape, offset = (count, rows, cols), 16
    expected = offset + int(torch.tensor(shape).prod())
    if len(data) != expected:
        raise DataError(
            f"header says {shape} but the file has {len(data)} bytes, expected {expected}",
            where=str(path),
        )
    return torch.frombuffer(bytearray(data[offset:]), dtype=torch.uint8).view(shape)


def find_idx_file(data_dir: Path, prefix: str, kind: str) -> Path:
    names = [f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte{ext}" for ext in (".gz", "")]
    for name in names:
        if (data_dir / name).is_file():
            return data_dir / name
    raise MissingFileError(f"none of {names} in data_dir", where=str(data_dir))
