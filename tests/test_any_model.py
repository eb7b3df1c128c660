"""Issue 21 item 4, beyond the split itself: PLASLS on plain param groups, timm's
``no_weight_decay()`` in the decay groups, and a pretrained timm model's data config."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lsframe.errors import ConfigError
from lsframe.modules.optimizer_setup import parameter_groups
from lsframe.optim import PLASLS


def three_layers() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))


def searched_groups_per_step(model, opt, steps: int) -> list[set[int]]:
    """For each step, the groups whose parameters a trial of the line search moved."""
    x, y = torch.randn(16, 4), torch.randn(16)
    per_step = []
    for _ in range(steps):
        start = [p.detach().clone() for p in model.parameters()]
        moved: set[int] = set()

        def closure(backward: bool = True, start=start, moved=moved):
            with torch.set_grad_enabled(backward):
                loss = F.mse_loss(model(x).squeeze(-1), y)
            if backward:
                opt.zero_grad()
                loss.backward()
            now = list(model.parameters())
            for i, group in enumerate(opt.param_groups):
                ids = {id(q) for q in group["params"]}
                if any(id(p) in ids and not torch.equal(p, s) for p, s in zip(now, start)):
                    moved.add(i)
            return loss.detach()

        opt.step(closure)
        per_step.append(moved)
    return per_step


def test_plasls_takes_plain_groups_each_group_a_part_named_by_name_or_index():
    model = three_layers()
    groups = [{"params": list(layer.parameters())} for layer in model]
    groups[1]["name"] = "middle"
    opt = PLASLS(groups, joint_steps=2)
    assert [g["part"] for g in opt.param_groups] == ["group_0", "middle", "group_2"]
    per_step = searched_groups_per_step(model, opt, 8)
    assert per_step[:2] == [{0, 1, 2}] * 2
    assert per_step[2:] == [{t % 3} for t in range(2, 8)]
    assert opt.state["line_search"]["searches"] == 8


def test_plasls_on_model_parameters_is_one_part_and_lowers_the_loss():
    model = three_layers()
    opt = PLASLS(model.parameters(), joint_steps=1)
    assert [g["part"] for g in opt.param_groups] == ["group_0"]
    x, y = torch.randn(32, 4), torch.randn(32)

    def closure(backward: bool = True):
        with torch.set_grad_enabled(backward):
            loss = F.mse_loss(model(x).squeeze(-1), y)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss.detach()

    first = float(closure(backward=False))
    for _ in range(10):
        opt.step(closure)
    assert float(closure(backward=False)) < first


def test_plasls_keeps_part_keys_and_makes_clashing_names_unique():
    model = three_layers()
    groups = [
        {"params": list(model[0].parameters()), "part": "a"},
        {"params": list(model[1].parameters()), "name": "a"},
        {"params": list(model[2].parameters()), "name": "decay"},
    ]
    opt = PLASLS(groups)
    assert [g["part"] for g in opt.param_groups] == ["a", "group_1", "decay"]


# ------------------------------------------------------------------------ no_weight_decay
def names_in(groups, model) -> dict[str, set[str]]:
    ids = {id(p): n for n, p in model.named_parameters()}
    return {g["name"]: {ids[id(p)] for p in g["params"]} for g in groups}


def test_a_timm_models_no_weight_decay_joins_the_no_decay_group():
    timm = pytest.importorskip("timm")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False)
    groups = names_in(parameter_groups(model, "decay", 10), model)
    assert {"pos_embed", "cls_token"} <= groups["no_decay"]
    assert "blocks.0.norm1.weight" in groups["no_decay"]  # the shape rule still holds
    assert "blocks.0.attn.qkv.weight" in groups["decay"] and "pos_embed" not in groups["decay"]
    built = parameter_groups(model, "decay", 10)
    assert built[1]["weight_decay"] == 0.0 and "weight_decay" not in built[0]
    everything = [n for g in groups.values() for n in g]
    assert sorted(everything) == sorted(n for n, _ in model.named_parameters())


def test_the_lightning_free_groups_of_a_model_are_timms():
    # weight_decay_groups decayed a ViT's pos_embed and cls_token, and grouped frozen parameters
    timm = pytest.importorskip("timm")
    from timm.optim import param_groups_weight_decay

    from lsframe.optim import weight_decay_groups

    for name in ("vit_tiny_patch16_224", "resnet18"):
        model = timm.create_model(name, pretrained=False, num_classes=10)
        if name == "resnet18":  # only the head trains
            for n, p in model.named_parameters():
                p.requires_grad_(n.startswith("fc."))
        ours = names_in(weight_decay_groups(model), model)
        skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
        groups = param_groups_weight_decay(model, 0.1, no_weight_decay_list=skip)  # as timm's
        theirs = {"no_decay" if g["weight_decay"] == 0 else "decay": g for g in groups}
        assert ours == names_in([{**g, "name": k} for k, g in theirs.items()], model), name
    pairs = list(model.named_parameters())  # pairs are grouped whole, frozen ones too
    assert sum(len(g["params"]) for g in weight_decay_groups(pairs)) == len(pairs)


def test_no_weight_decay_may_be_passed_and_takes_names_patterns_and_modules():
    model = three_layers()
    plain = names_in(parameter_groups(model, "decay", 10), model)
    assert plain == {"decay": {"0.weight", "1.weight", "2.weight"}, "no_decay": plain["no_decay"]}
    groups = names_in(parameter_groups(model, "decay", 10, no_weight_decay=["0.weight"]), model)
    assert groups["decay"] == {"1.weight", "2.weight"} and "0.weight" in groups["no_decay"]
    groups = names_in(parameter_groups(model, "decay", 10, no_weight_decay=["*.weight"]), model)
    assert set(groups) == {"no_decay"}
    groups = names_in(parameter_groups(model, "decay", 10, no_weight_decay=["2"]), model)
    assert groups["decay"] == {"0.weight", "1.weight"}
    # a name that exempts nothing (a typo beside a good one) is refused, not ignored
    with pytest.raises(ValueError, match="no_weight_decay name '2.weigth' matches no trainable"):
        parameter_groups(model, "decay", 10, no_weight_decay=["0.weight", "2.weigth"])


def test_the_module_passes_its_models_no_weight_decay():
    from helpers import TinyRegression

    model = three_layers()
    model.no_weight_decay = lambda: {"1.weight"}
    module = TinyRegression(model=model, param_grouping="decay")
    groups = names_in(module.param_groups(), model)
    assert groups["decay"] == {"0.weight", "2.weight"}


# ------------------------------------------------------------------------ timm data config
def write_image_folder(root, classes=("cat", "dog"), per_class: int = 2) -> None:
    from PIL import Image

    for split in ("train", "val"):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (40, 30), (40 * c + 10 * i, 100, 200)).save(folder / f"{i}.png")


def test_an_image_folder_takes_a_pretrained_timm_models_data_config(tmp_path):
    timm = pytest.importorskip("timm")
    from timm.data import create_transform, resolve_model_data_config

    from lsframe.data.images import ImageFolderDataModule, timm_data_config

    write_image_folder(tmp_path)
    name = "vit_tiny_patch16_224"
    config = resolve_model_data_config(timm.create_model(name, pretrained=False))
    assert timm_data_config(name) == config
    data = ImageFolderDataModule(str(tmp_path), image_size=64, timm_model=name, batch_size=2)
    data.setup("fit")
    images, labels = next(iter(data.val_dataloader()))
    assert images.shape == (4, *config["input_size"]) and labels.tolist() == [0, 0, 1, 1]
    expected = create_transform(**config)
    assert repr(data.datasets["val"].transform) == repr(expected)
    image = data.datasets["val"].loader(data.datasets["val"].samples[0][0])
    assert torch.equal(images[0], expected(image))
    # the ImageNet default ends in other statistics: the data config is really used
    plain = ImageFolderDataModule(str(tmp_path), image_size=64, batch_size=2)
    plain.setup("fit")
    assert next(iter(plain.val_dataloader()))[0].shape[-1] == 64


def test_a_tagged_name_picks_that_tags_config_and_an_unknown_name_is_a_config_error(tmp_path):
    pytest.importorskip("timm")
    from lsframe.data.images import CIFARDataModule, ImageFolderDataModule, timm_data_config

    assert timm_data_config("resnet18.tv_in1k")["crop_pct"] == 0.875
    assert timm_data_config("resnet18")["crop_pct"] == 0.95  # the default tag, a1_in1k
    write_image_folder(tmp_path)
    for build in (
        lambda: ImageFolderDataModule(str(tmp_path), timm_model="no_such_model"),
        lambda: CIFARDataModule(timm_model="no_such_model"),
        lambda: CIFARDataModule(timm_model="resnet18.no_such_tag"),
    ):
        with pytest.raises(ConfigError, match="data.timm_model"):
            build()
