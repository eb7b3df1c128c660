"""The Optuna study of ``lsframe search``: its storage, its trial-seeded sampler and pruner, the
config it was started with (a rerun under another is refused), and Optuna's reports of an
interrupted trial, which the command replaces by its own one line."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from lsframe._signals import received
from lsframe.checkpoint_io import file_mode
from lsframe.errors import ConfigError, one_line
from lsframe.run_config import refuse_another_config, with_fingerprints

#: The study's user attribute that holds the config it was started with.
STUDY_CONFIG = "lsframe_config"
#: Search settings that may change as a study goes on (more trials, another sampler or seed,
#: where it is kept): left out of the recorded config.
RUN_SETTINGS = tuple(
    f"search.{key}"
    for key in ("n_trials", "sampler", "pruner", "seed", "storage", "study_name", "output_dir")
)


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed of trial ``number`` of a study seeded ``seed``: drawn from the pair, so
    that studies of seeds s and s + 1 share no draws (``seed + number`` made trial k of one
    trial k + 1 of the other)."""
    import numpy as np

    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


def trial_seeded(optuna: Any, make: Callable[..., Any], seed: int) -> Any:
    """A sampler that draws trial ``n`` with a fresh ``make(seed=trial_seed(seed, n))``.

    Processes that share a study (or resume it) would otherwise each start from the same seeded
    random state and repeat one another's first draws; per trial number, draws differ between
    trials and are the same whichever process runs the trial. TPE and GP read the history from
    the study; what they cache between trials only saves time.
    """

    class TrialSeededSampler(optuna.samplers.BaseSampler):
        def __init__(self) -> None:
            self.inner = make(seed=seed)

        def before_trial(self, study: Any, trial: Any) -> None:
            self.inner = make(seed=trial_seed(seed, trial.number))
            self.inner.before_trial(study, trial)

        def infer_relative_search_space(self, study: Any, trial: Any) -> Any:
            return self.inner.infer_relative_search_space(study, trial)

        def sample_relative(self, study: Any, trial: Any, search_space: Any) -> Any:
            return self.inner.sample_relative(study, trial, search_space)

        def sample_independent(self, study: Any, trial: Any, name: str, dist: Any) -> Any:
            return self.inner.sample_independent(study, trial, name, dist)

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            self.inner.after_trial(study, trial, state, values)

        def reseed_rng(self) -> None:
            self.inner.reseed_rng()

    return TrialSeededSampler()


#: A trial's user attribute: why its training stopped (a non-finite loss, a diverging sample).
DIVERGED_ATTR = "diverged"


class TrialDiverged(Exception):
    """A trial whose training met a non-finite loss (``nonfinite_loss="raise"``): Optuna marks
    it FAIL and the study goes on (``study.optimize(catch=...)``). It counts toward
    ``n_trials`` (a sample that diverges is an outcome of the search, and a range where every
    sample diverges must still end); an interrupted trial does not."""

    def __init__(self, trial: Any, pair: int, error: Exception) -> None:
        reason = str(getattr(error, "message", error)).split(";")[0]
        super().__init__(f"trial {trial.number} diverged in pair {pair}: {reason}")
        trial.set_user_attr(DIVERGED_ATTR, reason)


def finished_trials(study: Any) -> int:
    """The trials that count toward ``n_trials``: complete, pruned, and failed by diverging."""
    import optuna

    states = optuna.trial.TrialState
    return sum(
        t.state in (states.COMPLETE, states.PRUNED)
        or (t.state == states.FAIL and DIVERGED_ATTR in t.user_attrs)
        for t in study.get_trials(deepcopy=False)
    )


def stop_at(n_trials: int) -> Callable[[Any, Any], None]:
    """Optuna callback: stop once the study has ``n_trials`` :func:`finished_trials`."""

    def stop(study: Any, trial: Any) -> None:
        if finished_trials(study) >= n_trials:
            study.stop()

    return stop


def stop_on_signal(study: Any, trial: Any) -> None:
    """Optuna callback: start no new trial once a signal has arrived."""
    if received() is not None:
        study.stop()


class DropInterrupts(logging.Filter):
    """Drops Optuna's two warnings about a trial an interrupt or a divergence failed (the first
    with its traceback): the command says in one line what stopped and how it goes on."""

    def __init__(self) -> None:
        super().__init__()
        self.then: str | None = None  # the start of the interrupted trial's second warning

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, (KeyboardInterrupt, TrialDiverged)):
            self.then = record.getMessage().split(" failed with parameters")[0] + " failed with"
            return False
        return self.then is None or not record.getMessage().startswith(self.then)


