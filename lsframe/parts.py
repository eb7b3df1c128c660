"""Named parts of a model: embeddings, groups of layers, head (PLASLS, BERTcL); the weights a
gradient mask selects (DPS, ChildTuning).

The rule, for any depth and any family. It applies to the model inside any wrapper: from the
root, while a module has no parameters of its own and a single child holds parameters, that
child is taken (peft's ``PeftModel`` → ``LoraModel`` → the model; a user's thin wrapper, also
around an ``nn.Sequential``), unless the module's class defines ``get_classifier`` or
``group_matcher``. Names below are relative to the module taken; the parts keep the full
names.

1. The *classifier* is what ``model.get_classifier()`` returns (timm; a distilled DeiT gives
   two modules), else a top-level child named ``fc``, ``head`` or ``classifier`` (peft's
   ``ModulesToSaveWrapper`` around one too), else, for a model that is an ``nn.Sequential`` or
   ``nn.ModuleList``, its last child holding parameters. Its parameters are in the ``head``
   part wherever the module sits (before, inside or after the stack), except a weight tied to
   one registered before it under another name (an LM head tied to the embeddings stays with
   them).
2. The *layer stack*:

   a. A model with timm's ``group_matcher`` (defined on its class, or on the class of the module
      below it that holds every parameter outside the classifier: a wrapper's timm backbone):
      the fine groups of ``group_matcher(coarse=False)`` in timm's order are the layers (one
      per ViT block, one per ResNet BasicBlock; timm merges a final ``norm`` into the last
      block). timm's ``stem`` group is the ``embeddings`` part (for a matcher that is a
      function: its lowest group); parameters the matcher leaves unmatched (neck, head) are in
      the ``head`` part.
   b. Otherwise the ``nn.ModuleList`` or ``nn.Sequential`` below the model's root, outside the
      classifier, with the most parameters and at least two children holding parameters, one
      of them a block, a module whose submodules hold parameters (``bert.encoder.layer``,
      GPT-2's ``transformer.h``, Llama's ``model.layers``, a plain ViT's ``blocks``); else
      such a list of leaves (VGG's ``features``); else the largest whose one such child is a
      block (ALBERT's shared layer; ``nn.ModuleList([block] * n)``, whose children are one
      module; not a ``Sequential(Dropout, Linear)``). Each other ``nn.ModuleList``/``nn.Sequential`` whose
      dotted name differs from its name in exactly one component and whose layers include one
      of the same class (an encoder's and a decoder's layer classes count as one:
      ``BartEncoderLayer``, ``BartDecoderLayer``) is a stack too (T5's ``encoder.block`` and
      ``decoder.block``, BART's ``encoder.layers`` and ``decoder.layers``, torchvision
      ResNet's ``layer1`` … ``layer4``; not a list of task heads or a stem beside the blocks).
      The layers are the stacks' children that hold parameters, in registration order.
      Models without a stack use their top-level children with trainable parameters as the
      layers.

3. Parameters outside the stacks and the classifier: those registered before the first layer
   form the ``embeddings`` part, those after the last layer the ``head`` part (BERT's pooler,
   a final norm). Those between two stacks join the layer before them (T5's
   ``encoder.final_layer_norm``), except the inputs of a later stack's tower, the part of its
   name up to where the stacks' names differ (``decoder.``, ``vision_model.``): a decoder's
   position embeddings and CLIP's vision embeddings are ``embeddings``.
4. With ``K`` parts in all, the ``L`` layers go to ``M = K − 2`` middle parts by
   ``part(i) = floor(i · M / L)``. For BERT-base (L = 12, K = 10) this is exactly the split of
   P0 and P3: {0,1} | 2 | {3,4} | 5 | {6,7} | 8 | {9,10} | 11. When ``L < M`` every layer is its
   own part (empty parts are dropped), e.g. 8 parts for the 6-layer MiniLM.

Every trainable parameter belongs to exactly one part; frozen ones (``requires_grad=False``) are
left out (frozen layers of a stack still count: freezing does not move the other layers).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from torch import nn

from lsframe.errors import ConfigError
from lsframe.parts_stacks import has_params, stacks_of, tower
from lsframe.parts_timm import timm_groups

CLASSIFIER_NAMES = ("fc", "head", "classifier")
# methods that name a model's modules relative to it: the rule applies to that model
_OWN_NAMES = ("get_classifier", "group_matcher")


@dataclass
class Part:
    name: str
    names: list[str] = field(default_factory=list)
    params: list[nn.Parameter] = field(default_factory=list)


class LayerStack(NamedTuple):
    """The layer stack of rule 2: ``prefix`` is its module's name (``bert.encoder.layer``;
    several stacks' names joined by ``", "``: ``encoder.block, decoder.block``), or None when
    the layers are timm's parameter groups; ``num_layers`` is ``L``."""

    prefix: str | None
    num_layers: int


