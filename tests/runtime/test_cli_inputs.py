"""Images as cameras and PIL give them reach the Session; one class is refused with the fix."""

import numpy as np
import pytest
from PIL import Image

from edgeflow.data.transforms import Preprocess
from edgeflow.errors import DataError
from edgeflow.runtime.inputs import check_class_count, check_labels, prepare_images
from tests.export.helpers import cifar_test

PRE = Preprocess(size=32)


def test_one_hwc_image_is_one_image_not_h_grey_images():
    img = np.random.default_rng(0).integers(0, 256, (105, 80, 3), dtype=np.uint8)
    x = prepare_images(img, PRE)
    assert x.shape == (1, 3, 32, 32)  # was (105, 3, 32, 32): 105 grey 80x3 images
    np.testing.assert_array_equal(x, prepare_images(img[None], PRE))
    rgba = np.concatenate([img, np.full((105, 80, 1), 255, np.uint8)], axis=-1)
    np.testing.assert_array_equal(prepare_images(rgba, PRE), x)
    grey_batch = np.zeros((5, 40, 40), np.uint8)  # (N, H, W) with W > 4 stays a batch of grey
    assert prepare_images(grey_batch, PRE).shape == (5, 3, 32, 32)
    with pytest.raises(DataError, match=r"one image \(H, W, C\).*C = 3 for this bundle"):
        prepare_images(np.zeros((2, 3, 8, 8, 3), np.uint8), PRE)


def test_bool_uint16_and_grey_alpha_arrays_and_pil_images_of_any_mode():
    grey = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))
    want = prepare_images(grey[None], PRE)
    # np.asarray(PIL image) of a 1-bit PNG is bool: it was refused ("expected uint8")
    bits = grey >= 128
    np.testing.assert_array_equal(prepare_images(bits, PRE)[0],
                                  prepare_images((bits * 255).astype(np.uint8)[None], PRE)[0])
    sixteen = grey.astype(np.uint16) * 257
    np.testing.assert_array_equal(prepare_images(sixteen[None], PRE), want)
    la = np.stack([grey, np.full_like(grey, 7)], axis=-1)
    np.testing.assert_array_equal(prepare_images(la, PRE), want)
    pil = [Image.fromarray(grey).convert(m) for m in ("L", "LA", "P", "RGBA", "RGB")]
    pil.append(Image.fromarray(sixteen))  # I;16
    x = prepare_images(pil, PRE)
    for i in range(len(pil)):
        np.testing.assert_allclose(x[i], want[0], atol=1e-5)
    np.testing.assert_array_equal(prepare_images(pil[0], PRE), want)  # one PIL image
    grey_pre = Preprocess(size=32, channels=1, mean=(0.5,), std=(0.5,))  # a greyscale bundle
    want_grey = prepare_images(grey[None], grey_pre)
    for im in (pil[3], la, Image.fromarray(grey).convert("1").convert("L"), sixteen):
        assert prepare_images(im, grey_pre).shape == (1, 1, 32, 32)
    np.testing.assert_allclose(prepare_images(pil[3], grey_pre), want_grey, atol=1e-5)
    with pytest.raises(DataError, match=r"expected uint8 images .*got int32"):
        prepare_images(grey.astype(np.int32)[None], PRE)


def test_one_class_is_refused_by_one_check_that_can_be_relaxed():
    with pytest.raises(DataError, match=r"only one class \('cat'\).*add images of at least one more"):
        check_class_count(["cat"])
    check_class_count(["cat"], min_classes=1)  # open-set rejection will pass this
    with pytest.raises(DataError, match="only one class"):
        check_labels([4, 4, 4], 3)
    classes, ep = check_labels([4, 4, 4], 3, min_classes=1)
    assert classes.tolist() == [4] and ep.tolist() == [0, 0, 0]


def test_session_takes_one_image_and_refuses_a_one_class_support_set(plain_bundle):
    from edgeflow.runtime import Session

    ds = cifar_test()
    idx = np.concatenate([np.nonzero(ds.labels == c)[0][:8] for c in range(3)])
    sx, sy = ds.images[idx], ds.labels[idx]
    with Session(plain_bundle[0]) as s:
        with pytest.raises(DataError, match="only one class"):
            s.adapt(sx[sy == sy[0]], sy[sy == sy[0]])
        task = s.adapt(sx, sy)
        one, scores = s.predict(ds.images[50], task)  # (32, 32, 3): one image
        batch, batch_scores = s.predict(ds.images[50:51], task)
        assert one.shape == (1,) and one[0] == batch[0]
        np.testing.assert_allclose(scores, batch_scores, atol=1e-6)
        pil = Image.fromarray(ds.images[50]).convert("P")  # palette image, decoded by the Session
        assert s.predict(pil, task)[0].shape == (1,)