@contextmanager
def quiet_about_interrupts() -> Iterator[None]:
    """Optuna's report of a trial an interrupt failed left out while this is open."""
    logger, dropping = logging.getLogger("optuna.study._optimize"), DropInterrupts()
    logger.addFilter(dropping)
    try:
        yield
    finally:
        logger.removeFilter(dropping)


def storage_folder(storage: str) -> Path | None:
    """The folder a journal file or an SQLite database of ``search.storage`` goes in (None: a
    server's URL or an in-memory database, nothing on this disk to check)."""
    if "://" not in storage:
        return Path(storage).expanduser().parent
    if storage.startswith("sqlite:///"):
        path = storage.removeprefix("sqlite:///").split("?", 1)[0]
        return None if path in ("", ":memory:") else Path(path).parent
    return None


def check_storage(storage: str | None) -> None:
    """``search.storage``, before anything loads: the folder of a journal file or an SQLite
    database exists (Optuna creates the file, not its folder).

    Raises:
        ConfigError: at ``search.storage``.
    """
    folder = None if storage is None else storage_folder(storage)
    if folder is not None and not folder.is_dir():
        kind = "journal file" if "://" not in str(storage) else "SQLite database"
        raise ConfigError(
            f"the folder {folder} of the study's {kind} {storage} does not exist; create it or "
            "give another path",
            where="search.storage",
        )


def check_journal_ends_whole(journal: Path, settle: float = 2.0) -> None:
    """A ConfigError at ``search.storage`` if the journal file's last record is cut short (a
    full disk or a crash during an append): Optuna would append its next record to that part,
    and the line they make together no longer reads, in this run and every later one. A tail
    still growing (another process of the search appending) is waited for ``settle`` s."""
    import time

    for attempt in range(2):
        try:
            data = journal.read_bytes()
        except OSError:
            return  # a missing journal is a new study; an unreadable one fails as it opens
        if not data or data.endswith(b"\n"):
            return
        if attempt == 0:
            time.sleep(settle)
    line = data.count(b"\n") + 1
    raise ConfigError(
        f"the study's journal {journal} ends in a partial record (line {line}: a write cut "
        "short by a full disk or a crash); remove that line to go on",
        where="search.storage",
    )


def _storage(optuna: Any, location: str) -> Any:
    """The study's storage at ``location``; a storage that does not open (a bad URL, a server
    that refuses, a missing database driver) is a ConfigError at ``search.storage``."""
    if "://" not in location:
        check_journal_ends_whole(Path(location))
    try:
        if "://" not in location:
            from optuna.storages.journal import JournalFileBackend

            return optuna.storages.JournalStorage(JournalFileBackend(location))
        return optuna.storages.RDBStorage(location)
    except Exception as error:  # noqa: BLE001 - whatever the backend raises: the setting
        raise ConfigError(
            f"the study's storage {location} does not open: {one_line(error)}",
            where="search.storage",
        ) from error


