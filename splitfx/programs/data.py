"""Datasets for ``splitfx train``: ``digits`` (embedded), ``cifar10:DIR``, ``imagefolder:DIR``.

``digits`` is scikit-learn's handwritten digits (1,797 real 8×8 images, 10 classes), shipped inside
scikit-learn, so training needs no download. Images are standardised, upsampled bilinearly to the
model's input size and repeated to 3 channels; 20 % (stratified, fixed seed) is held out for test.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from ..base.errors import SplitFXError, first_line

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def digits(size: int, channels: int = 3) -> tuple[Dataset, Dataset, int]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(data.target, dtype=torch.long)
    x = (x - x.mean()) / x.std()
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).repeat(1, channels, 1, 1)
    train_idx, test_idx = train_test_split(range(len(y)), test_size=0.2, random_state=0, stratify=data.target)
    return TensorDataset(x[train_idx], y[train_idx]), TensorDataset(x[test_idx], y[test_idx]), 10


def _torchvision(size: int, train: bool):
    from torchvision import transforms as T

    steps = ([T.Resize(size), T.CenterCrop(size)] if not train
             else [T.RandomResizedCrop(size, scale=(0.5, 1.0)), T.RandomHorizontalFlip()])
    return T.Compose([*steps, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def check(spec: str) -> None:
    """Raise :class:`SplitFXError` unless ``spec`` is a ``--data`` spec whose folders are there
    (no image is read: cheap enough to run before any work starts)."""
    kind, _, root = spec.partition(":")
    if kind == "digits" and not root:
        return
    if kind not in ("cifar10", "imagefolder") or not root:
        raise SplitFXError(f"--data {spec!r}: use digits, cifar10:DIR or imagefolder:DIR")
    if not os.path.isdir(root):
        raise SplitFXError(f"--data {spec!r}: {root} is not a folder")
    if kind == "imagefolder":
        for split in ("train", "val"):
            folder = os.path.join(root, split)
            if not os.path.isdir(folder) or not any(e.is_dir() for e in os.scandir(folder)):
                raise SplitFXError(f"--data {spec!r}: expected {root}/train and {root}/val, each with one folder "
                                   f"of images per class; {folder} has no class folders")


def load(spec: str, size: int) -> tuple[Dataset, Dataset, int]:
    """(train, test, num_classes) for a ``--data`` spec."""
    check(spec)
    kind, _, root = spec.partition(":")
    if kind == "digits":
        return digits(size)
    from torchvision import datasets

    if kind == "cifar10":
        try:
            train = datasets.CIFAR10(root, train=True, download=False, transform=_torchvision(size, True))
            test = datasets.CIFAR10(root, train=False, download=False, transform=_torchvision(size, False))
        except RuntimeError as err:
            raise SplitFXError(f"--data {spec!r}: no CIFAR-10 python batches under {root} ({err})") from err
        return train, test, 10
    try:
        train = datasets.ImageFolder(os.path.join(root, "train"), transform=_torchvision(size, True))
        test = datasets.ImageFolder(os.path.join(root, "val"), transform=_torchvision(size, False))
    except (FileNotFoundError, RuntimeError) as err:
        raise SplitFXError(f"--data {spec!r}: {first_line(err, 200)}; put images (.jpg, .png, ...) in "
                           f"{root}/train/CLASS/ and {root}/val/CLASS/") from err
    if train.classes != test.classes:
        raise SplitFXError(f"--data {spec!r}: train has classes {train.classes[:5]}, val {test.classes[:5]}; "
                           "give both the same class folders")
    return train, test, len(train.classes)
