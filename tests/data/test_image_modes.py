"""PIL modes decode to what the pixels mean, and empty class folders are named, not dropped."""

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from edgeflow.data import load_image_folder
from edgeflow.data.imagefolder import class_image_files, decode_image
from edgeflow.errors import DataError


def _encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_16_bit_greyscale_is_scaled_not_clipped():
    ramp = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    data = _encode(Image.fromarray(ramp))
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    grey = decode_image(data, name="depth.png", mode="L")[..., 0]
    # PIL's own convert clipped every value above 255: 99.6% of this ramp came out white
    np.testing.assert_array_equal(grey, np.rint(ramp / 257.0).astype(np.uint8))
    rgb = decode_image(data, name="depth.png", mode="RGB")
    assert rgb.shape == (64, 64, 3) and (rgb[..., 0] == grey).all()


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGBA", "RGB"])
def test_every_mode_decodes_to_rgb_and_grey(mode):
    base = Image.fromarray(np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1)))
    img = base.convert(mode)
    for want, ch in (("RGB", 3), ("L", 1)):
        arr = decode_image(_encode(img), name=f"x.{mode}.png", mode=want)
        assert arr.dtype == np.uint8 and arr.shape == (32, 32, ch)
    if mode == "1":  # 1-bit: black or white, never 0/1
        assert set(np.unique(decode_image(_encode(img), name="b.png", mode="L"))) <= {0, 255}


def test_an_empty_class_folder_is_an_error_that_names_it(tmp_path):
    for c in ("cat", "dog"):
        (tmp_path / "s" / c).mkdir(parents=True)
        (tmp_path / "s" / c / "0.png").write_bytes(_encode(Image.new("RGB", (8, 8))))
    (tmp_path / "s" / "bird").mkdir()
    with pytest.raises(DataError, match=r"folder\(s\) with no images: bird"):
        load_image_folder(tmp_path / "s", cache=False)
    with pytest.raises(DataError, match="bird"):
        class_image_files(tmp_path / "s")
    (tmp_path / "s" / "bird" / ".DS_Store").write_bytes(b"x")  # hidden files are not images
    with pytest.raises(DataError, match="bird"):
        load_image_folder(tmp_path / "s", cache=False)
    z = tmp_path / "s.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("cat/0.png", _encode(Image.new("RGB", (8, 8))))
        zf.writestr("dog/0.png", _encode(Image.new("RGB", (8, 8))))
        zf.writestr("bird/", b"")
    with pytest.raises(DataError, match="bird"):
        load_image_folder(z, cache=False)
