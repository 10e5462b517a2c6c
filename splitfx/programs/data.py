"""Datasets for ``splitfx train``: ``digits`` and ``cluttered`` (embedded), ``cifar10:DIR``,
``imagefolder:DIR``; for ``--task regression`` the embedded ``diabetes``, ``friedman`` (#1) and
``friedman2`` (:mod:`.task_data`). ``cluttered`` (:mod:`.cluttered`) is the harder benchmark: the
same digits at random places and scales on 64² canvases among fragments of other digits.

``digits`` is scikit-learn's handwritten digits (1,797 real 8×8 images, 10 classes), shipped inside
scikit-learn, so training needs no download. Images are standardised, upsampled bilinearly to the
model's input size and repeated to 3 channels; 20 % (stratified, fixed seed) is held out for test.

Regression data are tables: features and targets standardised on the training set (errors are
reported in the target's own units: :attr:`Splits.target`), 20 % held out for test (generated data:
1,000 of 6,000 samples). ``diabetes@S`` and ``digits@S`` are those data's S-th random train/test
split (``diabetes`` is ``diabetes@0``): with 88 test patients, or 360 test images, one split decides
little.

``validation`` > 0 carves that fraction of the *training* images (stratified by class for
classification, a fixed seed, the same for every run) into a validation set, so that learning rates
and epochs can be chosen without the test images: a run with a validation split evaluates on it and
never touches ``test``.

``imagefolder`` reads every file's header when the dataset is built: a file with an image extension
that PIL cannot read is refused by name before any work; one whose pixels fail to decode later (a
truncated file) stops the run with an error naming it, its last checkpoint whole.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset, TensorDataset

from ..base.errors import SplitFXError, first_line
from . import task_data
from .cluttered import cluttered

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SPLIT_SEED = 0  # every run carves the same validation images, whatever its own --seed
REGRESSION = {"diabetes": task_data.diabetes, "friedman": task_data.friedman, "friedman2": task_data.friedman2}
FEATURES = {"diabetes": 10, "friedman": 10, "friedman2": 4}  # what a regressor of each takes (no data loaded)
SPLITS = ("diabetes", "digits")  # the data with other random train/test splits: NAME@S


def split_of(spec: str) -> tuple[str, int]:
    """(data, split) of a ``--data`` spec: ``diabetes@3`` is the diabetes data's 4th random train/test
    split; a spec without ``@`` is split 0, the one every run uses by default."""
    name, at, split = spec.partition("@")
    if not at or ":" in spec:  # a folder (cifar10:DIR, imagefolder:DIR) may hold an @ in its path
        return spec, 0
    if name not in SPLITS:
        raise SplitFXError(f"--data {spec!r}: only {' and '.join(SPLITS)} have other train/test splits; give {name}")
    if not split.isdigit():
        raise SplitFXError(f"--data {spec!r}: {name}@S takes a split number S >= 0 (such as {name}@1)")
    return name, int(split)


def regression(spec: str) -> tuple[str, int] | None:
    """(data, split) of a regression ``--data`` spec (``friedman``, ``diabetes@3``), None for
    classification data."""
    name, split = split_of(spec)
    return (name, split) if name in REGRESSION else None


@dataclass(frozen=True)
class Splits:
    """The images of one ``--data`` spec: ``train`` is what is trained on (without the validation
    images), ``val`` is None without a validation split."""

    train: Dataset
    val: Dataset | None
    test: Dataset
    num_classes: int  # 1 for regression: one value per sample
    target: tuple[float, float] | None = None  # regression: the target's mean and standard deviation

    @property
    def monitored(self) -> tuple[str, Dataset]:
        """The set evaluated after every epoch: validation when there is one, else test."""
        return ("val", self.val) if self.val is not None else ("test", self.test)


def digits(size: int, channels: int = 3, split: int = 0) -> tuple[Dataset, Dataset, int]:
    """The digits at ``size``² (module docstring); ``split`` picks another random stratified 80 / 20
    train/test split (0: the default one)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(data.target, dtype=torch.long)
    x = (x - x.mean()) / x.std()
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).repeat(1, channels, 1, 1)
    train_idx, test_idx = train_test_split(range(len(y)), test_size=0.2, random_state=split, stratify=data.target)
    return TensorDataset(x[train_idx], y[train_idx]), TensorDataset(x[test_idx], y[test_idx]), 10


