"""Rule 2a of :mod:`lsframe.parts`: a timm model's layers are the fine parameter groups of its
``group_matcher(coarse=False)``, in the order timm's ``group_with_matcher`` gives them."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from torch import nn

# timm's MATCH_PREV_GROUP: a key ending in it joins the group before it (a final norm)
_MATCH_PREVIOUS = 99999.0


def _matcher_key(matcher: Any) -> Callable[[str], tuple[tuple[float, ...] | None, bool]]:
    """``name -> (sort key, from timm's stem entry)`` as timm's ``group_with_matcher`` orders
    names; the key is None for a name the matcher leaves unmatched (or maps to infinity)."""
    if isinstance(matcher, dict):
        rules = []
        for ordinal, (group, spec) in enumerate(matcher.items()):
            if spec is None:
                continue
            specs = spec if isinstance(spec, (list, tuple)) else [(spec, None)]
            for pattern, suffix in specs:
                rules.append((re.compile(pattern), float(ordinal), suffix or (), group == "stem"))

        def key(name: str) -> tuple[tuple[float, ...] | None, bool]:
            for regex, ordinal, suffix, stem in rules:
                found = regex.match(name)
                if found:
                    groups = (float(g) for g in found.groups() if g is not None)
                    return (ordinal, *groups, *map(float, suffix)), stem
            return None, False

        return key

    def call(name: str) -> tuple[tuple[float, ...] | None, bool]:
        value = matcher(name)
        value = tuple(map(float, value)) if isinstance(value, (tuple, list)) else (float(value),)
        return (None if math.isinf(value[0]) else value), False

    return call


def timm_groups(
    model: nn.Module, classifier: set[int]
) -> tuple[int, dict[int, int], dict[int, str]] | None:
    """``(number of layers, parameter id → layer, parameter id → fixed part)`` from ``model``'s
    own ``group_matcher`` (on its parameter names relative to it), for the parameters whose ids
    are not in ``classifier``; None when the matcher gives no group.

    timm's ``stem`` group is the ``embeddings`` part (for a matcher that is a function: its lowest
    group); parameters the matcher leaves unmatched are in the ``head`` part.
    """
    try:
        matcher = model.group_matcher(coarse=False)
    except (NotImplementedError, TypeError, AttributeError):
        return None
    key_of = _matcher_key(matcher)
    keys = {id(p): key_of(n) for n, p in model.named_parameters() if id(p) not in classifier}
    groups: list[list[tuple[float, ...]]] = []
    for k in sorted({k for k, _ in keys.values() if k is not None}):
        if groups and k[-1] == _MATCH_PREVIOUS:
            groups[-1].append(k)
        else:
            groups.append([k])
    if not groups:
        return None
    if isinstance(matcher, dict):
        stems = {k for k, stem in keys.values() if k is not None and stem}
        layers = [g for g in groups if g[0] not in stems]
    else:  # a function: its lowest group is the stem
        layers = groups[1:] if len(groups) > 1 else groups
    index = {k: i for i, group in enumerate(layers) for k in group}
    layer: dict[int, int] = {}
    fixed: dict[int, str] = {}
    for pid, (k, _) in keys.items():
        if k is None:
            fixed[pid] = "head"
        elif k in index:
            layer[pid] = index[k]
        else:
            fixed[pid] = "embeddings"
    return len(layers), layer, fixed
