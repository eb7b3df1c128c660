"""Learning-rate distributions over a model's parts (BERTcL, P3: Kenneweg et al., IDEAL 2022).

A distribution gives each part of :func:`lsframe.parts.split_into_parts` a multiplier of the
optimizer's learning rate: ``{"embeddings": 1, "layers_0-1": 1, ..., "head": 3}``. With a torch
optimizer a part's group trains at ``lr · multiplier``; with a line search the multiplier is the
group's ``lr_multiplier``, which scales the searched step size (and a schedule multiplies it
further). In YAML (a module's ``lr_distribution``) it is either such a mapping, the path of a
YAML/JSON file holding one, or a preset name:

* ``flat``: every part 1 (the flat baseline, e.g. 2e-5 everywhere);
* ``bertcl_combined``: the reference's combined distribution for BERT-base's ten parts,
  ``[1, 1, 0.3, 0.7, 1, 1, 1, 1, 1, 3]`` (× the base rate, 2e-5 in P3).

A complete ten-part BERT-base distribution (a preset, or a search result on BERT-base) carries
over to a model cut into other parts by relative depth: ``embeddings`` and ``head`` map to themselves, and a
middle part covering layers ``a..b`` of ``L`` takes the multiplier of the BERT-base middle part
whose layers contain the relative midpoint ``(a + b + 1) / (2L)`` (scaled to 12 layers). For the
6-layer MiniLM: layers 0, 1, 2, 3, 4, 5 take BERT's parts {0-1}, {3-4}, {5}, {6-7}, {9-10}, {11};
on BERT-base itself the rule is the identity.

Several pairs' search results combine into one distribution by the geometric mean of each part's
multipliers (:func:`combine_distributions`; ``python -m lsframe combine``).
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any

from torch import nn

from lsframe.config_files import DuplicateKeyError
from lsframe.errors import ConfigError
from lsframe.parts import find_layer_stack, split_into_parts

BERT_BASE_PARTS = [
    "embeddings",
    "layers_0-1",
    "layers_2",
    "layers_3-4",
    "layers_5",
    "layers_6-7",
    "layers_8",
    "layers_9-10",
    "layers_11",
    "head",
]
PRESETS: dict[str, dict[str, float]] = {
    "flat": {},
    "bertcl_combined": dict(zip(BERT_BASE_PARTS, [1, 1, 0.3, 0.7, 1, 1, 1, 1, 1, 3])),
}


def _layer_range(part: str) -> tuple[int, int] | None:
    if not part.startswith("layers_"):
        return None
    first, _, last = part[len("layers_") :].partition("-")
    return int(first), int(last or first)


def load_distribution(
    spec: dict[str, float] | str, name: str = "lr_distribution"
) -> dict[str, float]:
    """A distribution from a mapping, a preset name or a YAML/JSON file; values checked.

    ``name`` is what an error calls the setting when no file is at fault (``lr_distribution``,
    or ``combine``'s argument).

    Raises:
        ConfigError: (a ``ValueError``) naming the part at fault, and the file (with
            ``file:line:column`` for a syntax error) as its ``where``.
    """
    where, file = name, None
    if isinstance(spec, str):
        if spec in PRESETS:
            spec = dict(PRESETS[spec])
        elif Path(spec).is_file():
            where, file = "", spec
            spec = _read_mapping(Path(spec))
        else:
            raise ConfigError(  # the key is known to the caller: as an argument, it gets it
                f"{spec!r} is neither a preset ({', '.join(PRESETS)}) nor a file", argument=name
            )
    if not isinstance(spec, dict):
        raise ConfigError(
            f"{where or 'the file'} must map part names to multipliers, got {spec!r}",
            where=file,
            argument="lr_distribution",
        )
    names = [str(part) for part in spec]
    twice = next((name for name in names if names.count(name) > 1), None)
    if twice is not None:  # YAML's 1 and "1"
        raise ConfigError(
            f"{where + ': ' if where else ''}part {twice!r} is named twice",
            where=file,
            argument="lr_distribution",
        )
    values = {str(part): _multiplier(where, file, str(part), value) for part, value in spec.items()}
    if values and max(values.values()) < 1e-2:
        warnings.warn(
            f"{where or file}: every multiplier is below 0.01 ({values}); these look like "
            "learning rates. A distribution holds multipliers of the optimizer's lr (head: 3 "
            "means 3 × lr).",
            stacklevel=2,
        )
    return values


def _multiplier(where: str, file: str | None, part: str, value: Any) -> float:
    if isinstance(value, str):  # YAML 1.1 reads 3e-5 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    prefix = f"{where}: " if where else ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        rule = f"must be a number, got {value!r}"
    elif not math.isfinite(value) or value < 0:
        rule = f"must be a finite number >= 0, got {value}"
    else:
        return float(value)
    raise ConfigError(f"{prefix}part {part!r} {rule}", where=file, argument="lr_distribution")


def _read_mapping(path: Path) -> Any:
    from lsframe.config_files import unique_json_keys, unique_key_loader, yaml_problem

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"not UTF-8 text (byte {error.start}: {error.reason})", where=str(path)
        ) from None
    try:
        if path.suffix == ".json":
            return json.loads(text, object_pairs_hook=unique_json_keys)
        import yaml

        return yaml.load(text, Loader=unique_key_loader())  # noqa: S506 - a SafeLoader
    except json.JSONDecodeError as error:
        where = f"{path}:{error.lineno}:{error.colno}"
        raise ConfigError(f"JSON syntax error: {error.msg}", where=where) from None
    except DuplicateKeyError as error:
        where = f"{path}:{error.line}" if error.line else str(path)
        raise ConfigError(error.message, where=where) from None
    except Exception as error:  # yaml.YAMLError: its mark says line and column
        raise ConfigError(*yaml_problem(error, path)) from None


def base_lr_of(path: str | Path) -> float | None:
    """The ``base_lr`` a distribution file's header states (``lsframe search`` writes it in
    ``best_distribution.yaml``, ``lsframe combine`` in its output), or None."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for line in lines:
        if not line.startswith("#"):
            break
        found = re.search(r"\bbase_lr ([0-9.eE+-]+)", line)
        if found:
            try:
                return float(found.group(1).rstrip(",."))
            except ValueError:
                return None
    return None


