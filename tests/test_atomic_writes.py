"""write_atomically's temporary files: a live writer's is never removed by another process's
clean-up (several processes of one search write one file), an abandoned one is."""

from __future__ import annotations

import errno
import fcntl
import multiprocessing
import os
import time

import pytest

from lsframe import checkpoint_io
from lsframe.checkpoint_io import write_atomically


def _write_many(target: str, tag: bytes, count: int, start, errors) -> None:
    failed = 0
    start.wait(timeout=120)  # both write at once
    for _ in range(count):
        try:
            write_atomically(target, tag * 1000)
        except OSError:
            failed += 1
    errors.put(failed)


def test_processes_writing_one_file_at_once_never_remove_each_other_s_temporary(tmp_path):
    # each write removed every temporary file beside its target, another live writer's too,
    # whose rename then failed: a search's processes share trials.json and the plots
    target = str(tmp_path / "trials.json")
    context = multiprocessing.get_context("spawn")
    errors, start = context.Queue(), context.Barrier(2)
    writers = [
        context.Process(target=_write_many, args=(target, tag, 300, start, errors))
        for tag in (b"a", b"b")
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=300)
    assert [errors.get(timeout=10), errors.get(timeout=10)] == [0, 0]
    assert open(target, "rb").read() in (b"a" * 1000, b"b" * 1000)
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []


def test_a_temporary_file_a_killed_writer_left_is_still_removed_by_the_next_write(tmp_path):
    target = tmp_path / "best_distribution.yaml"
    left = tmp_path / ".best_distribution.yaml.tmp-killed"
    left.write_bytes(b"half")  # no process holds it: its writer is gone
    write_atomically(target, b"whole")
    assert target.read_bytes() == b"whole" and not left.exists()


def held_temporary(target) -> tuple[int, str]:
    """A temporary file beside ``target`` that a live writer holds (open and locked)."""
    path = target.parent / f".{target.name}.tmp-live"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd, path


def test_on_nfs_a_live_writer_s_temporary_survives_another_s_clean_up(tmp_path, monkeypatch):
    # on NFS flock is a POSIX lock, which a file opened read-only cannot take (EBADF): the
    # clean-up took that for a filesystem without locks and removed the live writer's file
    real = fcntl.flock

    def nfs_flock(fd, operation):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(errno.EBADF, "Bad file descriptor")
        return real(fd, operation)

    target = tmp_path / "trials.json"
    fd, live = held_temporary(target)
    monkeypatch.setattr(checkpoint_io.fcntl, "flock", nfs_flock)
    try:
        write_atomically(target, b"whole")
        assert live.exists() and target.read_bytes() == b"whole"
    finally:
        os.close(fd)
    write_atomically(target, b"again")  # its writer gone, the next write removes it
    assert not live.exists()


def test_a_temporary_that_cannot_be_locked_is_removed_only_once_it_is_an_hour_old(
    tmp_path, monkeypatch
):
    # another user's leftover (mode 0600) cannot be opened to be locked: kept while it may be
    # a live write, removed once unchanged for an hour (it stayed as large as a checkpoint)
    target = tmp_path / "last.ckpt"
    fresh, old = (tmp_path / f".last.ckpt.tmp-{n}" for n in ("fresh", "old"))
    for path in (fresh, old):
        path.write_bytes(b"half")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    real_open = os.open

    def foreign(path, flags, *args):
        if str(path) in (str(fresh), str(old)):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(checkpoint_io.os, "open", foreign)
    write_atomically(target, b"whole")
    assert fresh.exists() and not old.exists()


def test_without_fcntl_a_leftover_is_removed_without_being_opened(tmp_path, monkeypatch):
    # Windows deletes no open file: opening the leftover to lock it made every later write of
    # that file fail, and every fit's clean-up at its start
    left = tmp_path / ".last.ckpt.tmp-killed"
    left.write_bytes(b"half")
    opened = []
    real_open = os.open
    monkeypatch.setattr(checkpoint_io, "fcntl", None)
    monkeypatch.setattr(
        checkpoint_io.os, "open", lambda p, *a: opened.append(str(p)) or real_open(p, *a)
    )
    checkpoint_io.remove_interrupted_writes(tmp_path)
    assert not left.exists() and str(left) not in opened


@pytest.mark.parametrize("error", [errno.ENOLCK, errno.EOPNOTSUPP], ids=["ENOLCK", "EOPNOTSUPP"])
def test_on_a_filesystem_without_locks_a_fresh_temporary_is_kept(tmp_path, monkeypatch, error):
    def no_locks(fd, operation):
        raise OSError(error, os.strerror(error))

    target = tmp_path / "trials.json"
    other = tmp_path / ".trials.json.tmp-other"
    other.write_bytes(b"another process writing")
    monkeypatch.setattr(checkpoint_io.fcntl, "flock", no_locks)
    write_atomically(target, b"whole")
    assert other.exists() and target.read_bytes() == b"whole"
