"""Rule 2b of :mod:`lsframe.parts`: which ``nn.ModuleList``/``nn.Sequential`` modules of a model
are its layer stacks, and each stack's tower."""

from __future__ import annotations

from torch import nn


def has_params(module: nn.Module) -> bool:
    return next(iter(module.parameters()), None) is not None


def _kind(layer: nn.Module) -> str:
    """A layer's kind: its class name, an encoder's and a decoder's layers as one
    (``BartEncoderLayer`` and ``BartDecoderLayer``)."""
    return type(layer).__name__.replace("Encoder", "").replace("Decoder", "")


def _is_block(module: nn.Module) -> bool:
    """A module with submodules that hold parameters (a transformer layer, a residual block),
    not a leaf such as ``nn.Linear``."""
    return any(has_params(c) for c in module.children())


def stacks_of(model: nn.Module, classifier: set[int]) -> list[tuple[str, list[nn.Module]]]:
    """Rule 2b's stacks in registration order, each as ``(name, its layers)``: the largest
    ModuleList/Sequential below the root with two or more layers, one of them a block (else
    any with two or more layers; else one whose one layer is a block), and its siblings, those
    whose dotted name differs from its name in one component and whose layers are of a kind
    of its layers (a list of task heads or a stem beside the blocks is not a stack)."""

    def layers_of(module: nn.Module) -> list[nn.Module]:
        return [
            c for c in module.children() if any(id(p) not in classifier for p in c.parameters())
        ]

    found = [
        (name, layers_of(module), module)
        for name, module in model.named_modules()
        if name and isinstance(module, (nn.ModuleList, nn.Sequential))
    ]
    found = [(name, layers, module) for name, layers, module in found if layers]
    several = [f for f in found if len(f[1]) > 1]
    pool = (
        [f for f in several if any(_is_block(layer) for layer in f[1])]
        or several
        or [f for f in found if _is_block(f[1][0])]
    )
    if not pool:
        return []
    # parameters of the classifier do not count: it is never (inside) the stack
    best = max(
        pool, key=lambda f: sum(p.numel() for p in f[2].parameters() if id(p) not in classifier)
    )
    parts = best[0].split(".")
    kinds = {_kind(layer) for layer in best[1]}

    def sibling(name: str, layers: list[nn.Module]) -> bool:
        other = name.split(".")
        return (
            len(other) == len(parts)
            and sum(a != b for a, b in zip(parts, other)) == 1
            and any(_kind(layer) in kinds for layer in layers)
        )

    return [(n, layers) for n, layers, _ in found if n == best[0] or sibling(n, layers)]


def tower(name: str, others: list[str]) -> str:
    """The prefix of stack ``name`` up to the component in which it differs from the other
    stacks (``decoder.`` of ``decoder.block``; ``vision_model.`` of
    ``vision_model.encoder.layers``)."""
    parts = name.split(".")
    for other in others:
        differ = [i for i, (a, b) in enumerate(zip(parts, other.split("."))) if a != b]
        if differ:
            return ".".join(parts[: differ[0] + 1]) + "."
    return name + "."