def base_lr_mismatch(distribution: Any, optimizer: Any) -> str | None:
    """Why a distribution file does not fit ``optimizer``'s lr (None: it does, or it states no
    ``base_lr``). A searched file's multipliers are relative to the ``base_lr`` its header
    states; with another lr every part's rate is that ratio off the searched one. A line
    search's multipliers scale its searched step, so its lr is not compared."""
    from lsframe.optim import info_for

    if not isinstance(distribution, (str, os.PathLike)) or not Path(distribution).is_file():
        return None
    stated = base_lr_of(distribution)
    lr = optimizer.param_groups[0].get("lr") if optimizer.param_groups else None
    if stated is None or lr is None or info_for(optimizer).searches:
        return None
    if math.isclose(lr, stated, rel_tol=1e-9):
        return None
    return (
        f"lr_distribution {distribution}: its multipliers were searched at base_lr {stated:g} "
        f"but the optimizer's lr is {lr:g}, so every part trains at {lr / stated:g}× its "
        "searched rate; set the optimizer's lr to the base_lr if that is not meant"
    )


def bert_base_equivalent(part: str, num_layers: int) -> str:
    """The BERT-base part whose depth matches ``part`` of a model with ``num_layers`` layers."""
    span = _layer_range(part)
    if span is None:
        return part
    middle = (span[0] + span[1] + 1) / (2 * num_layers) * 12  # in BERT-base layers
    layer = min(11, int(middle))
    for name in BERT_BASE_PARTS[1:-1]:
        low, high = _layer_range(name)
        if low <= layer <= high:
            return name
    raise AssertionError(layer)


def multipliers_for(
    model: nn.Module, distribution: dict[str, float] | str, num_parts: int = 10
) -> dict[str, float]:
    """Each part of ``model`` (split into ``num_parts``) → its multiplier.

    A complete BERT-base ten-part distribution is carried over by relative depth (module
    docstring; the depth is the whole layer stack's, frozen layers included). Otherwise names
    are the model's own parts; parts left out take 1, a part whose parameters are all frozen
    is accepted (its multiplier has nothing to scale), and a name the model lacks is an error.
    """
    values = load_distribution(distribution)
    names = [p.name for p in split_into_parts(model, num_parts)]
    stack = find_layer_stack(model)
    if set(values) == set(BERT_BASE_PARTS) and stack is not None:
        # depth from the layer stack, not the trainable parts (top layers may be frozen)
        return {n: values[bert_base_equivalent(n, stack[1])] for n in names}
    if set(values) == set(BERT_BASE_PARTS) and not set(values) <= set(names):
        raise ConfigError(
            "lr_distribution is a BERT-base ten-part distribution, carried over by relative "
            f"depth onto a model's layer stack, and {type(model).__name__} has none (an "
            "nn.ModuleList or nn.Sequential of layers below the model's root): give the "
            f"multipliers of the model's own parts {names}",
            argument="lr_distribution",
        )
    frozen = {p.name for p in split_into_parts(model, num_parts, include_frozen=True)}
    unknown = sorted(set(values) - set(names) - frozen)
    if unknown:
        file = (
            distribution if isinstance(distribution, str) and Path(distribution).is_file() else None
        )
        raise ConfigError(
            f"lr_distribution names unknown parts {unknown}; the model's: {names}",
            where=file,
            argument="lr_distribution",
        )
    return {n: values.get(n, 1.0) for n in names}