def open_study(
    options: Any, pairs: int, defining: dict[str, Any] | None, maximize: bool = True
) -> Any:
    """The study ``options`` (:class:`lsframe.search_options.SearchOptions`) name, created or
    loaded: a journal file in ``output_dir`` unless ``storage`` is given, a trial-seeded TPE or GP
    sampler, a Hyperband pruner over the ``pairs`` or none. ``defining`` (the search's config,
    :mod:`lsframe.run_config`) is recorded in a study without trials; a study recorded with
    another is refused (its trials would count under the new settings); None: not checked.
    ``maximize``: whether a larger objective is better (False for a metric such as the loss)."""
    import optuna

    output_dir = Path(options.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    location = options.storage or str(output_dir / "journal.log")
    storage = _storage(optuna, location)
    claim_output_dir(
        output_dir, options.study_name, optuna, storage if not options.storage else None
    )
    if options.sampler == "gp":
        make = optuna.samplers.GPSampler
    else:
        make = partial(optuna.samplers.TPESampler, multivariate=True)
    pruner = (
        optuna.pruners.HyperbandPruner(min_resource=1, max_resource=pairs)
        if options.pruner == "hyperband"
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(
        study_name=options.study_name,
        storage=storage,
        sampler=trial_seeded(optuna, make, options.seed),
        pruner=pruner,
        direction="maximize" if maximize else "minimize",
        load_if_exists=True,
    )
    saved = None if defining is None else study.user_attrs.get(STUDY_CONFIG)
    if saved is not None:  # names the setting that changed (search.metric among them)
        refuse_another_config(
            saved,
            defining,
            f"the study {options.study_name!r} in {location}",
            "continue it with that config, or choose another search.output_dir",
            where="search.study_name",
        )
    wanted = "MAXIMIZE" if maximize else "MINIMIZE"
    if study.direction.name != wanted:  # Optuna loads a study with its stored direction
        raise ConfigError(
            f"the study {options.study_name!r} in {location} was created to "
            f"{study.direction.name.lower()} its objective and this search would "
            f"{wanted.lower()} it (search.metric changed, or a loss search started before "
            "lsframe minimised the loss): a study keeps its direction; choose another "
            "search.output_dir",
            where="search.study_name",
        )
    if defining is not None and saved is None and not study.get_trials(deepcopy=False):
        study.set_user_attr(STUDY_CONFIG, with_fingerprints(defining))
    return study


STUDY_MARK = "study_name.txt"  # the study whose results an output_dir holds


def claim_output_dir(output_dir: Path, study_name: str, optuna: Any, journal: Any) -> None:
    """Refuse a study whose ``output_dir`` holds another study's results (its
    ``best_distribution.yaml``, ``trials.json`` and ``trial_<n>`` folders would be replaced,
    the folders by number), else mark the folder as this study's. A folder of before
    2026-12-07 has no mark; its own journal (``journal``, None for another storage) tells."""
    mark = output_dir / STUDY_MARK
    if mark.is_file():
        other = mark.read_text(encoding="utf-8").strip()
    elif journal is not None and (output_dir / "journal.log").is_file():
        names = [n for n in optuna.get_all_study_names(journal) if n != study_name]
        other = names[0] if names else None
    else:
        other = None
    if other is not None and other != study_name:
        raise _another_study(output_dir, other)
    if not mark.is_file():
        _claim(mark, study_name)


def _another_study(output_dir: Path, other: str) -> ConfigError:
    return ConfigError(
        f"search.output_dir {output_dir} holds the results of the study {other!r}; another "
        "study there would replace them: give this one its own search.output_dir",
        where="search.study_name",
    )


def _claim(mark: Path, study_name: str) -> None:
    """Create ``mark`` holding ``study_name`` whole or not at all, where several processes of a
    search may claim it at once: each links its own complete file to the name (atomic, and
    refused when the name exists), then a refused one checks what the first wrote."""
    import os
    import tempfile

    handle, own = tempfile.mkstemp(dir=mark.parent, prefix=f".{mark.name}.")
    os.fchmod(handle, file_mode())  # mkstemp's 0600 would lock the group out of a shared search
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(f"{study_name}\n")
        os.link(own, mark)
    except FileExistsError:
        other = mark.read_text(encoding="utf-8").strip()
        if other != study_name:
            raise _another_study(mark.parent, other) from None
    finally:
        os.unlink(own)


PROCESS_ATTR = "lsframe_process"  # host:pid of the process that runs a trial
#: ``<pid namespace>/<start time>`` of that process (Linux), which tells a pid reused by
#: another process, or one of another container on the same host name, from the owner.
PROCESS_START_ATTR = "lsframe_process_start"


def process_name() -> str:
    """``host:pid`` of this process, recorded on each trial it runs."""
    import os
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def process_start(pid: int | str = "self") -> str | None:
    """``<pid namespace>/<start time in clock ticks>`` of process ``pid`` as this process sees
    it (:data:`PROCESS_START_ATTR`); None where ``/proc`` does not say (not Linux, gone)."""
    import os

    try:
        namespace = os.readlink("/proc/self/ns/pid")
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return f"{namespace}/{fields[19]}"  # field 22, starttime
    except (OSError, IndexError):
        return None


def fail_dead_trials(study: Any, output_dir: Path) -> list[int]:
    """Mark FAIL the trials left RUNNING by a process of this host that no longer exists (a
    ``kill -9``, an out-of-memory kill, a lost node's job restarted here), and delete their
    folders (a stage checkpoint among them); the numbers of those trials. Trials of live
    processes (a search run by several processes at once), of other hosts and of another PID
    namespace on this host name (a container) are left alone; a trial that another process
    failed first is skipped."""
    import shutil

    import optuna

    host = process_name().rsplit(":", 1)[0]
    namespace = (process_start() or "").rsplit("/", 1)[0]
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        owner = str(trial.user_attrs.get(PROCESS_ATTR, ""))
        name, _, pid = owner.rpartition(":")
        if name != host or not pid.isdigit():
            continue
        started = trial.user_attrs.get(PROCESS_START_ATTR)  # None: a trial of before 2026-12-07
        if started is not None:
            if str(started).rsplit("/", 1)[0] != namespace:
                continue  # its pid means another process here
            if process_start(pid) == started:
                continue  # the owner runs
        elif _alive(int(pid)):
            continue
        try:
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        except (ValueError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another process failed it since the list was read
        shutil.rmtree(output_dir / f"trial_{trial.number}", ignore_errors=True)
        failed.append(trial.number)
    return failed


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True
