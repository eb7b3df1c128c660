"""Optimizer specs of the benchmarks: ``name+preset@lr~schedule`` to a :class:`Run`, and the spec of
lsframe's learning-rate-free default."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

import torch
from torch import nn

from benchmarks.common import Run
from lsframe import optim
from lsframe.optim import WarmupCosineLR
from lsframe.parts import part_groups


def combined_presets(
    info: optim.OptimizerInfo, presets: Sequence[str], spec: str
) -> dict[str, Any]:
    """The constructor arguments of ``presets`` together (none: nothing beyond the class's
    defaults, or :data:`PINNED`'s rules under them).

    Raises:
        ValueError: a preset is unknown, or two set one key to different values.
    """
    kwargs: dict[str, Any] = {}
    for preset in presets:
        for key, value in info.preset(preset).items():
            if kwargs.get(key, value) != value:
                raise ValueError(f"{spec!r}: presets {'+'.join(presets)} disagree on {key}")
            kwargs[key] = value
    return kwargs


#: the rules a registry name's bare spec keeps, whatever the class's defaults now are: the
#: logged runs of ``slope_tracking_adam`` ran with the defaults until 2026-12, and its present
#: defaults are :data:`DEFAULT`'s presets and ``lr``
PINNED = {"slope_tracking_adam": optim.info("slope_tracking_adam").preset("earlier_defaults")}
#: a spec's ``~schedule`` of the step sizes' multiplier: the warmup's share of a cosine to 0
SCHEDULES = {"": None, "anneal": 0.0, "warmup_anneal": 0.1}


#: the comparison optimizers from other packages: spec name -> (module, lsframe extra)
PACKAGES = {
    "prodigy": ("prodigyopt", "bench"),
    "dadaptadam": ("dadaptation", "bench"),
    "schedulefree": ("schedulefree", "bench"),
    "salsa-reference": ("salsa", "dev"),
}


def spec_name(spec: str) -> str:
    """The optimizer a spec names, without its presets, start, schedule or held-out mark:
    ``slope_tracking_adam+slope@1e-4~anneal^heldout`` -> ``slope_tracking_adam``."""
    return spec[: _presets_end(spec)].partition("+")[0]


def check_installed(specs: Sequence[str]) -> None:
    """Stop in one line, before any run, when a spec's optimizer package is not installed (a
    run would otherwise fail with an ImportError after the runs before it)."""
    for spec in specs:
        module, extra = PACKAGES.get(spec_name(spec), (None, None))
        if module and importlib.util.find_spec(module) is None:
            raise SystemExit(
                f"optimizer spec {spec!r} needs the package {module!r}: pip install -e '.[{extra}]'"
            )


#: the peers that choose their own step size (an ``@lr`` would be ignored)
NO_LR = ("salsa-reference", "prodigy", "dadaptadam")
#: the baselines given a learning rate
NEEDS_LR = ("adamw", "adamw-const", "adamw-fused-const", "schedulefree")


def check_specs(specs: Sequence[str]) -> None:
    """Stop in one line, before any data loads, at the first spec :func:`build` refuses
    (``bogus``, ``adamw@abc``), or whose package is not installed (:func:`check_installed`).
    A ``^`` suffix (:mod:`benchmarks.heldout`'s modes) is checked on its base spec."""
    check_installed(specs)
    probe = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    for spec in specs:
        base, _, mark = spec.partition("^")
        try:
            run = build(base, probe, 10)
            if mark and run.scheduler is None:  # what heldout.py's modes scale
                raise ValueError(f"^{mark} needs a schedule (AdamW, or a ~anneal)")
        except (ValueError, TypeError) as error:  # TypeError: a spec missing its lr (adamw)
            raise SystemExit(f"optimizer spec {spec!r}: {error}") from None


def build(spec: str, model: nn.Module, total_steps: int) -> Run:
    """A run from a spec: ``adamw@5e-5`` (with 10 % warmup + cosine), ``adamw-const@5e-5``,
    ``adamw-fused-const@5e-5`` (torch's fused kernel instead of foreach),
    ``salsa-reference``, ``prodigy``, ``dadaptadam``, ``schedulefree@<lr>``, or any other name
    in lsframe's registry (``lsframe.optim.names()``: its defaults, or :data:`PINNED`'s rules
    where the name has some; ``name+robust`` its robust preset; ``name+agree+fresh_peak`` two
    presets at once, refused where they set a key differently; ``name@<lr>`` sets ``lr``;
    ``name~anneal`` decays its step sizes' multiplier by a cosine from 1 to 0 over the run, as a
    module's ``lr_scheduler`` does; ``name~warmup_anneal`` first raises it linearly over 10 % of
    the run, the AdamW grid's schedule), given the parameter groups its record asks for."""
    body, _, schedule = spec.partition("~")
    if schedule not in SCHEDULES:
        raise ValueError(
            f"unknown schedule {schedule!r} in optimizer spec {spec!r}: use one of "
            f"{', '.join('~' + s for s in SCHEDULES if s)}"
        )
    name, _, lr_text = body.partition("@")
    name, *presets = name.split("+")
    if schedule and not (name in optim.names() and optim.info(name).searches):
        raise ValueError(f"{spec!r}: ~{schedule} is for lsframe's line searches (lr_multiplier)")
    lr = float(lr_text) if lr_text else None
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr_text}")
    if name in NO_LR + NEEDS_LR:  # the baselines and peers: no preset, and some no lr
        if presets:
            raise ValueError(f"{name} takes no preset, got +{'+'.join(presets)}")
        if lr is not None and name in NO_LR:
            raise ValueError(f"{name} sets its own step size: give no @lr")
        if lr is None and name in NEEDS_LR:
            raise ValueError(f"{name} needs a learning rate: {name}@<lr>")
    params = [p for p in model.parameters() if p.requires_grad]
    warmup = max(1, math.ceil(0.1 * total_steps))
    if name in ("adamw", "adamw-const", "adamw-fused-const"):
        kernels = {"fused": True} if name == "adamw-fused-const" else {"foreach": True}
        opt = torch.optim.AdamW(params, lr=lr, **kernels)
        sched = WarmupCosineLR(opt, total_steps=total_steps) if name == "adamw" else None
        return Run(spec, model, opt, sched)
    if name in optim.names():
        info = optim.info(name)
        groups = part_groups(model) if info.param_grouping == "parts" else params
        kwargs = PINNED.get(name, {}) | combined_presets(info, presets, spec)
        kwargs |= {} if lr is None else {"lr": lr}
        opt = info.create(groups, **kwargs)
        optim.set_run_length(opt, total_steps)
        if not schedule:
            return Run(spec, model, opt)
        from lsframe.modules.optimizer_setup import make_scheduler  # the module's own path

        anneal = partial(WarmupCosineLR, warmup_ratio=SCHEDULES[schedule])
        return Run(spec, model, opt, make_scheduler(opt, anneal, lambda: total_steps))
    if name == "salsa-reference":
        from salsa.SaLSA import SaLSA

        return Run(spec, model, SaLSA(params), kind="reference")
    if name == "prodigy":
        from prodigyopt import Prodigy

        # the package's recommendation: lr 1.0, safeguard_warmup with a warmup, cosine decay
        opt = Prodigy(params, lr=1.0, safeguard_warmup=True)
        return Run(spec, model, opt, WarmupCosineLR(opt, total_steps=total_steps))
    if name == "dadaptadam":
        from dadaptation import DAdaptAdam

        opt = DAdaptAdam(params, lr=1.0)
        return Run(spec, model, opt, WarmupCosineLR(opt, total_steps=total_steps))
    if name == "schedulefree":
        from schedulefree import AdamWScheduleFree

        opt = AdamWScheduleFree(params, lr=lr, warmup_steps=warmup)
        return Run(spec, model, opt, kind="schedulefree")
    raise ValueError(f"unknown optimizer spec {spec!r}")


