"""Embedded datasets for the tasks beyond classification, generated or shipped with a dependency
(no download), deterministic from a fixed seed, with disjoint train and test sets:

* ``shapes``: 32×32 images of up to three squares, discs and triangles of random colours on a noisy
  background, labelled per pixel (4 classes with the background): segmentation, scored by mIoU;
* ``digits_sr``: scikit-learn's digits at 32×32 and their 2× average-pooled 16×16 versions:
  super-resolution, scored by PSNR (test images: the stratified 20 % held out by ``digits``);
* ``friedman``: scikit-learn's Friedman #1 generator (10 features, 5 informative, noise 1.0):
  regression, scored by RMSE in the target's units; ``friedman2`` (Friedman #2, 4 features) and
  ``diabetes`` (scikit-learn's 442 patients) for ``splitfx train --task regression``;
* ``chars``: the text of Python's own help topics (``pydoc_data.topics``, shipped with CPython),
  64-character windows; the last 10 % of the text is the test set: character-level language
  modelling, scored by perplexity.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

DATA_SEED = 0  # the data never depends on a run's --seed: seeds change the training only


@dataclass(frozen=True)
class TaskData:
    """One task's train and test sets (inputs, targets) and what a model for it needs to know."""

    train: TensorDataset
    test: TensorDataset
    meta: dict  # e.g. classes, vocabulary size, target scale


def _polygon_mask(size: int, cy: float, cx: float, r: float, kind: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    dy, dx = yy - cy, xx - cx
    if kind == 1:  # square
        return (dy.abs() <= r) & (dx.abs() <= r)
    if kind == 2:  # disc
        return dy * dy + dx * dx <= r * r
    return (dy <= r) & (dy >= -r) & (dx.abs() <= (dy + r) / 2)  # triangle, apex up


def shapes(n_train: int = 4000, n_test: int = 1000, size: int = 32) -> TaskData:
    """Segmentation of generated shapes (see module docstring)."""
    g = torch.Generator().manual_seed(DATA_SEED)
    n = n_train + n_test
    images = 0.3 * torch.rand(n, 3, size, size, generator=g)
    labels = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        for _ in range(int(torch.randint(1, 4, (), generator=g))):
            kind = int(torch.randint(1, 4, (), generator=g))
            r = float(torch.empty(()).uniform_(3, 8, generator=g))
            cy, cx = (float(torch.empty(()).uniform_(r, size - r, generator=g)) for _ in range(2))
            mask = _polygon_mask(size, cy, cx, r, kind)
            colour = torch.rand(3, 1, 1, generator=g) * 0.7 + 0.3
            images[i] = torch.where(mask, colour, images[i])
            labels[i][mask] = kind
    images = (images - images.mean()) / images.std()
    return TaskData(TensorDataset(images[:n_train], labels[:n_train]),
                    TensorDataset(images[n_train:], labels[n_train:]), {"classes": 4})


def digits_sr(size: int = 32) -> TaskData:
    """Super-resolution of scikit-learn's digits (see module docstring)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    hr = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    hr = F.interpolate(hr, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    lr = F.avg_pool2d(hr, 2)
    train, test = train_test_split(range(len(hr)), test_size=0.2, random_state=DATA_SEED, stratify=data.target)
    return TaskData(TensorDataset(lr[train], hr[train]), TensorDataset(lr[test], hr[test]), {})


def standardised(x, y, n_train: int) -> TaskData:
    """Features and target standardised on the first ``n_train`` samples (the training set), the rest the
    test set; ``meta`` keeps the target's mean and standard deviation, to report errors in its units."""
    x, y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
    mean, std = x[:n_train].mean(0), x[:n_train].std(0)
    y_mean, y_std = y[:n_train].mean(), y[:n_train].std()
    x, y = (x - mean) / std, (y - y_mean) / y_std
    return TaskData(TensorDataset(x[:n_train], y[:n_train]), TensorDataset(x[n_train:], y[n_train:]),
                    {"features": x.shape[1], "target_mean": float(y_mean), "target_std": float(y_std)})


def friedman(n_train: int = 5000, n_test: int = 1000) -> TaskData:
    """Friedman #1 regression, features and target standardised on the training set (see module docstring)."""
    from sklearn.datasets import make_friedman1

    x, y = make_friedman1(n_samples=n_train + n_test, n_features=10, noise=1.0, random_state=DATA_SEED)
    return standardised(x, y, n_train)


def friedman2(n_train: int = 5000, n_test: int = 1000) -> TaskData:
    """Friedman #2 regression (4 features; noise of standard deviation 125, Breiman's 3:1 signal to
    noise), standardised on the training set."""
    from sklearn.datasets import make_friedman2

    x, y = make_friedman2(n_samples=n_train + n_test, noise=125.0, random_state=DATA_SEED)
    return standardised(x, y, n_train)


def diabetes(split: int = 0) -> TaskData:
    """scikit-learn's diabetes data (442 patients, 10 features, disease progression after a year, shipped
    with scikit-learn), 20 % held out for test, standardised on the rest. ``split`` picks one of many
    random train/test splits (0: the one every run uses by default): 88 test patients are few, so a
    comparison is only as good as its average over splits."""
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(DATA_SEED + split))
    return standardised(x[order.numpy()], y[order.numpy()], len(y) - len(y) // 5)


def chars(context: int = 64) -> TaskData:
    """Character-level language modelling on Python's help topics (see module docstring)."""
    from pydoc_data.topics import topics

    text = "".join(topics[k] for k in sorted(topics))
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor([index[c] for c in text], dtype=torch.long)
    cut = int(len(ids) * 0.9)

    def windows(part: torch.Tensor) -> TensorDataset:
        count = (len(part) - 1) // context
        x = part[:count * context].view(count, context)
        y = part[1:count * context + 1].view(count, context)
        return TensorDataset(x, y)

    return TaskData(windows(ids[:cut]), windows(ids[cut:]), {"vocab": len(vocab)})


def miou(scores: torch.Tensor, labels: torch.Tensor, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class intersection and union counts of a batch (summed over batches, then divided)."""
    pred = scores.argmax(1)
    inter = torch.stack([((pred == c) & (labels == c)).sum() for c in range(classes)])
    union = torch.stack([((pred == c) | (labels == c)).sum() for c in range(classes)])
    return inter, union


def psnr(mse: float) -> float:
    """Peak signal-to-noise ratio (dB) of images in [0, 1] at mean squared error ``mse``."""
    return 10 * math.log10(1.0 / max(mse, 1e-12))