@dataclass
class _Layout:
    """Where rule 1-3 put each parameter (by ``id``): a layer of the stack, or a fixed part."""

    stack: LayerStack | None
    num_layers: int
    layer: dict[int, int] = field(default_factory=dict)
    fixed: dict[int, str] = field(default_factory=dict)
    #: ``(name prefix of a stack's tower, index of its first layer)`` for several stacks: T5's
    #: ``("decoder.", 3)``; a parameter of a later tower registered before its stack is one of
    #: that tower's embeddings
    towers: list[tuple[str, int]] = field(default_factory=list)


def _classifiers(model: nn.Module) -> list[nn.Module]:
    """The classifier of rule 1: what ``model.get_classifier()`` returns when it holds parameters
    (a module, or several: a distilled DeiT has two heads), else a top-level child named
    ``fc``, ``head`` or ``classifier``, else the last child holding parameters of a model that
    is an ``nn.Sequential`` or ``nn.ModuleList``; an empty list for none."""
    get = getattr(model, "get_classifier", None)
    if callable(get):
        try:
            found = get()
        except (NotImplementedError, AttributeError, TypeError):
            found = None
        found = list(found) if isinstance(found, (tuple, list)) else [found]
        modules = [
            m for m in found if isinstance(m, nn.Module) and m is not model and has_params(m)
        ]
        if modules:
            return modules
    children = dict(model.named_children())
    for name in CLASSIFIER_NAMES:
        module = children.get(name)
        if module is not None and has_params(module):
            return [module]
    if isinstance(model, (nn.Sequential, nn.ModuleList)):
        holders = [c for c in model.children() if has_params(c)]
        return holders[-1:]
    return []


def _single_holder(module: nn.Module, outside: set[int]) -> nn.Module | None:
    """The one child of ``module`` that holds all its parameters whose ids are not in
    ``outside``, or None (``module`` has some of its own, or several children hold some)."""
    if any(id(p) not in outside for p in module.parameters(recurse=False)):
        return None
    holders = [c for c in module.children() if any(id(p) not in outside for p in c.parameters())]
    return holders[0] if len(holders) == 1 else None


def _unwrapped(model: nn.Module) -> tuple[str, nn.Module]:
    """The module the rule applies to, and its name from the root with a trailing dot: the
    root, or the module below it reached while a single child holds all of a module's
    parameters (peft's ``PeftModel`` → ``LoraModel`` → the model; a user's thin wrapper). It
    stops at a module whose class defines ``get_classifier`` or ``group_matcher`` (they name
    modules relative to it); an ``nn.Sequential`` reached so is then the model (its last child
    the head, as for a model that is one)."""
    path, module = "", model
    while not any(callable(getattr(type(module), a, None)) for a in _OWN_NAMES):
        child = _single_holder(module, set())
        if child is None:
            break
        name = next(n for n, c in module.named_children() if c is child)
        path, module = f"{path}{name}.", child
    return path, module


def _timm_layout(model: nn.Module, classifier: set[int]) -> _Layout | None:
    """Rule 2a: timm's fine parameter groups, or None when neither ``model`` nor the module
    below it that holds every parameter outside the classifier (a wrapper's timm backbone) has
    a ``group_matcher`` (on its class: its regexes need the names relative to that module)."""
    owner: nn.Module | None = model
    while owner is not None and not callable(getattr(type(owner), "group_matcher", None)):
        owner = _single_holder(owner, classifier)
    found = None if owner is None else timm_groups(owner, classifier)
    if found is None:
        return None
    num_layers, layer, fixed = found
    return _Layout(LayerStack(None, num_layers), num_layers, layer, fixed)


