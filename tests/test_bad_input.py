"""Bad input through the command line: each case ends with exactly one line on stderr,
``lsframe <subcommand>: error: <what> (<key or file:line>)``, the exit status of its kind (2: a
configuration error, 1: a data or checkpoint error), no traceback, and no file already in the
case's folder (its inputs and its output folder ``out/``) changed, nor any file added.

The cases of ``CASES`` fail while the config is checked, before any weights or data load, and
the whole stderr is compared. ``LATE_CASES`` need the model built (its part names) or a batch
loaded (an image that does not decode): the libraries print before the error, so their last
stderr line is compared. ``{tmp}`` in an expected line is the case's folder.

The ``SUBPROCESS`` cases run as ``python -m lsframe``; the others run in forked children of one
process that imported Lightning once (tests/bad_input_runner.py: the same ``main()`` with
``sys.argv`` set, file descriptor 2 captured), which keeps the table to about two minutes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from bad_input_cases import CASES, LATE_CASES
from bad_input_helpers import output_folder, write

SUBPROCESS = {
    "eps out of range",
    "validate: corrupt checkpoint",
    "export: checkpoint missing",
    "sequential: corrupt state",
    "search: groups",
    *LATE_CASES,
}
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "LSFRAME_DEBUG": ""}
Result = tuple[str, int, str, list[str], list[str], Path]


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``folder`` (but the runner's own ``_run``): mtime and bytes."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file() and (folder / "_run") not in p.parents
    }


def run_subprocess(argv: list[str], tmp: Path, env: dict | None = None) -> None:
    """``python -m lsframe <argv>`` in ``tmp``; stderr and the exit status go to ``tmp/_run``."""
    done = subprocess.run(
        [sys.executable, "-m", "lsframe", *argv],
        cwd=tmp,
        env=env or ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    (tmp / "_run" / "stderr").write_text(done.stderr)
    (tmp / "_run" / "status").write_text(str(done.returncode))


def run_forked(manifest: list[dict], folder: Path) -> None:
    path = write(folder / "manifest.json", json.dumps(manifest))
    runner = Path(__file__).with_name("bad_input_runner.py")
    subprocess.run([sys.executable, str(runner), str(path)], env=ENV, check=True, timeout=900)


@pytest.fixture(scope="module")
def results(tmp_path_factory, minilm) -> dict[str, Result]:
    """Every case run once (the forked ones in the runner while the subprocess ones run beside
    it): ``(program, exit status, stderr, changed files, added files, folder)``. The case
    ``debug`` reruns ``eps out of range`` with ``LSFRAME_DEBUG=1``."""
    root = tmp_path_factory.mktemp("bad_input")
    cases = {**CASES, **LATE_CASES, "debug": CASES["eps out of range"]}
    prepared = {}
    for i, (name, (args, _, _)) in enumerate(cases.items()):
        tmp = root / f"case_{i:02d}"
        (tmp / "_run").mkdir(parents=True)
        output_folder(tmp)
        argv = args(tmp)
        prepared[name] = (argv, tmp, snapshot(tmp))
    manifest = [
        {"argv": argv, "cwd": str(tmp), **{k: str(tmp / "_run" / k) for k in ("stdout", "stderr", "status")}}
        for name, (argv, tmp, _) in prepared.items()
        if name not in SUBPROCESS | {"debug"}
    ]  # fmt: skip

    def subprocesses() -> None:
        for name in [n for n in cases if n in SUBPROCESS]:
            run_subprocess(*prepared[name][:2])
        run_subprocess(*prepared["debug"][:2], env={**ENV, "LSFRAME_DEBUG": "1"})

    with ThreadPoolExecutor(2) as pool:
        for job in [pool.submit(run_forked, manifest, root), pool.submit(subprocesses)]:
            job.result()
    results = {}
    for name, (argv, tmp, before) in prepared.items():
        after = snapshot(tmp)
        changed = [p for p in before if after.get(p) != before[p]]
        added = sorted(set(after) - set(before))
        status = int((tmp / "_run" / "status").read_text())
        stderr = (tmp / "_run" / "stderr").read_text()
        results[name] = (f"lsframe {argv[0]}", status, stderr, changed, added, tmp)
    return results


class LinesOf(dict):
    """``{line[text]}`` in an expected line: the number of the one line of ``path`` that holds
    ``text`` (where a config file written from a dict puts a bad key)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def __missing__(self, text: str) -> str:
        lines = self.path.read_text().splitlines() if self.path.is_file() else []
        (number,) = [i + 1 for i, line in enumerate(lines) if text in line]
        return str(number)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_changes_nothing(name, results):
    prog, status, stderr, changed, added, tmp = results[name]
    expected = CASES[name][2].format(tmp=tmp, line=LinesOf(tmp / "bad.yaml"))
    assert stderr == f"{prog}: error: {expected}\n"
    assert status == CASES[name][1], stderr
    assert changed == [] and added == [], (changed, added)


@pytest.mark.parametrize("name", list(LATE_CASES))
def test_late_bad_input_ends_with_one_line_and_changes_nothing(name, results):
    prog, status, stderr, changed, added, tmp = results[name]
    assert "Traceback" not in stderr
    assert stderr.splitlines()[-1] == f"{prog}: error: {LATE_CASES[name][2].format(tmp=tmp)}"
    assert status == LATE_CASES[name][1], stderr
    # a batch that fails to load comes after LightningCLI saved the run's config.yaml: nothing else
    assert changed == [] and [p for p in added if Path(p).name != "config.yaml"] == [], added


def test_lsframe_debug_brings_the_traceback_back(results):
    prog, status, stderr, changed, added, tmp = results["debug"]
    lines = stderr.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert "ConfigError: eps must be a positive finite number, got -1.0" in stderr
    assert lines[-1] == f"{prog}: error: {CASES['eps out of range'][2]}"
    assert status == 2 and changed == [] and added == []
