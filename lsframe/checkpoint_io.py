"""Checkpoint files that are either the old file or the new one, never a torn mix.

Lightning's ``TorchCheckpointIO`` writes through an fsspec transaction: the checkpoint goes to a
temporary file made by ``tempfile.mkstemp()`` (in ``$TMPDIR``, not beside the checkpoint), which
is then moved over the target with ``shutil.move``. That move is an atomic rename only while
``$TMPDIR`` and the checkpoint directory are on one filesystem; otherwise it copies into the
target in place, so a process killed mid-copy (SLURM's SIGKILL at the end of the grace time)
leaves a truncated ``last.ckpt``. Neither file is synced to disk before the rename.

Here the rule is: write the bytes to a hidden temporary file in the target's own directory,
``fsync`` it, ``os.replace`` it over the target (atomic on POSIX and Windows), then ``fsync``
the directory. A reader sees the previous file or the complete new one. A writer killed
mid-write leaves a hidden ``.<name>.tmp-*`` file beside the target and the target untouched.
:class:`AtomicCheckpointIO` applies the rule to every checkpoint a Trainer writes to a local
path (other filesystems keep Lightning's own write).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "AtomicCheckpointIO",
    "directory_mode",
    "file_mode",
    "find_last_checkpoint",
    "newest_last",
    "remove_interrupted_writes",
    "save_atomically",
    "use_atomic_checkpoint_io",
    "write_atomically",
]


def _write_all(file: Any, data: memoryview) -> None:
    """Write ``data`` to the open ``file`` (a seam: the killed-writer test pauses in here)."""
    file.write(data)


def _file_mode() -> int:
    """The mode a plain ``open`` would give a new file under the process's umask (read once, at
    import: reading the umask sets it for a moment, which other threads must not see mid-run)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


def directory_mode() -> int:
    """The mode a plain ``mkdir`` gives a new directory under this process's umask (one of
    :func:`tempfile.mkdtemp` is 0700 instead)."""
    return _FILE_MODE | ((_FILE_MODE & 0o444) >> 2)


def file_mode() -> int:
    """The mode a plain ``open`` gives a new file under this process's umask (a temporary file
    of :mod:`tempfile` is 0600 instead)."""
    return _FILE_MODE


#: flock errors that mean the filesystem takes no locks (then nothing tells a live writer's
#: temporary file from an abandoned one)
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
#: A temporary file that cannot be locked (another user's, a filesystem without locks) is
#: abandoned once it has not changed for this long: a live write keeps changing it.
_UNLOCKABLE_STALE_S = 3600.0