EMBEDDED = ("digits", "cluttered")  # generated or shipped with a package: no folder


def _torchvision(size: int, train: bool):
    from torchvision import transforms as T

    steps = ([T.Resize(size), T.CenterCrop(size)] if not train
             else [T.RandomResizedCrop(size, scale=(0.5, 1.0)), T.RandomHorizontalFlip()])
    return T.Compose([*steps, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def check(spec: str) -> None:
    """Raise :class:`SplitFXError` unless ``spec`` is a ``--data`` spec whose folders are there
    (no image is read: cheap enough to run before any work starts)."""
    name, _ = split_of(spec)
    kind, _, root = name.partition(":")
    if (kind in EMBEDDED or kind in REGRESSION) and not root:
        return
    if kind not in ("cifar10", "imagefolder") or not root:
        raise SplitFXError(f"--data {spec!r}: use digits, cluttered, cifar10:DIR or imagefolder:DIR "
                           f"(classification), or {', '.join(REGRESSION)} (regression); "
                           f"{' and '.join(f'{n}@S' for n in SPLITS)}: their S-th random train/test split")
    if not os.path.isdir(root):
        raise SplitFXError(f"--data {spec!r}: {root} is not a folder")
    if kind == "imagefolder":
        for split in ("train", "val"):
            folder = os.path.join(root, split)
            if not os.path.isdir(folder) or not any(e.is_dir() for e in os.scandir(folder)):
                raise SplitFXError(f"--data {spec!r}: expected {root}/train and {root}/val, each with one folder "
                                   f"of images per class; {folder} has no class folders")


def labels_of(dataset: Dataset) -> list[int]:
    """Every image's class, without loading images where the dataset lists them."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].tolist()
    if hasattr(dataset, "targets"):
        return list(dataset.targets)
    return [int(y) for _, y in dataset]


def carve(train: Dataset, fraction: float, evaluated: Dataset | None = None,
          stratified: bool = True) -> tuple[Dataset, Dataset]:
    """(train without the validation images, validation images): ``fraction`` of ``train``, stratified
    by class (unless not ``stratified``: regression targets) with a fixed seed. ``evaluated`` is the
    same images under the evaluation transform."""
    from sklearn.model_selection import train_test_split

    labels = labels_of(train)
    try:
        kept, held = train_test_split(range(len(labels)), test_size=fraction, random_state=SPLIT_SEED,
                                      stratify=labels if stratified else None)
    except ValueError as err:
        raise SplitFXError(f"--validation {fraction}: cannot hold out {fraction:.0%} of {len(labels)} training "
                           f"images with every class in both parts ({first_line(err, 120)}); give a fraction "
                           "that leaves each class at least one image on each side") from err
    kept, held = sorted(kept), sorted(held)
    if isinstance(train, TensorDataset) and evaluated is None:  # stays a TensorDataset: batches by indexing
        return (TensorDataset(*(t[kept] for t in train.tensors)), TensorDataset(*(t[held] for t in train.tensors)))
    return Subset(train, kept), Subset(train if evaluated is None else evaluated, held)


def load(spec: str, size: int, validation: float = 0.0) -> Splits:
    """The train, validation (``validation`` of the training images, 0: none) and test images of a
    ``--data`` spec."""
    check(spec)
    if not 0 <= validation < 1:
        raise SplitFXError(f"--validation {validation}: give a fraction of the training images in [0, 1)")
    if (table := regression(spec)) is not None:
        name, split = table
        data = REGRESSION[name](split) if split else REGRESSION[name]()
        target = (data.meta["target_mean"], data.meta["target_std"])
        if not validation:
            return Splits(data.train, None, data.test, 1, target)
        return Splits(*carve(data.train, validation, stratified=False), data.test, 1, target)
    train, test, classes, evaluated = _load(spec, size)
    if not validation:
        return Splits(train, None, test, classes)
    return Splits(*carve(train, validation, evaluated), test, classes)


def _load(spec: str, size: int) -> tuple[Dataset, Dataset, int, Dataset | None]:
    """(train, test, classes, the training images under the test transform where it differs)."""
    name, split = split_of(spec)
    kind, _, root = name.partition(":")
    if kind == "digits":  # looked up when called (tests replace it)
        return (*(digits(size, split=split) if split else digits(size)), None)
    if kind == "cluttered":
        return (*cluttered(size), None)
    from torchvision import datasets

    if kind == "cifar10":
        try:
            train = datasets.CIFAR10(root, train=True, download=False, transform=_torchvision(size, True))
            test = datasets.CIFAR10(root, train=False, download=False, transform=_torchvision(size, False))
        except RuntimeError as err:
            raise SplitFXError(f"--data {spec!r}: no CIFAR-10 python batches under {root} ({err})") from err
        evaluated = datasets.CIFAR10(root, train=True, download=False, transform=_torchvision(size, False))
        return train, test, 10, evaluated
    return _imagefolder(spec, root, size)


def _imagefolder(spec: str, root: str, size: int) -> tuple[Dataset, Dataset, int, Dataset]:
    """``imagefolder:ROOT``'s train and val images, every file's header read first: a file PIL cannot
    read is refused by name here, not met mid-epoch."""
    from torchvision import datasets

    def folder(split: str, train: bool) -> datasets.ImageFolder:
        return datasets.ImageFolder(os.path.join(root, split), transform=_torchvision(size, train), loader=_image)

    try:
        train, test = folder("train", True), folder("val", False)
    except (FileNotFoundError, RuntimeError) as err:
        raise SplitFXError(f"--data {spec!r}: {first_line(err, 200)}; put images (.jpg, .png, ...) in "
                           f"{root}/train/CLASS/ and {root}/val/CLASS/") from err
    if train.classes != test.classes:
        raise SplitFXError(f"--data {spec!r}: train has classes {train.classes[:5]}, val {test.classes[:5]}; "
                           "give both the same class folders")
    bad = unreadable([path for path, _ in train.samples + test.samples])
    if bad:
        raise SplitFXError(f"--data {spec!r}: {len(bad)} file(s) with an image extension are not images PIL can "
                           f"read: {'; '.join(f'{p} ({why})' for p, why in bad[:3])}; remove or replace them "
                           "(files without an image extension are skipped)")
    return train, test, len(train.classes), folder("train", False)


def unreadable(paths: list[str]) -> list[tuple[str, str]]:
    """The files among ``paths`` whose header PIL cannot read, each with why (no pixel is decoded)."""
    from PIL import Image, UnidentifiedImageError

    bad = []
    for path in paths:
        try:
            with Image.open(path):
                pass
        except UnidentifiedImageError:
            bad.append((path, "no image format PIL knows"))
        except Exception as err:  # PIL's plugins raise many types for bytes that are no image
            bad.append((path, first_line(err, 100)))
    return bad


def _image(path: str):
    """The image at ``path`` in RGB; one whose pixels cannot be decoded (a truncated file, whose header
    passed :func:`unreadable`) is a :class:`SplitFXError` naming it."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Exception as err:  # PIL's decoders raise many types for damaged data
        raise SplitFXError(f"{path}: the image cannot be decoded ({first_line(err, 120)}); remove or replace it, "
                           "then resume the run from its last checkpoint with --resume") from err


def num_classes(spec: str) -> int:
    """The number of classes of a ``--data`` spec, no image read (for ``imagefolder``, its class
    folders): cheap enough to compare with a checkpoint before any work."""
    check(spec)
    kind, _, root = spec.partition(":")
    if regression(spec) is not None:
        return 1
    if kind != "imagefolder":
        return 10
    return sum(entry.is_dir() for entry in os.scandir(os.path.join(root, "train")))
