"""Built-in datasets that need no download: accepted wherever a data path is."""

from __future__ import annotations

import numpy as np

from edgeflow.data.imagefolder import ImageDataset


def load_digits_dataset(*, classes: list[int] | None = None) -> ImageDataset:
    """scikit-learn's 1,797 handwritten digits (8x8, 17 grey levels) as uint8 (N, 8, 8, 1).

    ``classes`` keeps only those digits, relabelled in the given order (for base/novel splits).
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[..., None]
    ds = ImageDataset(images, bunch.target.astype(np.int64), tuple(str(d) for d in range(10)),
                      "digits")
    return ds if classes is None else ds.select_classes(classes)


BUILTIN = {"digits": load_digits_dataset}
