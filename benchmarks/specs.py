"""Optimizer specs of the benchmarks: ``name+preset@lr~schedule`` to a :class:`Run`, and the spec of
lsframe's learning-rate-free default."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
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
    return spec.partition("^")[0].partition("~")[0].partition("@")[0].partition("+")[0]


def check_installed(specs: Sequence[str]) -> None:
    """Stop in one line, before any run, when a spec's optimizer package is not installed (a
    run would otherwise fail with an ImportError after the runs before it)."""
    for spec in specs:
        module, extra = PACKAGES.get(spec_name(spec), (None, None))
        if module and importlib.util.find_spec(module) is None:
            raise SystemExit(
                f"optimizer spec {spec!r} needs the package {module!r}: pip install -e '.[{extra}]'"
            )


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
#: (since 2026-12-04 with ``burn_in`` and ``hold_warmup``), with the 10 % warmup and cosine
#: anneal of the multiplier that its config adds
DEFAULT = "slope_tracking_adam+significant+fresh_peak+slope+burn_in+hold_warmup@1e-4~warmup_anneal"
#: the default from 2026-12-03 to 2026-12-04 (no burn-in, no hold, the cosine without warmup):
#: the spec of its logged runs
PREVIOUS_DEFAULT = "slope_tracking_adam+significant+fresh_peak+slope@1e-4~anneal"


def default_mode(preset: str) -> str:
    """The default's spec with one more preset (``"fused"``, ``"sampled"``)."""
    name, _, rest = DEFAULT.partition("@")
    return f"{name}+{preset}@{rest}"


#: the default's modes that the cost and time-to-target claims read: eager, strided, fused
DEFAULT_MODES = (DEFAULT, default_mode("sampled"), default_mode("fused"))
#: the step-cost table of :data:`DEFAULT_MODES` per model (the previous default's tables are
#: ``step_cost_<model>_default_<device>``)
DEFAULT_COST_TABLE = "step_cost_{model}_burn_in"
