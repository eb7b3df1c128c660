"""``--ckpt_path last`` and ``--ckpt_path best`` from the config: the files of the newest fit.

Lightning resolves these names inside the Trainer, from the checkpoint callback of the running
process. A ``fit`` that continues (``lsframe fit --ckpt_path last``) reuses the logger version
of the newest last checkpoint (:meth:`lsframe.cli_resume.ResumeChecks.continue_last_run`).
``validate``, ``test`` and ``predict`` run in a new process with a new logger version, whose
empty checkpoint folder holds neither: Lightning would warn and evaluate the model as the config
builds it (for a pretrained encoder, with a freshly initialised head) and exit 0. Here the names
are resolved before anything is built, in the folders the config's fit wrote:

* ``last``: the newest ``last*.ckpt`` of the ``checkpoint`` section's ``dirpath`` when set,
  else of ``<logger save_dir>/<name>/version_*/checkpoints``;
* ``best``: the best checkpoint that last checkpoint's ModelCheckpoint state records.

Neither found: one line at ``ckpt_path`` naming the folder searched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lsframe.checkpoint_io import find_last_checkpoint, newest_last
from lsframe.config_nodes import node_get
from lsframe.errors import ConfigError

#: The subcommands that evaluate a finished fit's checkpoint.
EVALUATING = ("validate", "test", "predict")


def logger_root(section: Any) -> Path | None:
    """``<save_dir>/<name>`` of the config's (first) logger, where its ``version_<n>`` folders
    are; None without a logger that has a ``save_dir``, or with a fixed ``version``."""
    logger = node_get(node_get(section, "trainer"), "logger")
    if isinstance(logger, list):
        logger = logger[0] if logger else None
    init = node_get(logger, "init_args")
    if init is None or node_get(init, "save_dir") is None or node_get(init, "version") is not None:
        return None
    return Path(node_get(init, "save_dir")) / str(node_get(init, "name") or "")


def _recorded_best(last: Path) -> Path | None:
    """The best checkpoint a last checkpoint's ModelCheckpoint state records, if still there."""
    from lsframe.checkpoints import read_lightning_checkpoint

    callbacks = read_lightning_checkpoint(last).get("callbacks") or {}
    # the checkpoint section's first; a path recorded relative to the fit's working directory
    # (a logger save_dir such as runs) is looked for beside the last checkpoint too
    states = sorted(callbacks.items(), key=lambda item: not item[0].startswith("BestAndLast"))
    for _, state in states:
        best = state.get("best_model_path") if isinstance(state, dict) else None
        for path in (Path(last).parent / Path(best).name, Path(best)) if best else ():
            if path.is_file():
                return path
    return None


def resolve_for_evaluation(section: Any, subcommand: str) -> str | None:
    """The file ``--ckpt_path last|best`` stands for in ``validate``, ``test`` and ``predict``
    (see the module docstring); None when ``ckpt_path`` is not one of those names here.

    Raises:
        ConfigError: at ``ckpt_path``, when the fit's folders hold no such checkpoint.
    """
    name = node_get(section, "ckpt_path")
    if subcommand not in EVALUATING or name not in ("last", "best"):
        return None
    dirpath = node_get(node_get(section, "checkpoint"), "dirpath")
    if dirpath is not None:
        where = Path(dirpath)
        last = newest_last("last*.ckpt", where)
    else:
        root = logger_root(section)
        if root is None:
            raise ConfigError(
                f"--ckpt_path {name} looks for the fit's checkpoints under the logger's "
                "save_dir/name or the checkpoint section's dirpath, and this config sets "
                "neither (or a fixed logger version): name the checkpoint file",
                where="ckpt_path",
            )
        where = root / "version_*" / "checkpoints"
        found = find_last_checkpoint(root)
        last = found[1] if found else None
    if last is None:
        raise ConfigError(
            f"no last checkpoint under {where}: {subcommand} --ckpt_path {name} evaluates the "
            "newest fit written there; run the fit first, or name the checkpoint file",
            where="ckpt_path",
        )
    if name == "last":
        return str(last)
    best = _recorded_best(last)
    if best is None:
        raise ConfigError(
            f"the fit's last checkpoint {last} records no best checkpoint that still exists "
            "(no validation ran, or the file was removed): name a checkpoint file",
            where="ckpt_path",
        )
    return str(best)
