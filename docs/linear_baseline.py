"""How far pixels alone go: a logistic regression on the raw pixels of each embedded classification set.

A benchmark that separates methods must not be solved by a linear readout of its pixels; the digits
nearly are. Prints the test accuracy per data set (one grey channel at 32², scikit-learn defaults, at
most 1,000 iterations); the README and docs/benchmarks.md quote it.

    python docs/linear_baseline.py
"""
import numpy as np
from sklearn.linear_model import LogisticRegression

from splitfx.base.provenance import provenance
from splitfx.programs import data


def pixels(dataset) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return np.stack([x[0].flatten().numpy() for x in xs]), np.array(ys)


if __name__ == "__main__":
    print(provenance())
    for name in ("digits", "cluttered"):
        splits = data.load(name, 32)
        (x, y), (tx, ty) = pixels(splits.train), pixels(splits.test)
        model = LogisticRegression(max_iter=1000).fit(x, y)
        print(f"{name}: {len(y)} training and {len(ty)} test images, logistic regression on the pixels: "
              f"{100 * model.score(tx, ty):.1f} % test accuracy")
