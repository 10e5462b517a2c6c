"""The embedded cluttered-digits benchmark (#38): deterministic, disjoint sources, the digit whole on
its canvas, and usable by splitfx train with a validation split."""
import numpy as np
import pytest
import torch

from splitfx.programs import cluttered as cl
from splitfx.programs import data as datasets
from splitfx.programs.config import TrainConfig
from splitfx.programs.train import train


@pytest.fixture(scope="module")
def splits():
    return cl.cluttered(64)


def test_the_same_seed_renders_the_same_images(splits):
    again = cl.cluttered(64)
    for part, other in zip(splits[:2], again[:2], strict=True):
        assert part.targets == other.targets
        for i in (0, 7, len(part) - 1):
            assert torch.equal(part[i][0], other[i][0])
    assert len(splits[0]) == cl.SIZES["train"] and len(splits[1]) == cl.SIZES["test"] and splits[2] == 10


def test_an_image_read_again_is_the_one_rendered_and_writing_to_it_changes_nothing():
    """Images are kept once rendered: a second read equals a fresh render, whatever the reader did to
    the first."""
    kept, fresh = cl.cluttered(32, channels=1)[0], cl.cluttered(32, channels=1)[0]
    first = kept[5][0]
    first.zero_()
    assert kept.rendered[5] is not None and torch.equal(kept[5][0], fresh[5][0])
    assert not torch.equal(kept[5][0], first)
    assert cl.cluttered(96, channels=1)[0].rendered is None  # beyond the canvas: rendered at every read


def test_train_and_test_are_drawn_from_disjoint_source_digits(splits):
    train, test, _ = splits
    seen = {bytes(s.numpy().tobytes()) for s in train.sources}
    assert not any(bytes(s.numpy().tobytes()) in seen for s in test.sources)
    assert int(train.which.max()) < len(train.sources) and int(test.which.max()) < len(test.sources)


def test_the_labelled_digit_is_whole_on_its_canvas_among_clutter(splits):
    """The canvas is the maximum of its pieces: the labelled digit (piece 0) appears unchanged or
    brighter in its box, and the clutter adds pixels outside it."""
    train = splits[0]
    for i in range(20):
        canvas = train.render(i)
        side = int(train.side[i, 0])
        digit = torch.nn.functional.interpolate(train.sources[train.which[i, 0]][None], size=(side, side),
                                                mode="bilinear", align_corners=False)[0, 0].clamp(0, 1)
        y, x = (int(f * (cl.CANVAS - side)) for f in train.corner[i, 0])
        assert (canvas[y:y + side, x:x + side] >= digit - 1e-6).all()
        outside = canvas.clone()
        outside[y:y + side, x:x + side] = 0
        assert outside.sum() > 0, "clutter outside the digit's box"
    labels = np.array(train.targets)
    assert set(labels.tolist()) == set(range(10)) and np.bincount(labels).min() > 0.08 * len(labels)


def test_images_take_the_model_size_and_a_validation_split_holds_out_training_images():
    s = datasets.load("cluttered", 32, validation=0.1)
    x, y = s.train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and isinstance(y, int)
    assert len(s.train) + len(s.val) == cl.SIZES["train"] and len(s.test) == cl.SIZES["test"]
    assert datasets.num_classes("cluttered") == 10


def test_batches_collate_for_the_data_loader():
    loader = torch.utils.data.DataLoader(datasets.load("cluttered", 16).train, batch_size=8, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    x, y = next(iter(loader))
    assert x.shape == (8, 3, 16, 16) and y.dtype == torch.long and y.shape == (8,)


@pytest.mark.slow  # evaluation renders all 10,000 test images: about a minute on two busy cores
def test_splitfx_train_runs_on_it():
    config = TrainConfig(model="resnet18", data="cluttered", blocks=2, epochs=1, batch=256, input_size=8,
                         max_batches=2, device="cpu")  # small images: evaluation reads all 10,000 test images
    result = train(config, log=lambda _: None, progress=False)
    assert len(result.history) == 1 and 0.0 <= result.final_accuracy <= 1.0
