"""The ``<root>/<split>/<class>/<image>`` layout of :class:`~lsframe.data.ImageFolderDataModule`:
its classes and images, checked when the DataModule is built (before any model loads).

Rules, beyond torchvision's ``ImageFolder``:

* a class is a visible sub-folder: hidden ones (``.ipynb_checkpoints``, ``.DS_Store`` folders,
  anything starting with ``.``) are not classes, where ``ImageFolder`` counts them and then
  fails on them for having no image;
* a split needs 2 class folders or more, and every class folder at least one image (a file with
  an image extension of torchvision's, in it or in a sub-folder, symlinked ones included, as
  ``ImageFolder`` walks them), said at the folder;
* files without an image extension are left out, as in ``ImageFolder``, and so are hidden files
  (``._x.jpg``, macOS's resource forks, which ``ImageFolder`` takes and then fails to decode);
  both are counted in one warning per split.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn

from lsframe.errors import DataError


def class_folders(split: Path) -> list[str]:
    """The class names of a split folder: its visible sub-folders, sorted."""
    return sorted(
        entry.name
        for entry in os.scandir(split)
        if entry.is_dir() and not entry.name.startswith(".")
    )


def _is_image(path: str) -> bool:
    """A file of a class folder is an image: a visible name (not ``._x.jpg``, macOS's resource
    fork of ``x.jpg``) with an image extension of torchvision's."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    name = os.path.basename(path)
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)


def check_class_folders(split: Path) -> list[str]:
    """The classes of ``split`` (:func:`class_folders`), after checking that there are 2 or more
    and that each holds an image (the first one found ends the look; nothing is opened).

    Raises:
        DataError: at the split folder, or at the empty class folder.
    """
    classes = class_folders(split)
    if len(classes) < 2:
        found = f" ({', '.join(classes)})" if classes else ""
        raise DataError(
            f"{len(classes)} class folder{'' if len(classes) == 1 else 's'}{found}; a classifier "
            "needs 2 or more (one sub-folder of images per class)",
            where=str(split),
        )
    for name in classes:
        folder = split / name
        # followlinks: ImageFolder takes the images of symlinked sub-folders too
        walk = os.walk(folder, followlinks=True)
        if not any(_is_image(f) for _, _, files in walk for f in files):
            raise DataError("no image file in this class folder", where=str(folder))
    return classes


def image_folder(split: Path, transform: Any, loader: Any) -> Any:
    """torchvision's ``ImageFolder`` over ``split`` with the classes of :func:`class_folders`;
    files that are not images by their extension, or hidden, are left out and counted in one
    warning."""
    from torchvision import datasets

    left_out: list[str] = []

    class VisibleImageFolder(datasets.ImageFolder):
        def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
            classes = class_folders(Path(directory))
            return classes, {name: i for i, name in enumerate(classes)}

    def is_image(path: str) -> bool:
        if _is_image(path):
            return True
        left_out.append(path)
        return False

    dataset = VisibleImageFolder(split, transform=transform, loader=loader, is_valid_file=is_image)
    if left_out:
        hidden = [p for p in left_out if os.path.basename(p).startswith(".")]
        other = [p for p in left_out if not os.path.basename(p).startswith(".")]
        examples = ", ".join(found[0] for found in (other, hidden) if found)
        rank_zero_warn(
            f"{len(left_out)} file(s) under {split} are not images by their extension, or are "
            f"hidden (a name starting with '.'), and are left out (e.g. {examples})"
        )
    return dataset


def check_same_classes(train: Sequence[str], val: Sequence[str], root: Path) -> None:
    """Raise a :class:`DataError` at ``<root>/val`` when its class folders are not train's (an
    ImageFolder would number val's classes otherwise), naming the side that lacks each."""
    lacking = sorted(set(train) - set(val))
    extra = sorted(set(val) - set(train))
    if lacking or extra:
        said = [f"val lacks {lacking}"] if lacking else []
        said += [f"val has {extra}, which train lacks"] if extra else []
        raise DataError(
            f"val's class folders are not train's: {' and '.join(said)} (train: "
            f"{list(train)}); labels would not line up",
            where=str(root / "val"),
        )