def _module_layout(model: nn.Module, classifier: set[int]) -> _Layout:
    """Rule 2b: the stacks ``parts_stacks.stacks_of`` finds, else the top-level children."""
    stacks = stacks_of(model, classifier)
    if stacks:
        layers = [layer for _, stack_layers in stacks for layer in stack_layers]
        stack: LayerStack | None = LayerStack(", ".join(n for n, _ in stacks), len(layers))
    else:  # frozen children count: freezing does not renumber the others
        layers = [
            c for c in model.children() if any(id(p) not in classifier for p in c.parameters())
        ]
        stack = None
    layout = _Layout(stack, len(layers))
    for i, layer in enumerate(layers):
        for p in layer.parameters():
            if id(p) not in classifier:
                layout.layer.setdefault(id(p), i)
    names = [n for n, _ in stacks]
    first = 0
    for name, stack_layers in stacks if len(stacks) > 1 else ():
        layout.towers.append((tower(name, [n for n in names if n != name]), first))
        first += len(stack_layers)
    return layout


def _classifier_params(model: nn.Module, named: list[tuple[str, nn.Parameter]]) -> set[int]:
    """Ids of the classifier's parameters, each under the classifier's own name (a weight tied
    to the embeddings and named there first stays with the embeddings)."""
    classifiers = _classifiers(model)
    if not classifiers:
        return set()
    prefixes = tuple(
        f"{n}."
        for n, m in model.named_modules(remove_duplicate=False)
        if any(m is c for c in classifiers)
    )
    return {id(p) for n, p in named if n.startswith(prefixes)}


def _layout(model: nn.Module) -> _Layout:
    path, model = _unwrapped(model)
    named = list(model.named_parameters())
    head = _classifier_params(model, named)
    layout = _timm_layout(model, head) or _module_layout(model, head)
    if path and layout.stack is not None and layout.stack.prefix is not None:
        names = layout.stack.prefix.split(", ")
        layout.stack = layout.stack._replace(prefix=", ".join(path + n for n in names))
    at = [i for i, (_, p) in enumerate(named) if id(p) in layout.layer]
    first, last = (at[0], at[-1]) if at else (len(named), len(named))
    previous = 0
    for i, (name, p) in enumerate(named):
        if id(p) in head:
            layout.layer.pop(id(p), None)
            layout.fixed[id(p)] = "head"
        elif id(p) in layout.layer:
            previous = layout.layer[id(p)]
        elif id(p) not in layout.fixed:
            later = [t for t, start in layout.towers if start > previous]
            if first < i < last and not name.startswith(tuple(later)):
                layout.layer[id(p)] = previous  # between two stacks: a final norm
            else:  # a later tower's own input (a decoder's, CLIP's vision embeddings)
                layout.fixed[id(p)] = "embeddings" if i < last else "head"
    return layout


def find_layer_stack(model: nn.Module) -> LayerStack | None:
    """The layer stack of rule 2 as ``(prefix, number of layers)``, or None when the model has
    none (its top-level children are then the layers). ``prefix`` is None for timm's groups."""
    return _layout(model).stack


