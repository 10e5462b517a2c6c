"""``cluttered``: an embedded benchmark hard enough to separate methods (#38), generated offline.

Each image is a 64×64 canvas holding one of scikit-learn's handwritten digits, upsampled to a random
side of 16–32 pixels at a random place, among fragments cut from other digits (cluttered MNIST's
recipe, Mnih et al. 2014): ``CLUTTER`` pieces, each a random half-side crop of another digit at its
own random scale and place. The canvas is the pixel-wise maximum of them all; the label is the whole
digit's class. Train and test images are drawn from disjoint source digits (the same stratified 80 /
20 split of the 1,797 sources as ``digits``), the clutter from the same pool as the digit, so no test
image shares a source with a training one. 20,000 training and 10,000 test images: the 95 % interval
of one accuracy near 90 % is about ±0.6 points.

Everything is drawn from one seed, per split, when the dataset is built (which source, scale and
place for every piece), and each image is rendered when it is first read (and kept, at sizes up to the
canvas), so the data needs no download and no disk, and is the same on every machine. Pixels are
scaled to [0, 1], standardised with fixed constants, resized to the model's input size when it is not
64, and repeated to 3 channels.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

CANVAS = 64
SIDES = (16, 32)  # the side a digit or a piece of clutter is upsampled to, inclusive
CLUTTER = 6
SIZES = {"train": 20_000, "test": 10_000}
SEED = 0
MEAN, STD = 0.12, 0.26  # of the pixels in [0, 1], over the first 2,000 training images (rounded)


class Cluttered(Dataset):
    """``count`` cluttered images of the ``sources`` (8×8 digits in [0, 1]) with their ``labels``."""

    def __init__(self, sources: np.ndarray, labels: np.ndarray, count: int, seed: int, size: int = CANVAS,
                 channels: int = 3):
        rng = np.random.default_rng(seed)
        n = len(sources)
        pieces = 1 + CLUTTER
        self.sources = torch.tensor(sources, dtype=torch.float32)[:, None]  # [N, 1, 8, 8]
        self.which = rng.integers(0, n, size=(count, pieces))  # piece 0: the digit
        self.side = rng.integers(SIDES[0], SIDES[1] + 1, size=(count, pieces))
        self.corner = rng.random((count, pieces, 2))  # where the piece goes, as a fraction of the room left
        self.crop = rng.random((count, pieces, 2))  # where a clutter piece is cut from its digit
        self.targets = labels[self.which[:, 0]].tolist()
        self.size, self.channels = size, channels
        # Each image as first rendered at ``size``, one channel, when that is at most the canvas:
        # rendering costs about 7 % of a training step at 32², and a run reads every image once per
        # epoch (20,000 × 32² floats: 82 MB; at 64², 328 MB). Larger sizes render at every read.
        self.rendered: list[torch.Tensor | None] | None = [None] * count if size <= CANVAS else None

    def __len__(self) -> int:
        return len(self.targets)

    def render(self, i: int) -> torch.Tensor:
        """Image ``i`` on the 64×64 canvas, pixels in [0, 1]."""
        canvas = torch.zeros(CANVAS, CANVAS)
        for p in range(self.which.shape[1]):
            side = int(self.side[i, p])
            digit = F.interpolate(self.sources[self.which[i, p]][None], size=(side, side), mode="bilinear",
                                  align_corners=False)[0, 0]
            if p:  # clutter: a half-side crop of another digit
                half = side // 2
                cy, cx = (int(f * (side - half)) for f in self.crop[i, p])
                digit = digit[cy:cy + half, cx:cx + half]
            h, w = digit.shape
            y, x = (int(f * (CANVAS - s)) for f, s in zip(self.corner[i, p], (h, w), strict=True))
            canvas[y:y + h, x:x + w] = torch.maximum(canvas[y:y + h, x:x + w], digit)
        return canvas.clamp_(0, 1)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.rendered[i] if self.rendered is not None else None
        if x is None:
            x = (self.render(i)[None] - MEAN) / STD
            if self.size != CANVAS:
                x = F.interpolate(x[None], size=(self.size, self.size), mode="bilinear", align_corners=False)[0]
            if self.rendered is not None:
                self.rendered[i] = x
        return x.repeat(self.channels, 1, 1), self.targets[i]  # a copy: the caller may write to it


def cluttered(size: int, channels: int = 3) -> tuple[Dataset, Dataset, int]:
    """(train, test, classes): the benchmark at ``size``² (see module docstring)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images, labels = data.images / 16.0, data.target
    train_idx, test_idx = train_test_split(range(len(labels)), test_size=0.2, random_state=0, stratify=labels)
    train = Cluttered(images[train_idx], labels[train_idx], SIZES["train"], SEED, size, channels)
    test = Cluttered(images[test_idx], labels[test_idx], SIZES["test"], SEED + 1, size, channels)
    return train, test, 10