def _lock(fd: int, wait: bool) -> bool | None:
    """Take an exclusive ``flock`` on ``fd``: True when taken, False when another process holds
    one, None when no lock can be had here (no ``fcntl``, a filesystem without locks)."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    except OSError as error:
        return None if error.errno in _NO_LOCKS else False
    return True


def _remove_if_abandoned(temporary: Path) -> None:
    """Remove ``temporary`` unless a live writer holds it: each writer locks its temporary file
    until the rename, and a killed writer's lock went with its process. Several processes may
    write one file (the processes of one ``lsframe search``): one must not delete another's.
    A file that cannot be locked is removed once it has not changed for an hour."""
    if fcntl is None:  # Windows: a live writer's open file cannot be deleted there
        with contextlib.suppress(OSError):
            temporary.unlink()
        return
    try:
        # opened for writing: on NFS an exclusive flock is a POSIX lock, which needs it
        fd = os.open(temporary, os.O_RDWR)
    except FileNotFoundError:
        return
    except OSError:  # another user's file (mode 0600): it cannot be locked from here
        _remove_if_unchanged_for_long(temporary)
        return
    try:
        locked = _lock(fd, wait=False)
        if locked:
            temporary.unlink(missing_ok=True)
        elif locked is None:
            _remove_if_unchanged_for_long(temporary)
    finally:
        os.close(fd)


def _remove_if_unchanged_for_long(temporary: Path) -> None:
    with contextlib.suppress(OSError):
        if time.time() - temporary.stat().st_mtime > _UNLOCKABLE_STALE_S:
            temporary.unlink()


def _remove_stale_temporaries(target: Path) -> None:
    """Temporary files of earlier writes to ``target`` that a kill interrupted (each may be as
    large as a checkpoint)."""
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        _remove_if_abandoned(stale)


def remove_interrupted_writes(directory: str | os.PathLike[str]) -> None:
    """Remove the temporary files of every write into ``directory`` that a kill interrupted:
    called when a fit starts, before it writes there, since a file a resumed run never writes
    again (a ``best-step<n>.ckpt`` of the killed run) would keep its half-written copy."""
    for stale in Path(directory).glob(".*.tmp-*"):
        if stale.is_file():
            _remove_if_abandoned(stale)


def _locked_temporary(target: Path) -> tuple[int, str]:
    """A new temporary file beside ``target``, open and locked: a cleaner that removed it between
    its creation and the lock (it looked abandoned) is noticed, and another one is made."""
    while True:
        fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.tmp-")
        _lock(fd, wait=True)
        try:
            if os.path.samestat(os.fstat(fd), os.stat(temporary)):
                return fd, temporary
        except FileNotFoundError:
            pass
        os.close(fd)


def _sync_directory(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomically(path: str | os.PathLike[str], data: bytes | memoryview) -> None:
    """Replace the file ``path`` by ``data`` in one step: a reader, or a later run after a crash
    at any moment, finds either the previous file or the whole new one.

    The bytes go to a hidden temporary file in ``path``'s directory, are synced, and the file is
    renamed over ``path`` with :func:`os.replace`; the directory is synced after the rename. On an
    exception the temporary file is removed and ``path`` is untouched; temporary files that a
    killed writer left beside ``path`` are removed before the next write (a writer holds an
    ``flock`` on its own until the rename, so processes writing one file leave each other's be).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(target)
    fd, temporary = _locked_temporary(target)
    # the file stays open, so locked, until it is renamed: closed first, another writer to the
    # same target could take it for a killed writer's and remove it before the rename
    file = os.fdopen(fd, "wb")
    try:
        _write_all(file, memoryview(data))
        file.flush()
        os.fsync(file.fileno())
        os.chmod(temporary, _FILE_MODE)
        if fcntl is None:
            file.close()  # Windows renames no open file (and takes no lock here)
        os.replace(temporary, target)
    except BaseException:
        file.close()
        Path(temporary).unlink(missing_ok=True)
        raise
    file.close()
    _sync_directory(target.parent)


def save_atomically(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj, path)`` through :func:`write_atomically`."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomically(path, buffer.getbuffer())


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` whose local writes go through :func:`write_atomically`.

    Loading and removing are Lightning's; a path on another filesystem (``s3://``, ...) is written
    by Lightning's own transaction.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        filesystem, local_path = url_to_fs(str(path))
        if storage_options is not None or not isinstance(filesystem, LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        save_atomically(checkpoint, local_path)


def use_atomic_checkpoint_io(trainer: Any) -> bool:
    """Give ``trainer``'s strategy an :class:`AtomicCheckpointIO` when it uses Lightning's plain
    ``TorchCheckpointIO``; a CheckpointIO the user chose is kept. True when swapped in."""
    strategy = trainer.strategy
    if type(getattr(strategy, "checkpoint_io", None)) is not TorchCheckpointIO:
        return False
    strategy.checkpoint_io = AtomicCheckpointIO()
    return True


def newest_last(pattern: str, folder: str | Path) -> Path | None:
    """The newest (by modification time, as Lightning picks among ``last`` candidates) of the
    files ``folder.glob(pattern)`` that are last checkpoints (``last.ckpt``, ``last-v1.ckpt``);
    None when there is none."""
    found = [
        path
        for path in Path(folder).glob(pattern)
        if re.fullmatch(r"last(-v?\d+)?", path.stem) and path.suffix == ".ckpt" and path.is_file()
    ]
    return max(found, key=lambda path: path.stat().st_mtime) if found else None


def find_last_checkpoint(root: str | Path) -> tuple[str, Path] | None:
    """The newest ``last*.ckpt`` under ``root/version_*/checkpoints``, with its version name
    (``root`` is a logger's ``save_dir/name``); None when there is none."""
    path = newest_last("version_*/checkpoints/last*.ckpt", root)
    return None if path is None else (path.parent.parent.name, path)