#: lsframe's learning-rate-free default as a spec: SlopeTrackingAdam's defaults, spelled out
#: (since 2026-12-04 with ``burn_in`` and ``hold_warmup``, since 2026-12-05 with
#: ``long_run_start``), with the 10 % warmup and cosine anneal of the multiplier that its config
#: adds
DEFAULT = (
    "slope_tracking_adam+significant+fresh_peak+slope+burn_in+hold_warmup+long_run_start"
    "@1e-4~warmup_anneal"
)
#: the default of 2026-12-04 (the same start on runs of any length): the spec of its logged runs,
#: which are :data:`DEFAULT`'s on runs of up to :data:`LONG_RUN_STEPS` steps (:func:`logged_as`)
BURN_IN_DEFAULT = (
    "slope_tracking_adam+significant+fresh_peak+slope+burn_in+hold_warmup@1e-4~warmup_anneal"
)
#: the default from 2026-12-03 to 2026-12-04 (no burn-in, no hold, the cosine without warmup):
#: the spec of its logged runs
PREVIOUS_DEFAULT = "slope_tracking_adam+significant+fresh_peak+slope@1e-4~anneal"
#: the preset that lowers the start of a long run: up to this many steps it changes nothing
LONG_RUN_PRESET = "long_run_start"
LONG_RUN_STEPS: int = optim.info("slope_tracking_adam").preset(LONG_RUN_PRESET)["long_run_steps"]


