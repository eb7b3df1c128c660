"""Model parts beyond one stack of blocks: encoder-decoder models, stages, wrappers (a user's,
peft's), one shared layer and a plain ``nn.Sequential``, each split by the rule of
``lsframe.parts``; every trainable parameter in exactly one part."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lsframe.lr_distribution import multipliers_for
from lsframe.parts import find_layer_stack, layer_stack_parameters, split_into_parts


def assert_each_trainable_parameter_once(model: nn.Module, parts) -> None:
    names = [n for p in parts for n in p.names]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(names) == sorted(trainable) and len(names) == len(set(names))


def names_under(parts, prefix: str) -> dict[str, list[str]]:
    """Each part → its parameter names that start with ``prefix``."""
    return {p.name: [n for n in p.names if n.startswith(prefix)] for p in parts}


# ------------------------------------------------------------------ encoder-decoder models
def tiny_t5() -> nn.Module:
    from transformers import T5Config, T5ForSequenceClassification

    config = T5Config(
        vocab_size=50,
        d_model=8,
        d_kv=4,
        d_ff=16,
        num_layers=3,
        num_decoder_layers=3,
        num_heads=2,
        num_labels=2,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return T5ForSequenceClassification(config)


def tiny_bart() -> nn.Module:
    from transformers import BartConfig, BartForSequenceClassification

    config = BartConfig(
        vocab_size=50,
        d_model=8,
        encoder_layers=3,
        decoder_layers=3,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=16,
        decoder_ffn_dim=16,
        max_position_embeddings=16,
        num_labels=2,
    )
    return BartForSequenceClassification(config)


def test_t5s_encoder_and_decoder_blocks_are_its_layers_in_order():
    model = tiny_t5()
    parts = split_into_parts(model, num_parts=10)
    assert_each_trainable_parameter_once(model, parts)
    stacks = "transformer.encoder.block, transformer.decoder.block"
    assert find_layer_stack(model) == (stacks, 6)
    assert [p.name for p in parts] == ["embeddings", *(f"layers_{i}" for i in range(6)), "head"]
    assert parts[0].names == ["transformer.shared.weight"]
    for i, part in enumerate(parts[1:-1]):
        block = f"transformer.{'encoder' if i < 3 else 'decoder'}.block.{i % 3}."
        inside = [n for n in part.names if n.startswith(block)]
        # the encoder's final norm, registered between the stacks, joins the layer before it
        rest = ["transformer.encoder.final_layer_norm.weight"] if i == 2 else []
        assert inside and part.names == inside + rest
    assert parts[-1].names[0] == "transformer.decoder.final_layer_norm.weight"
    assert all(n.startswith("classification_head.") for n in parts[-1].names[1:])


def test_child_tuning_selection_in_t5_covers_the_encoder_and_the_decoder():
    model = tiny_t5()
    names = [n for n, _ in layer_stack_parameters(model)]
    for coder in ("encoder", "decoder"):
        blocks = [n for n, _ in model.named_parameters() if n.startswith(f"transformer.{coder}.b")]
        assert blocks and set(blocks) <= set(names)
    assert not any(n.startswith(("transformer.shared", "classification_head")) for n in names)


def test_barts_encoder_and_decoder_layers_are_its_layers_and_its_head_is_last():
    model = tiny_bart()
    parts = split_into_parts(model, num_parts=10)
    assert_each_trainable_parameter_once(model, parts)
    assert find_layer_stack(model) == ("model.encoder.layers, model.decoder.layers", 6)
    assert parts[0].names == [
        "model.shared.weight",
        "model.encoder.embed_positions.weight",
        "model.decoder.embed_positions.weight",  # the decoder's input, between the stacks
    ]
    layers = [p for p in parts if p.name.startswith("layers_")]
    for i, part in enumerate(layers):
        block = f"model.{'encoder' if i < 3 else 'decoder'}.layers.{i % 3}."
        assert part.names[0].startswith(block)
    # between the stacks the encoder's own last norm joins its last layer
    assert layers[2].names[-1] == "model.encoder.layernorm_embedding.bias"
    head = [n.split(".")[0] for n in parts[-1].names]
    assert head[-1] == "classification_head" and "model.decoder.layernorm_embedding.bias" in (
        parts[-1].names
    )


# ------------------------------------------------------------------ stages and wrappers
def timm_resnet18(**kwargs) -> nn.Module:
    timm = pytest.importorskip("timm")
    return timm.create_model("resnet18", pretrained=False, **kwargs)


def test_torchvision_resnet18_is_split_like_timms_one_block_per_layer():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(weights=None)
    parts = split_into_parts(model, num_parts=10)
    assert find_layer_stack(model) == ("layer1, layer2, layer3, layer4", 8)
    # the same parameter names, so the same parts as timm's matcher gives
    assert [(p.name, p.names) for p in parts] == [
        (p.name, p.names) for p in split_into_parts(timm_resnet18(), num_parts=10)
    ]
    names = [n for n, _ in layer_stack_parameters(model)]
    assert {n.split(".")[0] for n in names} == {f"layer{i}" for i in range(1, 5)}


def timm_convnext(**kwargs) -> nn.Module:
    """timm's matcher gives 12 layers (blocks, each stage's downsample with its first block);
    its module tree has a 4-stage ``stages``."""
    timm = pytest.importorskip("timm")
    return timm.create_model("convnext_atto", pretrained=False, **kwargs)


class Backbone(nn.Module):
    """A user's module around a timm model, optionally with its own head."""

    def __init__(self, head: bool) -> None:
        super().__init__()
        self.backbone = timm_convnext(num_classes=0 if head else 3)
        self.head = nn.Linear(320, 3) if head else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        return self.head(features) if self.head is not None else features