def split_into_parts(
    model: nn.Module, num_parts: int = 10, include_frozen: bool = False
) -> list[Part]:
    """Cut ``model`` into at most ``num_parts`` named parts by the rule of this module.

    Args:
        model: Any ``nn.Module``.
        num_parts: ``K``, at least 3 (embeddings, one or more layer groups, head). Default: 10.
        include_frozen: Also place parameters with ``requires_grad=False`` (default: they are
            left out, and a part with none trainable is not returned).

    Returns:
        The non-empty parts in order: ``embeddings``, ``layers_<first>-<last>`` ..., ``head``.
    """
    if num_parts < 3:
        raise ValueError(f"num_parts must be >= 3 (embeddings, layers, head), got {num_parts}")
    middle = num_parts - 2
    layout = _layout(model)
    num_layers = layout.num_layers
    groups: dict[int, list[int]] = {}
    for i in range(num_layers):
        groups.setdefault(i * middle // num_layers, []).append(i)
    fixed = {"embeddings": Part("embeddings"), "head": Part("head")}
    middle_parts = {
        k: Part(f"layers_{v[0]}" if len(v) == 1 else f"layers_{v[0]}-{v[-1]}")
        for k, v in groups.items()
    }
    for name, param in model.named_parameters():
        if not param.requires_grad and not include_frozen:
            continue
        layer = layout.layer.get(id(param))
        if layer is None:
            part = fixed[layout.fixed[id(param)]]
        else:
            part = middle_parts[layer * middle // num_layers]
        part.names.append(name)
        part.params.append(param)
    parts = [fixed["embeddings"], *(middle_parts[k] for k in sorted(middle_parts)), fixed["head"]]
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


def check_patterns_match(model: nn.Module, owner: str, **patterns: list[str] | None) -> None:
    """Each regular expression of each keyword (``include=[...]``, ``exclude=[...]``) matches
    the name of some trainable parameter of ``model``: one that matches none (``"clasifier"``)
    would select or exclude nothing without a word, beside patterns that do match.

    Raises:
        ConfigError: at ``<owner>.<keyword>``, naming the pattern and the closest name parts.
    """
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if not names:
        return  # nothing to select: the caller says so
    for key, values in patterns.items():
        for pattern in values or []:
            if any(re.search(pattern, name) for name in names):
                continue
            words = sorted({word for name in names for word in name.split(".")})
            close = difflib.get_close_matches(pattern, words, n=3, cutoff=0.6)
            hint = f"; close: {', '.join(map(repr, close))}" if close else ""
            raise ConfigError(
                f"{key} pattern {pattern!r} matches no trainable parameter of "
                f"{type(model).__name__} (re.search on names such as {names[0]!r}){hint}",
                where=f"{owner}.{key}",
            )


def _attention_projections(model: nn.Module) -> list[nn.Parameter]:
    """The query/key/value projections of torch's ``nn.MultiheadAttention``: parameters of the
    attention module itself (``in_proj_weight``, or ``q/k/v_proj_weight`` with ``kdim``/``vdim``),
    not weights of linear submodules."""
    names = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
    return [
        p
        for m in model.modules()
        if isinstance(m, nn.MultiheadAttention)
        for p in (getattr(m, name, None) for name in names)
        if isinstance(p, nn.Parameter)
    ]


def weight_matrices(
    model: nn.Module, include: list[str] | None = None, exclude: list[str] | None = None
) -> list[tuple[str, nn.Parameter]]:
    """The weight matrices a gradient mask acts on (DPS), by a rule that fits any model.

    Default rule: the ``weight`` of every linear-like module (``nn.Linear``, ``nn.Conv*d``,
    transformers' ``Conv1D``) and the query/key/value projections of every
    ``nn.MultiheadAttention`` (``in_proj_weight``), trainable and not shared with an
    ``nn.Embedding``. In BERT this is exactly P4's selection: attention query/key/value/output,
    FFN in/out, pooler and classifier; biases, LayerNorm and embeddings are left out. In GPT-2 and Llama it is the
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
        chosen |= {id(p) for p in _attention_projections(model)}
        chosen = {pid for pid in chosen if pid in names and pid not in embedded}
    return [
        (n, p) for n, p in model.named_parameters() if id(p) in chosen and not _matches(n, exclude)
    ]


def layer_stack_parameters(
    model: nn.Module, include: list[str] | None = None, exclude: list[str] | None = None
) -> list[tuple[str, nn.Parameter]]:
    """Trainable parameters of the layers (rules 2-3 above: the stacks' layers and a final
    norm between two stacks): ChildTuning-D's selection.

    ChildTuning's reference masks every parameter whose name contains ``layer`` (BERT's
    ``encoder.layer.*``, biases and LayerNorms included); this is that rule for any family (a
    timm model's layer groups, its classifier left out). ``include``/``exclude`` work as in
    :func:`weight_matrices`.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if include:
        chosen = [(n, p) for n, p in named if _matches(n, include)]
    else:
        layout = _layout(model)
        if layout.stack is None:
            raise ValueError(
                f"{type(model).__name__} has no layer stack (an nn.ModuleList or nn.Sequential "
                "of layers inside the model, below its root, or timm's group_matcher; a model "
                "that is itself one has its children as layers, not a stack): name the "
                "parameters to select with include patterns"
            )
        chosen = [(n, p) for n, p in named if id(p) in layout.layer]
    return [(n, p) for n, p in chosen if not _matches(n, exclude)]
