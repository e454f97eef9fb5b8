"""Image decoding (modes, EXIF, 16-bit, alpha), fit policies and restore, limits."""
import io

import numpy as np
import pytest
from PIL import Image

from dgae.errors import InputError, TooLargeError
from formats.images import decode_image, encode_image, fit_image, restore_size, to_tensor, to_uint8


def png_bytes(img: Image.Image, fmt="PNG", **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, format=fmt, **kw)
    return b.getvalue()


def test_modes_convert_to_rgb():
    rgba = Image.new("RGBA", (4, 3), (10, 20, 30, 0))  # fully transparent -> white background
    assert (decode_image(png_bytes(rgba)) == 255).all()
    gray16 = Image.fromarray(np.full((3, 4), 65535, np.uint16))
    out = decode_image(png_bytes(gray16))
    assert out.shape == (3, 4, 3) and out.dtype == np.uint8 and (out == 255).all()
    la = Image.new("L", (5, 5), 128)
    assert (decode_image(png_bytes(la, "BMP")) == 128).all()
    rgb = Image.new("RGB", (6, 2), (1, 2, 3))
    webp = decode_image(png_bytes(rgb, "WEBP", lossless=True))
    assert webp.shape == (2, 6, 3)


def test_exif_orientation_applied():
    img = Image.new("RGB", (8, 4), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW
    data = png_bytes(img, "JPEG", exif=exif.tobytes())
    assert decode_image(data).shape == (8, 4, 3)


def test_undecodable_and_limits():
    with pytest.raises(InputError, match="cam.png: cannot decode"):
        decode_image(b"garbage", name="cam.png")
    big = png_bytes(Image.new("RGB", (100, 100)))
    with pytest.raises(TooLargeError, match="exceeds"):
        decode_image(big, max_pixels=99 * 100)


@pytest.mark.parametrize("policy", ["pad", "crop", "resize"])
def test_fit_policies_and_restore(policy):
    rgb = np.random.default_rng(0).integers(0, 255, (21, 30, 3), dtype=np.uint8)
    out, info = fit_image(rgb, 8, policy)
    assert out.shape[0] % 8 == 0 and out.shape[1] % 8 == 0
    assert (info.orig_height, info.orig_width) == (21, 30)
    back = restore_size(out, info.to_dict())
    if policy == "pad":
        assert np.array_equal(back, rgb)
    elif policy == "resize":
        assert back.shape == rgb.shape
    else:
        assert back.shape == (16, 24, 3)


def test_fit_error_and_exact_sizes():
    rgb = np.zeros((16, 24, 3), np.uint8)
    assert fit_image(rgb, 8, "error")[0] is rgb
    with pytest.raises(InputError, match="not a multiple"):
        fit_image(np.zeros((17, 24, 3), np.uint8), 8, "error")
    with pytest.raises(InputError, match="fit must be"):
        fit_image(rgb, 8, "stretch")


def test_tensor_round_trip_and_png():
    rgb = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    t = to_tensor(list(rgb))
    assert t.shape == (2, 3, 8, 8) and t.min() >= -1 and t.max() <= 1
    assert np.array_equal(to_uint8(t), rgb)
    png = encode_image(rgb[0])
    assert np.array_equal(decode_image(png), rgb[0])