def check_distribution(
    model: nn.Module,
    distribution: dict[str, float] | str | None,
    param_grouping: str,
    num_parts: int,
) -> None:
    """Raise now, not at fit time, when a module's ``lr_distribution`` cannot apply: it needs
    ``param_grouping="parts"`` (one param group per part), and its names and values must fit
    ``model`` split into ``num_parts`` (:func:`multipliers_for`). None is always fine."""
    if distribution is None:
        return
    if param_grouping != "parts":
        raise ConfigError(
            "lr_distribution needs param_grouping='parts' (one param group per part), got "
            f"param_grouping={param_grouping!r}",
            argument="param_grouping",
        )
    multipliers_for(model, distribution, num_parts)


def combine_distributions(
    distributions: list[dict[str, float]], names: list[str] | None = None
) -> dict[str, float]:
    """The combined distribution of several pairs: per part, the geometric mean of the
    multipliers (relative to the same flat rate), so a part every pair slows stays slow.

    Every distribution must name the same parts, except ``{}`` (the ``flat`` preset: all 1).
    ``names`` (their files or presets) name them in an error; default ``#0``, ``#1``, ...
    """
    if not distributions:
        raise ValueError("combine_distributions needs at least one distribution")
    names = names or [f"#{i}" for i in range(len(distributions))]
    first = next((i for i, d in enumerate(distributions) if d), 0)
    parts = list(distributions[first])
    # the flat distribution ({}) is 1 for every part
    distributions = [d or dict.fromkeys(parts, 1.0) for d in distributions]
    for i, d in enumerate(distributions):
        if sorted(d) != sorted(parts):
            raise ValueError(
                f"distributions to combine must name the same parts: {names[first]} has "
                f"{sorted(parts)}, {names[i]} has {sorted(d)}"
            )
    # a part one pair freezes (multiplier 0) stays frozen: the geometric mean is 0
    # 12 significant digits: the mean of equal multipliers is that multiplier, not 3.0000000000000004
    return {
        p: 0.0
        if any(d[p] == 0 for d in distributions)
        else float(
            f"{math.exp(sum(math.log(d[p]) for d in distributions) / len(distributions)):.12g}"
        )
        for p in parts
    }


def combine_main(argv: list[str]) -> dict[str, float]:
    """``python -m lsframe combine A.yaml B.yaml ... --out combined.yaml``: the geometric mean.

    Each input is a ``best_distribution.yaml`` (or any distribution file or preset); the result
    is written with a header naming its inputs, and printed.
    """
    import yaml

    from lsframe.cli_usage import RaisingArgumentParser

    parser = RaisingArgumentParser(
        prog="lsframe combine",
        description="Combine the best distributions of several task pairs (BERTcL, P3): per "
        "part, the geometric mean of the multipliers.",
    )
    parser.add_argument("distributions", nargs="+", help="distribution files or preset names")
    parser.add_argument("--out", help="where to write the combined distribution (YAML)")
    args = parser.parse_args(argv)
    if args.out and (Path(args.out).is_dir() or args.out.endswith(("/", os.sep))):
        raise ConfigError(f"{args.out} is a folder; name the YAML file to write", where="--out")
    inputs = {Path(d).resolve() for d in args.distributions if Path(d).is_file()}
    if args.out and Path(args.out).resolve() in inputs:
        raise ConfigError(
            f"{args.out} is one of the distributions to combine; write the result elsewhere",
            where="--out",
        )
    loaded = [
        load_distribution(d, name=f"argument {i} of lsframe combine")
        for i, d in enumerate(args.distributions, start=1)
    ]
    base_lr = _common_base_lr(args.distributions)
    combined = combine_distributions(loaded, names=args.distributions)
    text = yaml.safe_dump(combined, sort_keys=False)
    if args.out:
        header = "# combined learning-rate distribution (geometric mean per part) of: "
        header += " ".join(args.distributions)
        header += "" if base_lr is None else f"; base_lr {base_lr:g}"
        from lsframe.checkpoint_io import write_atomically  # whole or not at all

        try:
            write_atomically(args.out, (header + "\n" + text).encode())
        except OSError as error:  # a file where a folder must be, no permission, a full disk
            raise ConfigError(
                f"cannot write {args.out}: {error.strerror or error}", where="--out"
            ) from error
    print(text, end="")
    return combined


def _common_base_lr(inputs: list[str]) -> float | None:
    """The ``base_lr`` the input files' headers agree on (None: none states one). Multipliers
    relative to different base rates do not combine: refused, naming two files."""
    stated = {name: lr for name in inputs if (lr := base_lr_of(name)) is not None}
    if len(set(stated.values())) > 1:
        (a, lr_a), (b, lr_b) = next(
            (first, second)
            for first in stated.items()
            for second in stated.items()
            if first[1] != second[1]
        )
        raise ConfigError(
            f"{a}'s multipliers are relative to base_lr {lr_a:g} and {b}'s to {lr_b:g}; "
            "combine distributions searched at one base_lr"
        )
    return next(iter(stated.values()), None)
