"""Named parts of a model: embeddings, groups of layers, head (PLASLS, BERTcL); the weights a
gradient mask selects (DPS, ChildTuning).

The rule, for any depth and any family:

1. The *layer stack* is the ``nn.ModuleList`` holding the most parameters (``bert.encoder.layer``,
   GPT-2's ``transformer.h``, Llama's ``model.layers``, a timm ViT's ``blocks``). Models without
   one use their top-level children with parameters as the stack.
2. Parameters registered before the stack form the ``embeddings`` part, those after it the
   ``head`` part (BERT's pooler and classifier, a final norm, an LM head).
3. With ``K`` parts in all, the ``L`` layers go to ``M = K − 2`` middle parts by
   ``part(i) = floor(i · M / L)``. For BERT-base (L = 12, K = 10) this is exactly the split of
   P0 and P3: {0,1} | 2 | {3,4} | 5 | {6,7} | 8 | {9,10} | 11. When ``L < M`` every layer is its
   own part (empty parts are dropped), e.g. 8 parts for the 6-layer MiniLM.

Every trainable parameter belongs to exactly one part; frozen ones (``requires_grad=False``) are
left out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from torch import nn


@dataclass
class Part:
    name: str
    names: list[str] = field(default_factory=list)
    params: list[nn.Parameter] = field(default_factory=list)


def find_layer_stack(model: nn.Module) -> tuple[str, int] | None:
    """``(prefix, number of layers)`` of the ModuleList with the most parameters, or None."""
    best, best_count = None, 0
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 1:
            count = sum(p.numel() for p in module.parameters())
            if count > best_count:
                best, best_count = (name, len(module)), count
    return best


def split_into_parts(model: nn.Module, num_parts: int = 10) -> list[Part]:
    """Cut ``model`` into at most ``num_parts`` named parts by the rule of this module.

    Args:
        model: Any ``nn.Module``.
        num_parts: ``K``, at least 3 (embeddings, one or more layer groups, head). Default: 10.

    Returns:
        The non-empty parts in order: ``embeddings``, ``layers_<first>-<last>`` ..., ``head``.
    """
    if num_parts < 3:
        raise ValueError(f"num_parts must be >= 3 (embeddings, layers, head), got {num_parts}")
    middle = num_parts - 2
    stack = find_layer_stack(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if stack is not None:
        prefix, num_layers = stack
        prefix = f"{prefix}." if prefix else ""

        def layer_of(name: str) -> int | None:
            if not name.startswith(prefix):
                return None
            return int(name[len(prefix) :].split(".", 1)[0])
    else:
        children = [
            n for n, c in model.named_children() if any(p.requires_grad for p in c.parameters())
        ]
        num_layers = len(children)

        def layer_of(name: str) -> int | None:
            top = name.split(".", 1)[0]
            return children.index(top) if top in children else None

    groups: dict[int, list[int]] = {}
    for i in range(num_layers):
        groups.setdefault(i * middle // num_layers, []).append(i)
    embeddings, head = Part("embeddings"), Part("head")
    middle_parts = {
        k: Part(f"layers_{v[0]}" if len(v) == 1 else f"layers_{v[0]}-{v[-1]}")
        for k, v in groups.items()
    }
    seen_stack = False
    for name, param in named:
        layer = layer_of(name)
        if layer is None:
            part = head if seen_stack else embeddings
        else:
            seen_stack = True
            part = middle_parts[layer * middle // num_layers]
        part.names.append(name)
        part.params.append(param)
    parts = [embeddings, *(middle_parts[k] for k in sorted(middle_parts)), head]
    return [p for p in parts if p.params]


def part_groups(model: nn.Module, num_parts: int = 10) -> list[dict[str, Any]]:
    """Param groups, one per part, with ``name`` and ``part`` keys (for PLASLS, per-part LRs)."""
    return [
        {"name": part.name, "part": part.name, "params": part.params}
        for part in split_into_parts(model, num_parts)
    ]


def _is_linear_like(module: nn.Module) -> bool:
    # transformers' Conv1D (GPT-2) is a linear layer with a transposed weight; matched by name
    # so that this module does not import transformers
    return isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) or (
        type(module).__name__ == "Conv1D"
    )


def _matches(name: str, patterns: list[str] | None) -> bool:
    return any(re.search(pattern, name) for pattern in patterns or [])


def weight_matrices(
    model: nn.Module, include: list[str] | None = None, exclude: list[str] | None = None
) -> list[tuple[str, nn.Parameter]]:
    """The weight matrices a gradient mask acts on (DPS), by a rule that fits any model.

    Default rule: the ``weight`` of every linear-like module (``nn.Linear``, ``nn.Conv*d``,
    transformers' ``Conv1D``) that is trainable and not shared with an ``nn.Embedding``. In BERT
    this is exactly P4's selection: attention query/key/value/output, FFN in/out, pooler and
    classifier; biases, LayerNorm and embeddings are left out. In GPT-2 and Llama it is the
    attention and MLP projections (and an untied LM head).

    Args:
        model: Any ``nn.Module``.
        include: Regular expressions (``re.search`` on parameter names). When given, they replace
            the default rule: every trainable parameter whose name matches one is selected.
        exclude: Regular expressions; matching parameters are removed from the selection.

    Returns:
        ``(name, parameter)`` pairs in ``named_parameters`` order.
    """
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    if include:
        chosen = {pid for pid, n in names.items() if _matches(n, include)}
    else:
        embedded = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
        chosen = {
            id(m.weight)
            for m in model.modules()
            if _is_linear_like(m) and isinstance(getattr(m, "weight", None), nn.Parameter)
        }
        chosen = {pid for pid in chosen if pid in names and pid not in embedded}
    return [
        (n, p) for n, p in model.named_parameters() if id(p) in chosen and not _matches(n, exclude)
    ]


def layer_stack_parameters(
    model: nn.Module, include: list[str] | None = None, exclude: list[str] | None = None
) -> list[tuple[str, nn.Parameter]]:
    """Trainable parameters inside the layer stack (rule 1 above): ChildTuning-D's selection.

    ChildTuning's reference masks every parameter whose name contains ``layer`` (BERT's
    ``encoder.layer.*``, biases and LayerNorms included); this is that rule for any family.
    ``include``/``exclude`` work as in :func:`weight_matrices`.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if include:
        chosen = [(n, p) for n, p in named if _matches(n, include)]
    else:
        stack = find_layer_stack(model)
        if stack is None:
            raise ValueError(
                f"{type(model).__name__} has no layer stack (an nn.ModuleList of layers): "
                "name the parameters to select with include patterns"
            )
        prefix = f"{stack[0]}." if stack[0] else ""
        chosen = [(n, p) for n, p in named if n.startswith(prefix)]
    return [(n, p) for n, p in chosen if not _matches(n, exclude)]
