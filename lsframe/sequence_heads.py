"""Task heads of ``heads: separate`` whose tasks have different numbers of classes (SST-2's 2,
MNLI's 3): each task's head has its own stage's count, and while it is in use the module's
label settings are that task's (its metrics, predictions, the loss of a Hugging Face model).

A task's head is a copy of the initial head (the module's ``head_attr``) where its stage's
DataModule has the module's number of classes, or says none; otherwise the copy's output layer
(its last ``nn.Linear``) is replaced by a new one of the stage's ``num_labels`` outputs,
initialised as the model initialises its weights (a Hugging Face model's ``_init_weights``)."""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from lsframe.errors import ConfigError


def output_layer(head: nn.Module) -> tuple[str, nn.Linear] | None:
    """``(name, layer)`` of the last ``nn.Linear`` in ``head`` (``""``: the head is one), the
    layer whose outputs are the classes; None where the head has none."""
    found = [(name, m) for name, m in head.named_modules() if isinstance(m, nn.Linear)]
    return found[-1] if found else None


def initial_labels(module: Any) -> dict[str, Any]:
    """The module's label settings as built: ``num_labels``, ``label_names`` and its Hugging
    Face config's ``id2label`` / ``problem_type`` (where it has them)."""
    config = getattr(getattr(module, "model", None), "config", None)
    return {
        "num_labels": getattr(module, "num_labels", None),
        "label_names": getattr(module, "label_names", None),
        "id2label": dict(getattr(config, "id2label", None) or {}),
        "problem_type": getattr(config, "problem_type", None),
    }


def task_labels(data: Any, initial: dict[str, Any]) -> dict[str, Any]:
    """The label settings of the task of DataModule ``data``: its ``num_labels`` and
    ``label_names`` (class names only where they are ``num_labels`` of them); ``initial``
    (:func:`initial_labels`) where it says no ``num_labels``."""
    count = getattr(data, "num_labels", None)
    if count is None or count == initial["num_labels"] and not getattr(data, "label_names", None):
        return initial
    names = getattr(data, "label_names", None)
    names = [str(n) for n in names] if names and len(names) == count else None
    id2label = dict(enumerate(names or [f"LABEL_{i}" for i in range(count)]))
    return {**initial, "num_labels": count, "label_names": names, "id2label": id2label}


def check_resizable(initial: nn.Module, count: int | None, where: str) -> bool:
    """Whether a task of ``count`` classes needs a head other than ``initial``'s number of
    outputs; refused at ``where`` (the stage's data) when ``initial`` has no ``nn.Linear`` to
    give it that many."""
    found = output_layer(initial)
    if count is None or (found is not None and found[1].out_features == count):
        return False
    if found is None:
        raise ConfigError(
            f"the task has {count} classes, but the head ({type(initial).__name__}) has no "
            "nn.Linear output layer to give that many outputs: give the stages data of the "
            "model's number of classes, or use heads: shared",
            where=where,
        )
    return True


def check_heads(initial: nn.Module, stages: list[Any], labels: dict[str, Any]) -> None:
    """Each of ``stages`` can have a head of its data's number of classes
    (:func:`check_resizable`), checked before anything is written; ``labels``:
    :func:`initial_labels`."""
    for i, stage in enumerate(stages):
        count = task_labels(stage.data, labels)["num_labels"]
        check_resizable(initial, count, f"stages[{i}].data")


def new_task_head(initial: nn.Module, model: nn.Module, count: int | None, where: str) -> nn.Module:
    """A new task's head: a copy of ``initial``, with an output layer of ``count`` outputs where
    it has another number (``count`` None: as ``initial``). Refused at ``where`` (the stage's
    data) when ``initial`` has no ``nn.Linear`` to resize."""
    head = copy.deepcopy(initial)
    if not check_resizable(head, count, where):
        return head
    name, layer = output_layer(head)  # type: ignore[misc] # checked
    new = nn.Linear(layer.in_features, count, bias=layer.bias is not None)
    new = new.to(device=layer.weight.device, dtype=layer.weight.dtype)
    init = getattr(model, "_init_weights", None)
    if callable(init):  # as from_pretrained initialised the head it did not find
        init(new)
    if name == "":
        return new
    head.set_submodule(name, new)
    return head


def use_labels(module: Any, labels: dict[str, Any]) -> None:
    """Give ``module`` (and its Hugging Face model and config) the label settings ``labels``
    (:func:`task_labels`): what its metrics, predictions and loss read."""
    if labels["num_labels"] is None:
        return
    if hasattr(module, "num_labels"):
        module.num_labels = labels["num_labels"]
    if hasattr(module, "label_names"):
        module.label_names = labels["label_names"]
    model = getattr(module, "model", None)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "id2label") and labels["id2label"]:
        config.id2label = dict(labels["id2label"])
        config.label2id = {name: i for i, name in labels["id2label"].items()}
        # Hugging Face infers it again at the next forward: regression for 1 output
        config.problem_type = labels["problem_type"]
    if model is not None and hasattr(model, "num_labels"):
        model.num_labels = labels["num_labels"]
