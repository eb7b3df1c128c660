"""One record per optimizer: what it is and what the rest of lsframe needs to know about it.

``create("salsa", params)`` builds by name; :func:`info` and :func:`info_for` give the record
(:class:`OptimizerInfo`, in the spirit of timm's ``OptimInfo`` and torch's ``OptimizerInfo`` test
tables). The module, the search, the benchmarks and the test tables read these fields instead of
branching on names, so a new optimizer is one file plus one :func:`register` call.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from torch.optim import Optimizer

from lsframe.optim._linesearch import LineSearchOptimizer, check_defines_step
from lsframe.optim.adam_e import AdamE
from lsframe.optim.adam_sls import AdamSLS
from lsframe.optim.alsals import ALSALS
from lsframe.optim.alto import ALTO
from lsframe.optim.lamb import Lamb
from lsframe.optim.plasls import PLASLS
from lsframe.optim.salsa import SaLSA
from lsframe.optim.slope_tracking_adam import SlopeTrackingAdam
from lsframe.optim.sls import SGDSLS


@dataclass(frozen=True)
class OptimizerInfo:
    """The facts about one optimizer class.

    Attributes:
        name: Registry name (lower case), as in YAML's ``create`` and the benchmarks' specs.
        cls: The optimizer class.
        searches: It owns its step size (a line search, or SlopeTrackingAdam's tracker): its
            groups carry ``lr_multiplier``, on which schedules and learning-rate distributions
            act (``lr = step_size · lr_multiplier``); with ``forward_trials``, ``step`` needs
            lsframe's closure ``closure(backward=True)``.
        amortized: A line search that searches on some steps only (SaLSA), so its cost per step
            depends on the run length; False: it searches on every step, or (without
            ``forward_trials``) runs no trial at all.
        param_grouping: ``"parts"`` when it needs one param group per part of the model, each
            with a ``part`` key (:func:`lsframe.parts.part_groups`); ``"any"`` otherwise.
        forward_trials: It takes forward-only trial evaluations as ``step(closure, forward=...)``.
        reduces_over_parameters: It takes norms or inner products over whole parameters, which
            FSDP1's flat slices hide (refused there; FSDP2's DTensors are reduced correctly).
        test_lr: The learning rate the shared tests use; None: the optimizer's own default.
        presets: Named sets of constructor arguments (``"robust"``: see :data:`PRESETS`); the
            class's own defaults are the paper's, always available as ``"paper"``.
        invalid_args: ``(kwargs, key)`` cases for which the constructor must raise a
            ``ValueError`` naming ``key`` (the shared bad-input table).
    """

    name: str
    cls: type[Optimizer]
    searches: bool = False
    amortized: bool = False
    param_grouping: Literal["any", "parts"] = "any"
    forward_trials: bool = False
    reduces_over_parameters: bool = False
    test_lr: float | None = None
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    invalid_args: tuple[tuple[dict[str, Any], str], ...] = field(default=())

    def preset(self, name: str) -> dict[str, Any]:
        """The constructor arguments of preset ``name`` (``"paper"``: none, the defaults).

        Raises:
            ValueError: unknown preset; the message lists this optimizer's presets.
        """
        if name == "paper":
            return {}
        if name not in self.presets:
            known = ", ".join(["paper", *self.presets])
            raise ValueError(f"optimizer {self.name!r} has no preset {name!r}; presets: {known}")
        return dict(self.presets[name])

    def create(self, params: Any, preset: str = "paper", **kwargs: Any) -> Optimizer:
        """Build the optimizer: ``cls(params, **preset arguments, **kwargs)`` (``kwargs`` win)."""
        return self.cls(params, **{**self.preset(preset), **kwargs})


#: lsframe's robust presets of the papers' rules, from their authors' own advice and from
#: ../specs/LINESEARCH-NOTES (measured in benchmarks/results/quality_s_*; README's table).
#: Plain Armijo with c = 0.1 on the batch that chose the direction accepts 8–25× the step that
#: generalises on a short fine-tune; c = 0.5 halves the accepted step along a quadratic, and the
#: smoothed test (P0's advice for AdamSLS) averages the decrease over batches. ALSALS's β = 0.99
#: averages over ~100 steps, so its step size cannot come down in a short run: β = 0.9 can.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "sgdsls": {"robust": {"c": 0.5}},
    "adamsls": {"robust": {"c": 0.5, "smooth": True}},
    "plasls": {"robust": {"c": 0.5, "smooth": True}},
    "alsals": {"robust": {"c": 0.5, "beta": 0.9}},
    # the authors' package's bias correction, one step ahead (1 − β^(t+1)): its first Adam step
    # is about 0.74× lsframe's at the same η (SaLSA's docstring; README's MRPC figures)
    "salsa": {"package": {"bias_correction_offset": 1}},
    # η grows on the first pass over the data only: better on 500 examples × 5 epochs, worse on
    # 2,000 × 3 (SlopeTrackingAdam's docstring; benchmarks' ``slope_tracking_adam+fresh_growth``)
    # "agree": no drift of η under pure noise (the earlier defaults' min of two horizons decays it);
    # "agree_else_min" keeps the short horizon's brake where the two disagree
    "slope_tracking_adam": {
        # the defaults until 2026-12-03: from 1e-5, the minimum of the two horizons on every step
        # (η drifts down under noise, to nothing over long runs), the cosine, no cap on repeats,
        # no burn-in and no hold (both defaults since 2026-12-04), the same start on runs of any
        # length (the long-run start is a default since 2026-12-05)
        "earlier_defaults": {
            "lr": 1e-5,
            "combine_horizons": "min",
            "cap_at_fresh_peak": False,
            "alignment_measure": "cosine",
            "hold_while_warming": False,
            "burn_in": False,
            "long_run_steps": None,
        },
        "fresh_growth": {"grow_on_repeats": False},
        "agree": {"combine_horizons": "agree"},
        "agree_fresh": {"combine_horizons": "agree", "grow_on_repeats": False},
        "agree_else_min": {"combine_horizons": "agree_else_min"},
        # η holds until the slow average of the alignment clears two standard errors of noise
        "significant": {"combine_horizons": "significant"},
        # growth on repeated batches up to the first pass's largest η (not above it)
        "fresh_peak": {"cap_at_fresh_peak": True},
        # start at the top of the usual fine-tuning grid and never above it: the alignment
        # can only lower η (and raise it back to the start)
        "from_top": {"lr": 1e-4, "max_step_size": 1e-4},
        # the alignment from every 16th row of the large matrices (about 1/16 of its memory
        # traffic: benchmarks/results/alignment_sample_cpu.md, step_cost_*)
        "sampled": {"alignment_stride": 16},
        # the rule on the slope ⟨g, d⟩ instead of its cosine: a steep batch after an overshoot
        # counts more (benchmarks/results/slope_ratio_probe_cpu.md)
        "slope": {"alignment_measure": "slope"},
        # a warmup's steps are short on purpose: their alignments are not averaged, η holds
        # (a default since 2026-12-04; the preset spells it out over ``earlier_defaults``)
        "hold_warmup": {"hold_while_warming": True},
        # the first alignments are a transient (the slope's scale grows, every step looks too
        # short): η may fall from the start but grows only after the burn-in (a default too)
        "burn_in": {"burn_in": True},
        # a run longer than setting M's 375 steps (the longest the 1e-4 start was measured at
        # against the AdamW grid) starts at 1e-4 · √(375 / T): the fixed-horizon 1/√T rule (a
        # default since 2026-12-05; the preset spells it out over ``earlier_defaults``)
        "long_run_start": {"long_run_steps": 375},
        # the same rule by compiled one-pass kernels (``fused=True``; the first step compiles)
        "fused": {"fused": True},
    },
}


def _line_search(name: str, cls: type[Optimizer], **facts: Any) -> OptimizerInfo:
    facts = {"forward_trials": True, "presets": PRESETS.get(name, {}), **facts}
    return OptimizerInfo(name, cls, searches=True, reduces_over_parameters=True, **facts)


_RECORDS = [
    _line_search(
        "sgdsls",
        SGDSLS,
        invalid_args=(
            ({"c": 1.5}, "c"),
            ({"beta_b": 0.0}, "beta_b"),
            ({"lr": -1.0}, "lr"),
            ({"reset_option": 3}, "reset_option"),
            ({"reset_option": True}, "reset_option"),  # True == 1, but not an option
            ({"beta_f": "2"}, "beta_f"),
            ({"line_search_fn": "wolfe"}, "line_search_fn"),
            ({"max_backtracks": 0}, "max_backtracks"),
            ({"min_step_size": -1e-6}, "min_step_size"),
        ),
    ),
    _line_search(
        "adamsls",
        AdamSLS,
        invalid_args=(
            ({"betas": (1.0, 0.999)}, "betas"),
            ({"betas": 0.9}, "betas"),
            ({"betas": (0.9,)}, "betas"),
            ({"smooth": "false"}, "smooth"),  # a non-empty string would switch it on
            ({"eps": 0.0}, "eps"),
            ({"weight_decay": -0.1}, "weight_decay"),
            ({"min_step_size": -1e-6}, "min_step_size"),
        ),
    ),
    _line_search(
        "plasls",
        PLASLS,
        param_grouping="parts",
        invalid_args=(
            ({"joint_steps": -1}, "joint_steps"),
            ({"merge_below": 0.0}, "merge_below"),
            ({"min_step_size": -1e-6}, "min_step_size"),
        ),
    ),
    _line_search(
        "alsals",
        ALSALS,
        invalid_args=(
            ({"beta": 1.0}, "beta"),
            ({"c": 0.0}, "c"),
            ({"probe": 0.0}, "probe"),
            ({"probe": -5e-9}, "probe"),
            ({"slope": "central"}, "slope"),
            ({"min_step_size": -1.0}, "min_step_size"),
        ),
    ),
    _line_search(
        "salsa",
        SaLSA,
        amortized=True,
        invalid_args=(
            ({"betas": (0.9, 0.999)}, "betas"),
            ({"betas": 0.9}, "betas"),
            ({"use_mv": "no"}, "use_mv"),
            ({"amortize": 1}, "amortize"),
            ({"growth": 0.0}, "growth"),
            ({"min_step_size": -1e-6}, "min_step_size"),
        ),
    ),
    _line_search(
        "slope_tracking_adam",
        SlopeTrackingAdam,
        forward_trials=False,
        test_lr=1e-2,  # η0: the shared tests train small models from scratch in few steps (the
        # burn-in holds η there for their first 29 slopes, so it starts where Adam's tests do)
        invalid_args=(
            ({"max_change": 1.0}, "max_change"),
            ({"max_change": "1.2"}, "max_change"),
            ({"alignment_betas": (0.5, 1.0, 0.99)}, "alignment_betas"),
            ({"alignment_betas": (0.5, 0.99)}, "alignment_betas"),
            ({"alignment_betas": 0.9}, "alignment_betas"),
            ({"gain_decay": "false"}, "gain_decay"),
            ({"min_step_size": 1.0}, "min_step_size"),  # above lr: η would jump to it
            ({"grow_on_repeats": "no"}, "grow_on_repeats"),
            ({"combine_horizons": "max"}, "combine_horizons"),
            ({"alignment_measure": "sine"}, "alignment_measure"),
            ({"alignment_measure": ["slope"]}, "alignment_measure"),
            ({"fused": 1}, "fused"),
            ({"cap_at_fresh_peak": "yes"}, "cap_at_fresh_peak"),
            ({"max_step_size": 1e-6}, "max_step_size"),  # below lr
            ({"max_step_size": "1e-4"}, "max_step_size"),
            ({"max_step_size": float("nan")}, "max_step_size"),
            ({"max_step_size": -1.0}, "max_step_size"),
            ({"lr": 1e-5, "min_step_size": 1e-3, "max_step_size": 1e-4}, "max_step_size"),
            ({"betas": (0.9, 1.0)}, "betas"),
            ({"lr": 0.0}, "lr"),
        ),
    ),
    OptimizerInfo(
        "lamb",
        Lamb,
        reduces_over_parameters=True,
        test_lr=1e-2,
        invalid_args=(({"betas": 0.9}, "betas"), ({"always_adapt": "no"}, "always_adapt")),
    ),
    OptimizerInfo(
        "alto",
        ALTO,
        reduces_over_parameters=True,
        test_lr=1e-2,
        invalid_args=(
            ({"first_step_kick": "no"}, "first_step_kick"),
            ({"alpha": "0.5"}, "alpha"),
            ({"lr": -0.05}, "lr"),
        ),
    ),
    OptimizerInfo(
        "adame",
        AdamE,
        test_lr=1e-2,
        invalid_args=(
            ({"first_step_kick": 1}, "first_step_kick"),
            ({"lr": True}, "lr"),
            ({"weight_decay": "0.1"}, "weight_decay"),
            ({"alpha": "0.5"}, "alpha"),
        ),
    ),
    OptimizerInfo("adamw", torch.optim.AdamW, test_lr=1e-2),
    OptimizerInfo("adam", torch.optim.Adam, test_lr=1e-2),
    OptimizerInfo("sgd", torch.optim.SGD, test_lr=0.05),
]

REGISTRY: dict[str, OptimizerInfo] = {record.name: record for record in _RECORDS}


def names(searches: bool | None = None) -> list[str]:
    """The registered names, sorted; ``searches=True`` (False): only (no) line searches."""
    return sorted(n for n, r in REGISTRY.items() if searches is None or r.searches == searches)


def line_searches() -> list[str]:
    """The names of the registered line searches, in registration order."""
    return [n for n, r in REGISTRY.items() if r.searches]


def register(record: OptimizerInfo | str, cls: type[Optimizer] | None = None) -> OptimizerInfo:
    """Register ``record`` under ``record.name`` (lower case); re-registering the same record is
    allowed, another record under a taken name is an error.

    ``register(name, cls)`` (lsframe's earlier form) still works: it registers the record
    :func:`info_for` derives for ``cls``."""
    if isinstance(record, str):
        if cls is None:
            raise TypeError("register(name, cls) needs the class")
        record = replace(info_for(cls), name=record.lower(), cls=cls, invalid_args=())
    check_record(record)
    key = record.name.lower()
    if key != record.name:
        raise ValueError(f"optimizer names are lower case, got {record.name!r}")
    if key in REGISTRY and REGISTRY[key] != record:
        raise ValueError(f"optimizer name {key!r} is already registered to {REGISTRY[key].cls}")
    REGISTRY[key] = record
    return record


def _takes_forward(cls: type) -> bool:
    """Whether ``cls.step`` accepts a ``forward`` argument (by name or ``**kwargs``)."""
    parameters = inspect.signature(cls.step).parameters
    return "forward" in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    )


def check_record(record: OptimizerInfo) -> None:
    """Raise TypeError or ValueError naming the first field of ``record`` that contradicts its
    class: the module and the config checks act on these facts (which call ``step`` gets, which
    groups the optimizer is given), so a wrong one fails only at the first step, far from here."""
    cls = record.cls
    if not (isinstance(cls, type) and issubclass(cls, Optimizer)):
        raise TypeError(
            f"OptimizerInfo {record.name!r}: cls must be a torch Optimizer, got {cls!r}"
        )
    if record.param_grouping not in ("any", "parts"):
        raise ValueError(
            f"OptimizerInfo {record.name!r}: param_grouping must be 'any' or 'parts', got "
            f"{record.param_grouping!r}"
        )
    if issubclass(cls, LineSearchOptimizer):
        check_defines_step(cls)
        if record.forward_trials != cls.forward_trials:
            raise ValueError(
                f"OptimizerInfo {record.name!r}: forward_trials={record.forward_trials} but "
                f"{cls.__name__}.forward_trials is {cls.forward_trials}: the module hands a line "
                "search's step the closure and trial forwards its class asks for"
            )
        if not record.searches:
            raise ValueError(
                f"OptimizerInfo {record.name!r}: searches=False but {cls.__name__} is a "
                "LineSearchOptimizer, which owns its step size (searches=True)"
            )
    elif record.forward_trials and not _takes_forward(cls):
        raise ValueError(
            f"OptimizerInfo {record.name!r}: forward_trials=True but {cls.__name__}.step takes "
            "no 'forward' argument: the module calls step(closure, forward=...)"
        )


def info(name: str) -> OptimizerInfo:
    """The record registered as ``name`` (case-insensitive).

    Raises:
        ValueError: the name is unknown; the message lists the valid names.
    """
    try:
        return REGISTRY[name.lower()]
    except (KeyError, AttributeError):  # AttributeError: not a string
        raise ValueError(
            f"unknown optimizer {name!r}; registered optimizers: {', '.join(names())}"
        ) from None


def info_for(optimizer: Optimizer | type[Optimizer]) -> OptimizerInfo:
    """The record of an optimizer (instance or class): its class's, else its nearest registered
    base class's (a user's subclass of SaLSA is a line search). Any other subclass of
    :class:`LineSearchOptimizer` gets a line search's record; any other class a plain torch
    optimizer's: no search, no forward trials, no whole-parameter norms."""
    cls = optimizer if isinstance(optimizer, type) else type(optimizer)
    by_class = {record.cls: record for record in REGISTRY.values()}
    for base in cls.__mro__:
        if base in by_class:
            return by_class[base]
    if issubclass(cls, LineSearchOptimizer):
        return _line_search(cls.__name__.lower(), cls, forward_trials=cls.forward_trials)
    return OptimizerInfo(cls.__name__.lower(), cls)


def create(name: str, params: Any, preset: str = "paper", **kwargs: Any) -> Optimizer:
    """Build the optimizer registered as ``name`` (case-insensitive), with the arguments of
    ``preset`` (``"paper"``: the class's defaults; ``"robust"``: :data:`PRESETS`) and
    ``kwargs`` on top.

    Raises:
        ValueError: the name or the preset is unknown; the message lists the valid ones.
    """
    return info(name).create(params, preset=preset, **kwargs)
