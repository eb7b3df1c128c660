"""Runs many ``lsframe`` command lines quickly for tests/test_bad_input.py.

``python tests/bad_input_runner.py MANIFEST.json``: the manifest is a list of
``{"argv": [...], "cwd": ..., "stdout": ..., "stderr": ..., "status": ...}``. Lightning,
jsonargparse and lsframe are imported once; each command then runs in a forked child exactly as
``python -m lsframe <argv>`` would: ``sys.argv`` set, :func:`lsframe.__main__.main` called
without arguments, file descriptors 1 and 2 redirected to the case's files, and the exit status
Python would give (``SystemExit`` code, 1 after an uncaught exception with its traceback). The
child's status is written to the case's ``status`` file. Children run one at a time.
"""

from __future__ import annotations

import json
import os
import sys
import traceback


def _child(case: dict) -> int:
    os.chdir(case["cwd"])
    for fd, name in ((1, case["stdout"]), (2, case["stderr"])):
        target = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    sys.argv = ["lsframe", *case["argv"]]
    from lsframe.__main__ import main

    try:
        main()
    except SystemExit as exit_info:
        code = exit_info.code
        if code is None or isinstance(code, int):
            return code or 0
        print(code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


def run(manifest: list[dict]) -> None:
    import lightning.pytorch  # noqa: F401 - the imports every command shares, done once

    import lsframe.__main__  # noqa: F401
    import lsframe.cli  # noqa: F401
    import lsframe.search  # noqa: F401
    import lsframe.sequential  # noqa: F401

    for case in manifest:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _child(case)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        with open(case["status"], "w") as handle:
            handle.write(str(os.waitstatus_to_exitcode(status)))


if __name__ == "__main__":
    with open(sys.argv[1]) as handle:
        run(json.load(handle))