def test_a_wrapped_timm_model_keeps_its_split_under_the_wrappers_names():
    plain = [(p.name, p.names) for p in split_into_parts(timm_convnext(num_classes=3))]
    wrapped = split_into_parts(Backbone(head=False))
    assert [(p.name, [n.removeprefix("backbone.") for n in p.names]) for p in wrapped] == plain
    # a wrapper's own head beside the timm backbone: the backbone's groups stay the layers
    model = Backbone(head=True)
    parts = split_into_parts(model)
    assert find_layer_stack(model) == (None, 12)
    assert [p.name for p in parts] == [name for name, _ in plain]
    assert parts[-1].names[-2:] == ["head.weight", "head.bias"]
    assert all(n.startswith("backbone.stages.3.blocks.1.") for n in parts[-2].names)


def test_a_timm_model_under_peft_lora_keeps_its_layers_and_head():
    peft = pytest.importorskip("peft")
    plain = split_into_parts(timm_convnext(num_classes=3))
    config = peft.LoraConfig(r=2, target_modules=["fc1", "fc2"], modules_to_save=["fc"])
    model = peft.get_peft_model(timm_convnext(num_classes=3), config)
    parts = split_into_parts(model)
    assert_each_trainable_parameter_once(model, parts)
    assert find_layer_stack(model) == (None, 12)
    assert parts[0].name == "layers_0-1"  # peft froze the stem
    parts = split_into_parts(model, include_frozen=True)
    assert [p.name for p in parts] == [p.name for p in plain]

    def module(name: str) -> str:  # stem, head, or a block: stages.0.blocks.1
        words = name.removeprefix("base_model.model.").split(".")
        return ".".join(words[:4] if words[0] == "stages" else words[:1])

    # each LoRA tensor sits in the part of the block it adapts
    for part, unwrapped in zip(parts, plain):
        assert {module(n) for n in part.names} <= {module(n) for n in unwrapped.names}
    trainable = [n for n in parts[-1].names if "original_module" not in n]
    assert trainable and all(n.startswith("base_model.model.head.") for n in trainable)


def test_xlm_roberta_under_peft_lora_has_its_classifier_as_head():
    peft = pytest.importorskip("peft")
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    config = XLMRobertaConfig(
        vocab_size=50,
        hidden_size=8,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=24,
    )
    base = XLMRobertaForSequenceClassification(config)
    assert next(iter(base.named_children()))[0] == "classifier"  # registered before the encoder
    lora = peft.LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query", "value"])
    model = peft.get_peft_model(base, lora)
    parts = split_into_parts(model, num_parts=6)
    assert_each_trainable_parameter_once(model, parts)
    assert [p.name for p in parts] == ["layers_0", "layers_1", "layers_2", "layers_3", "head"]
    classifier = "base_model.model.classifier.modules_to_save."
    assert parts[-1].names and all(n.startswith(classifier) for n in parts[-1].names)
    assert find_layer_stack(model) == ("base_model.model.roberta.encoder.layer", 4)


# ------------------------------------------------------------------ one layer; a Sequential
def test_albert_has_embeddings_its_shared_layer_and_a_head():
    from transformers import AlbertConfig, AlbertForSequenceClassification

    config = AlbertConfig(
        vocab_size=50,
        embedding_size=4,
        hidden_size=8,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
    )
    model = AlbertForSequenceClassification(config)
    parts = split_into_parts(model)
    assert_each_trainable_parameter_once(model, parts)
    assert [p.name for p in parts] == ["embeddings", "layers_0", "head"]
    embeddings = ("albert.embeddings.", "albert.encoder.embedding_hidden_mapping_in.")
    assert all(n.startswith(embeddings) for n in parts[0].names)
    assert all(n.startswith("albert.encoder.albert_layer_groups.0.") for n in parts[1].names)
    assert parts[-1].names == [
        "albert.pooler.weight",
        "albert.pooler.bias",
        "classifier.weight",
        "classifier.bias",
    ]
    assert [n for n, _ in layer_stack_parameters(model)] == parts[1].names


class SharedBlocks(nn.Module):
    """One block applied three times: ``nn.ModuleList([block] * 3)`` has one child."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        block = nn.Sequential(nn.Linear(8, 8), nn.GELU())
        self.blocks = nn.ModuleList([block] * 3)
        self.classifier = nn.Linear(8, 2)


def test_a_weight_shared_stack_is_one_layer_between_embeddings_and_head():
    model = SharedBlocks()
    parts = split_into_parts(model)
    assert [(p.name, p.names) for p in parts] == [
        ("embeddings", ["embed.weight"]),
        ("layers_0", ["blocks.0.0.weight", "blocks.0.0.bias"]),
        ("head", ["classifier.weight", "classifier.bias"]),
    ]
    assert find_layer_stack(model) == ("blocks", 1)


def test_a_sequential_models_last_layer_is_its_head():
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))
    parts = split_into_parts(model)
    assert [(p.name, p.names) for p in parts] == [
        ("layers_0", ["0.weight", "0.bias"]),
        ("layers_1", ["2.weight", "2.bias"]),
        ("head", ["4.weight", "4.bias"]),
    ]
    assert multipliers_for(model, {"head": 3.0}) == {"layers_0": 1.0, "layers_1": 1.0, "head": 3.0}
    # its children are its layers, not a stack below its root: ChildTuning-D says so
    message = r"Sequential has no layer stack .*a model that is itself one has its children"
    with pytest.raises(ValueError, match=message):
        layer_stack_parameters(model)