def _first_mark(text: str, marks: str) -> int:
    """Where the first of ``marks`` occurs in ``text`` (its length when none does)."""
    return min((i for i in map(text.find, marks) if i >= 0), default=len(text))


def _presets_end(spec: str) -> int:
    """Where a spec's ``name+presets`` ends (at its ``@``, ``~`` or ``^``, or its end)."""
    return _first_mark(spec, "@~^")


def without_preset(spec: str, preset: str) -> str:
    """``spec`` without the preset ``preset`` (unchanged when it has none)."""
    end = _presets_end(spec)
    name, *presets = spec[:end].split("+")
    return "+".join([name, *(p for p in presets if p != preset)]) + spec[end:]


def logged_as(spec: str, total_steps: int) -> str:
    """The spec whose logged run over ``total_steps`` steps is ``spec``'s own run: without the
    preset ``long_run_start`` on a run of at most :data:`LONG_RUN_STEPS` steps, where that preset
    changes nothing (the two build the same param groups, and the option acts on the start
    alone: ``tests/test_quality_specs.py``, ``tests/test_slope_tracking_run_length.py``), else
    ``spec`` itself. So runs logged before the preset joined the default count for the default
    where they are its runs, and only there."""
    return without_preset(spec, LONG_RUN_PRESET) if total_steps <= LONG_RUN_STEPS else spec


def without_start(spec: str) -> str:
    """``spec`` without what sets its start alone, its ``@lr`` and the preset
    ``long_run_start``: ``name+presets~schedule^mark``. Two specs of an optimizer without
    forward trials that agree on it do the same work per step."""
    spec = without_preset(spec, LONG_RUN_PRESET)
    end = _presets_end(spec)
    rest = spec[end:]
    if rest.startswith("@"):
        rest = rest[_first_mark(rest, "~^") :]
    return spec[:end] + rest


def cost_twin(spec: str, timed: Sequence[str]) -> str | None:
    """The spec among ``timed`` whose step costs what ``spec``'s does, where ``spec`` is not
    among them: one that differs from it only in its start (:func:`without_start`), for an
    lsframe optimizer without forward trials (a line search's trials depend on the step
    size); None when there is none."""
    name = spec_name(spec)
    if spec in timed or name not in optim.names() or optim.info(name).forward_trials:
        return None
    return next((t for t in timed if without_start(t) == without_start(spec)), None)


def with_same_runs(
    runs: Sequence[dict], specs: Sequence[str], total_steps: int | Callable[[dict], int]
) -> list[dict]:
    """``runs`` and, for each of ``specs``, a copy under its name of each run of
    :func:`logged_as` it on a seed where it has no run of its own, marked ``same_run_as`` with
    the spec it was logged under. ``total_steps``: the runs' length (at most), or a function of
    a run that gives it."""
    length = total_steps if callable(total_steps) else lambda run: total_steps
    own = {(r["optimizer"], r.get("seed", 0)) for r in runs}
    copies: dict[tuple[str, int], dict] = {}  # the last logged run of a seed, as in a table
    for spec in specs:
        for run in runs:
            twin, seed = run["optimizer"], run.get("seed", 0)
            if twin != spec and twin == logged_as(spec, length(run)) and (spec, seed) not in own:
                copies[spec, seed] = {**run, "optimizer": spec, "same_run_as": twin}
    return [*runs, *copies.values()]


def default_mode(preset: str) -> str:
    """The default's spec with one more preset (``"fused"``, ``"sampled"``)."""
    name, _, rest = DEFAULT.partition("@")
    return f"{name}+{preset}@{rest}"


#: the default's modes that the cost and time-to-target claims read: eager, strided, fused
DEFAULT_MODES = (DEFAULT, default_mode("sampled"), default_mode("fused"))
#: the step-cost table of :data:`DEFAULT_MODES` per model (the previous default's tables are
#: ``step_cost_<model>_default_<device>``)
DEFAULT_COST_TABLE = "step_cost_{model}_burn_in"


def same_runs_note(runs: Iterable[dict]) -> str:
    """A table's note on the runs that :func:`with_same_runs` copied ("" when none)."""
    pairs = dict.fromkeys((r["optimizer"], r["same_run_as"]) for r in runs if "same_run_as" in r)
    return "; ".join(
        f"{spec}: the runs logged as {twin}, the same runs (at most {LONG_RUN_STEPS} steps, "
        f"where {LONG_RUN_PRESET} changes nothing)"
        for spec, twin in pairs
    )
