"""Image classification data: CIFAR-10/100 (torchvision), an ImageFolder (ImageNet layout), and
MNIST-style idx files (MNIST, Fashion-MNIST)."""

from __future__ import annotations

import urllib.error
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from lsframe.data.idx_files import find_idx_file, read_idx
from lsframe.data.image_folders import check_class_folders, check_same_classes, image_folder
from lsframe.data.image_transforms import (
    CIFAR_MEAN,
    CIFAR_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MNIST_MEAN,
    MNIST_STD,
    fixed_size_config,
    timm_data_config,
    timm_transforms,
)
from lsframe.data.resumable import make_loader
from lsframe.errors import DataError, MissingFileError, one_line
from lsframe.validation import check_choice, check_int_at_least, check_open_unit


def load_image(path: str) -> Any:
    """An RGB PIL image, or :class:`~lsframe.errors.DataError` naming a file that does not
    decode (torchvision's loader raises PIL's error, which does not say which sample)."""
    from PIL import Image

    try:
        with open(path, "rb") as handle:
            image = Image.open(handle)
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError) as error:
        raise DataError(f"image does not decode ({type(error).__name__})", where=path) from error


class ImageDataModule(pl.LightningDataModule):
    """Shared loaders and a seeded train/validation split; subclasses build the datasets.

    Args:
        batch_size: Training batch size. Default: 128.
        eval_batch_size: Validation/test batch size. Default: 256.
        num_workers: DataLoader workers.
        train_limit: Keep only the first N training images (quick runs, tests).
        val_limit: Keep only the first N validation/test images.
        seed: Seed of the train/validation split where one is carved out, and of the training
            order (a permutation per epoch from seed and epoch, resumable mid-epoch).
    """

    num_classes: int = 10
    in_chans: int = 3

    def __init__(
        self,
        batch_size: int = 128,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        train_limit: int | None = None,
        val_limit: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_int_at_least(
            1, **{"data.batch_size": batch_size, "data.eval_batch_size": eval_batch_size}
        )
        check_int_at_least(
            1, allow_none=True, **{"data.train_limit": train_limit, "data.val_limit": val_limit}
        )
        check_int_at_least(0, **{"data.num_workers": num_workers})
        self.batch_size, self.eval_batch_size, self.num_workers = (
            batch_size,
            eval_batch_size,
            num_workers,
        )
        self.train_limit, self.val_limit, self.seed = train_limit, val_limit, seed
        self.datasets: dict[str, Dataset] = {}

    def build(self, stage: str) -> dict[str, Dataset]:
        """The ``train``, ``val`` and ``test`` datasets."""
        raise NotImplementedError

    def data_config(self) -> dict[str, Any] | None:
        """How an evaluation image is prepared, in timm's data-config keys (``input_size``,
        ``mean``, ``std``, ``interpolation``, ``crop_pct``): what a timm model exported after
        training on this data records for its users. None: not known."""
        return None

    def setup(self, stage: str) -> None:
        if not self.datasets:
            self.datasets = self.build(stage)
            for split, limit in (
                ("train", self.train_limit),
                ("val", self.val_limit),
                ("test", self.val_limit),
            ):
                if limit is not None and split in self.datasets:
                    self.datasets[split] = Subset(
                        self.datasets[split], range(min(limit, len(self.datasets[split])))
                    )

    def split(self, dataset: Dataset, val_fraction: float) -> tuple[Subset, Subset]:
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(self.seed))
        cut = int(len(dataset) * (1 - val_fraction))
        return Subset(dataset, order[:cut].tolist()), Subset(dataset, order[cut:].tolist())

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        return make_loader(
            self.datasets[split], batch_size, shuffle, self.seed, num_workers=self.num_workers
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The test split's images, in order (``lsframe predict``)."""
        return self._loader("test", self.eval_batch_size, shuffle=False)


class IdxImageDataModule(ImageDataModule):
    """MNIST or Fashion-MNIST from idx files (``<prefix>-images-idx3-ubyte[.gz]`` + labels).

    ``../shared/data/images/mnist`` holds MNIST t10k; Debian's ``dataset-fashion-mnist`` puts
    Fashion-MNIST in ``/usr/share/datasets/fashion-mnist``. Validation is a seeded
    ``val_fraction`` of the training file; the test set is ``test_prefix`` (or that validation
    part when ``test_prefix`` equals ``train_prefix``, e.g. when only t10k is at hand).

    Args:
        data_dir: Directory of the idx files.
        train_prefix: ``train`` (60k) or ``t10k``.
        test_prefix: Usually ``t10k``.
        val_fraction: Share of the training file held out for validation. Default: 0.1.
        **kwargs: See :class:`ImageDataModule`.
    """

    num_classes = 10
    in_chans = 1

    def __init__(
        self,
        data_dir: str,
        train_prefix: str = "train",
        test_prefix: str = "t10k",
        val_fraction: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not Path(data_dir).is_dir():
            raise MissingFileError(f"no such directory {data_dir}", argument="data.data_dir")
        check_open_unit(**{"data.val_fraction": val_fraction})
        self.data_dir, self.train_prefix, self.test_prefix = (
            Path(data_dir),
            train_prefix,
            test_prefix,
        )
        self.val_fraction = val_fraction

    def load(self, prefix: str) -> TensorDataset:
        """The images and labels of ``prefix``, checked: as many labels as images, each a
        class id below ``num_classes`` (:class:`~lsframe.errors.DataError` otherwise)."""
        images = read_idx(find_idx_file(self.data_dir, prefix, "images"))
        labels_path = find_idx_file(self.data_dir, prefix, "labels")
        labels = read_idx(labels_path)
        if len(images) != len(labels):
            raise DataError(
                f"{len(images)} images but {len(labels)} labels", where=f"{self.data_dir}/{prefix}"
            )
        bad = (labels >= self.num_classes).nonzero()
        if len(bad):
            item = int(bad[0, 0])
            raise DataError(
                f"label {int(labels[item])} of item {item} is not a class id in "
                f"[0, {self.num_classes})",
                where=str(labels_path),
            )
        # scale to [0, 1] and standardise with the usual MNIST statistics
        self.image_shape = tuple(images.shape[1:])
        x = (images.unsqueeze(1).float() / 255 - MNIST_MEAN) / MNIST_STD
        return TensorDataset(x, labels.long())

    def data_config(self) -> dict[str, Any] | None:
        if getattr(self, "image_shape", None) is None:
            return None
        return fixed_size_config((1, *self.image_shape), (MNIST_MEAN,), (MNIST_STD,))

    def check_files(self, stage: str) -> None:
        """Read and check the idx files (sizes, labels below ``num_classes``) before the model
        is built; the command line calls this first."""
        for prefix in dict.fromkeys((self.train_prefix, self.test_prefix)):
            self.load(prefix)

    def build(self, stage: str) -> dict[str, Dataset]:
        train, val = self.split(self.load(self.train_prefix), self.val_fraction)
        test = val if self.test_prefix == self.train_prefix else self.load(self.test_prefix)
        return {"train": train, "val": val, "test": test}


class CIFARDataModule(ImageDataModule):
    """CIFAR-10 or CIFAR-100 through torchvision (random crop + flip for training).

    Validation is a seeded ``val_fraction`` of the 50k training images; test is the 10k test set.

    Args:
        name: ``cifar10`` or ``cifar100``.
        data_dir: Where torchvision finds (or downloads) the batches.
        download: Download when missing (needs the internet).
        val_fraction: Share of the training images held out. Default: 0.1.
        timm_model: A timm model name (``vit_tiny_patch16_224``, with or without a pretrained
            tag): use its data config instead (:func:`timm_transforms`: the images are resized
            to the model's input size and normalised as its pretrained weights expect).
        **kwargs: See :class:`ImageDataModule`.
    """

    def __init__(
        self,
        name: str = "cifar10",
        data_dir: str = "data",
        download: bool = False,
        val_fraction: float = 0.1,
        timm_model: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_choice("data.name", name, ("cifar10", "cifar100"))
        self.timm_model = timm_model
        if timm_model is not None:
            timm_data_config(timm_model)  # an unknown name fails now, not at fit time
        self.name, self.data_dir, self.download, self.val_fraction = (
            name,
            data_dir,
            download,
            val_fraction,
        )
        self.num_classes = 10 if name == "cifar10" else 100

    def build(self, stage: str) -> dict[str, Dataset]:
        from torchvision import datasets, transforms

        cls = datasets.CIFAR10 if self.name == "cifar10" else datasets.CIFAR100
        normalize = transforms.Normalize(CIFAR_MEAN, CIFAR_STD)
        augment = transforms.Compose(
            [
                transforms.RandomCrop(32, padding=4),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                normalize,
            ]
        )
        plain = transforms.Compose([transforms.ToTensor(), normalize])
        if self.timm_model is not None:
            augment, plain = timm_transforms(self.timm_model)
        try:
            train_aug = cls(self.data_dir, train=True, transform=augment, download=self.download)
            train_plain = cls(self.data_dir, train=True, transform=plain)
            test = cls(self.data_dir, train=False, transform=plain, download=self.download)
        except RuntimeError as error:
            raise FileNotFoundError(
                f"data.data_dir {self.data_dir}: {error} (set data.download: true)"
            ) from error
        except (urllib.error.URLError, ConnectionError, TimeoutError) as error:  # no network
            raise DataError(
                f"downloading {self.name.upper()} into {self.data_dir} failed ({one_line(error)}): "
                "without a network, place the dataset's extracted python folder there and set "
                "download: false",
                where="data.init_args.download",
            ) from error
        train, val = self.split(train_aug, self.val_fraction)
        return {"train": train, "val": Subset(train_plain, val.indices), "test": test}

    def data_config(self) -> dict[str, Any] | None:
        if self.timm_model is not None:
            return timm_data_config(self.timm_model)
        return fixed_size_config((3, 32, 32), CIFAR_MEAN, CIFAR_STD)


class ImageFolderDataModule(ImageDataModule):
    """An ImageFolder in the ImageNet layout: ``<root>/train/<class>/*.jpeg`` and ``<root>/val/...``.

    Standard ImageNet transforms: random-resized crop + flip for training, resize + center crop
    for validation; the validation folder doubles as the test set. With ``timm_model``, the
    transforms of that model's data config instead (a pretrained model's input size, crop,
    interpolation, mean and std; :func:`timm_transforms`).

    Args:
        root: Directory holding ``train`` and ``val``.
        image_size: Crop size. Default: 224. Not used with ``timm_model`` (its input size is).
        timm_model: A timm model name (``resnet50``, ``vit_tiny_patch16_224.augreg_in21k``):
            take the transforms from its data config. Default: None (the standard ones).
        **kwargs: See :class:`ImageDataModule`.
    """

    def __init__(
        self, root: str, image_size: int = 224, timm_model: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.timm_model = timm_model
        if timm_model is not None:
            timm_data_config(timm_model)  # an unknown name fails now, not at fit time
        for split in ("train", "val"):
            if not (Path(root) / split).is_dir():
                raise MissingFileError(
                    f"no such directory {Path(root) / split}", argument="data.root"
                )
        check_int_at_least(1, **{"data.image_size": image_size})
        self.root, self.image_size = Path(root), image_size
        #: The class folders' names in class-index order (``predict`` writes them).
        self.label_names = tuple(check_class_folders(self.root / "train"))
        self.num_classes = len(self.label_names)
        check_same_classes(self.label_names, check_class_folders(self.root / "val"), self.root)

    def build(self, stage: str) -> dict[str, Dataset]:
        from torchvision import transforms

        normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
        train_tf = transforms.Compose(
            [
                transforms.RandomResizedCrop(self.image_size),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                normalize,
            ]
        )
        eval_tf = transforms.Compose(
            [
                transforms.Resize(int(self.image_size * 256 / 224)),
                transforms.CenterCrop(self.image_size),
                transforms.ToTensor(),
                normalize,
            ]
        )
        if self.timm_model is not None:
            train_tf, eval_tf = timm_transforms(self.timm_model)
        train = image_folder(self.root / "train", train_tf, load_image)
        val = image_folder(self.root / "val", eval_tf, load_image)
        check_same_classes(train.classes, val.classes, self.root)  # changed since __init__
        return {"train": train, "val": val, "test": val}

    def data_config(self) -> dict[str, Any] | None:
        if self.timm_model is not None:
            return timm_data_config(self.timm_model)
        size = self.image_size  # resized to size·256/224, then the centre size×size
        return {
            "input_size": (3, size, size),
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
            "crop_pct": 224 / 256,
            "interpolation": "bilinear",
        }
