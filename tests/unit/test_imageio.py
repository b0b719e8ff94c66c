"""Image input: reading PNG/JPEG files, grayscale conversion, crop and resize, the report, errors,
and the sample face photograph."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from probgraphics.imageio import (
    LUMA_WEIGHTS,
    SAMPLE_PHOTO_FACE_BOX,
    LoadedImage,
    load_image,
    read_image_array,
    sample_face_photo,
)


def _save(tmp_path, array: np.ndarray, name: str, **kwargs) -> str:
    path = tmp_path / name
    Image.fromarray(array).save(path, **kwargs)
    return str(path)


def _luma(rgb) -> float:
    return sum(w * c for w, c in zip(LUMA_WEIGHTS, rgb))


def _block_mean(image: torch.Tensor, factor: int) -> torch.Tensor:
    """The obvious reference for integer-factor area downscaling: mean of each block."""
    c, h, w = image.shape
    return image.reshape(c, h // factor, factor, w // factor, factor).mean(dim=(2, 4))


# ----------------------------------------------------------------------------- pixel formats


def test_uint8_rgb_png_becomes_bt601_luma(tmp_path):
    rgb = (200, 100, 30)
    array = np.empty((16, 16, 3), np.uint8)
    array[...] = rgb
    loaded = load_image(_save(tmp_path, array, "rgb.png"), resolution=8)
    assert isinstance(loaded, LoadedImage)
    assert loaded.image.shape == (1, 8, 8) and loaded.image.dtype == torch.float32
    expected = _luma(np.array(rgb) / 255.0)
    torch.testing.assert_close(loaded.image, torch.full((1, 8, 8), expected), atol=1e-6, rtol=0)
    assert any("BT.601" in step for step in loaded.report["conversions"])
    assert loaded.report["mode"] == "RGB" and loaded.report["format"] == "PNG"


def test_rgb_pixels_each_get_their_own_luma(tmp_path):
    generator = np.random.default_rng(0)
    array = generator.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    loaded = load_image(_save(tmp_path, array, "noise.png"), resolution=8)
    expected = (array.astype(np.float64) / 255.0) @ np.array(LUMA_WEIGHTS)
    np.testing.assert_allclose(loaded.image[0].numpy(), expected, atol=1e-6)
    assert loaded.report["resize"].startswith("none")


def test_rgba_png_drops_alpha(tmp_path):
    array = np.zeros((8, 8, 4), np.uint8)
    array[..., :3] = (10, 200, 90)
    array[..., 3] = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4  # alpha must not matter
    loaded = load_image(_save(tmp_path, array, "rgba.png"), resolution=8)
    expected = _luma(np.array((10, 200, 90)) / 255.0)
    torch.testing.assert_close(loaded.image, torch.full((1, 8, 8), expected), atol=1e-6, rtol=0)
    assert "dropped alpha" in loaded.report["conversions"]
    assert loaded.report["mode"] == "RGBA"


def test_grayscale_png_keeps_its_values(tmp_path):
    array = (np.arange(64, dtype=np.uint8).reshape(8, 8) * 3).astype(np.uint8)
    loaded = load_image(_save(tmp_path, array, "gray.png"), resolution=8)
    np.testing.assert_allclose(loaded.image[0].numpy(), array / 255.0, atol=1e-7)
    assert loaded.report["mode"] == "L" and loaded.report["conversions"] == []


def test_grayscale_to_three_channels_copies_the_gray(tmp_path):
    array = (np.arange(64, dtype=np.uint8).reshape(8, 8) * 2).astype(np.uint8)
    loaded = load_image(_save(tmp_path, array, "gray.png"), resolution=8, channels=3)
    assert loaded.image.shape == (3, 8, 8)
    for channel in range(3):
        np.testing.assert_allclose(loaded.image[channel].numpy(), array / 255.0, atol=1e-7)


def test_rgb_kept_as_rgb_for_three_channels(tmp_path):
    array = np.zeros((8, 8, 3), np.uint8)
    array[..., 0], array[..., 1], array[..., 2] = 255, 128, 0
    loaded = load_image(_save(tmp_path, array, "rgb.png"), resolution=8, channels=3)
    torch.testing.assert_close(
        loaded.image[:, 0, 0], torch.tensor([1.0, 128 / 255, 0.0]), atol=1e-6, rtol=0
    )


def test_sixteen_bit_png_is_scaled_by_65535(tmp_path):
    array = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(array).save(path)  # mode I;16
    loaded = load_image(path, resolution=8)
    np.testing.assert_allclose(loaded.image[0].numpy(), array / 65535.0, atol=1e-6)
    assert "16-bit to [0, 1]" in loaded.report["conversions"]


def test_float_image_written_by_matplotlib_round_trips(tmp_path):
    import matplotlib.image

    generator = np.random.default_rng(1)
    array = generator.random((8, 8, 3)).astype(np.float32)
    path = tmp_path / "float.png"
    matplotlib.image.imsave(path, array)  # floats in [0, 1] -> an 8-bit RGBA PNG
    loaded = load_image(path, resolution=8, channels=3)
    # matplotlib quantizes to 8 bits by truncation: within one level below the float.
    np.testing.assert_allclose(loaded.image.permute(1, 2, 0).numpy(), array, atol=1 / 255 + 1e-6)


def test_float_pixels_are_used_as_they_are_and_checked(tmp_path):
    array = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    path = tmp_path / "float.tiff"
    Image.fromarray(array, mode="F").save(path)
    loaded = load_image(path, resolution=8)
    np.testing.assert_allclose(loaded.image[0].numpy(), array, atol=1e-7)
    bad = tmp_path / "bad.tiff"
    Image.fromarray(array * 255, mode="F").save(bad)
    with pytest.raises(ValueError, match=r"float pixels must lie in \[0, 1\]"):
        load_image(bad, resolution=8)


def test_jpeg_is_read(tmp_path):
    rgb = (60, 120, 180)
    array = np.empty((24, 24, 3), np.uint8)
    array[...] = rgb
    loaded = load_image(_save(tmp_path, array, "flat.jpg", quality=95), resolution=8)
    assert loaded.report["format"] == "JPEG"
    # JPEG is lossy: a flat colour comes back within a couple of levels.
    expected = _luma(np.array(rgb) / 255.0)
    assert float((loaded.image - expected).abs().max()) < 3 / 255


def test_exif_orientation_turns_the_image_upright(tmp_path):
    # Stored 8 rows x 16 columns, left half black; orientation 6 means "turn 90 degrees
    # clockwise to display", which puts the left half on top.
    array = np.zeros((8, 16), np.uint8)
    array[:, 8:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "sideways.png"
    Image.fromarray(array).save(path, exif=exif)
    pixels, info = read_image_array(path)
    assert pixels.shape == (16, 8, 1) and info["original_size"] == (16, 8)
    assert np.all(pixels[:8] == 0.0) and np.all(pixels[8:] == 1.0)
    assert any("EXIF" in step for step in info["conversions"])


# ------------------------------------------------------------------------------ crop and resize


def test_constant_image_stays_constant_through_crop_and_resize(tmp_path):
    array = np.full((37, 53), 77, np.uint8)  # odd sizes: non-integer scale factors
    for resolution in (8, 16, 32, 64):  # shrinking and enlarging
        loaded = load_image(_save(tmp_path, array, "flat.png"), resolution=resolution)
        torch.testing.assert_close(
            loaded.image, torch.full((1, resolution, resolution), 77 / 255), atol=1e-6, rtol=0
        )


def test_centre_crop_of_a_left_right_split_keeps_its_halves(tmp_path):
    # 40 x 80: left half 0.2, right half 0.8. The centre square is columns 20..59, whose left
    # half is dark and right half bright; area resize by 5 keeps the halves exact.
    array = np.empty((40, 80), np.uint8)
    array[:, :40], array[:, 40:] = 51, 204
    loaded = load_image(_save(tmp_path, array, "split.png"), resolution=8)
    assert loaded.report["crop"] == "center"
    assert loaded.report["crop_box"] == (0, 20, 40, 40)
    assert loaded.report["scale"] == (0.2, 0.2)
    assert loaded.report["resize"] == "area"
    torch.testing.assert_close(
        loaded.image[:, :, :4], torch.full((1, 8, 4), 0.2), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        loaded.image[:, :, 4:], torch.full((1, 8, 4), 0.8), atol=1e-6, rtol=0
    )


def test_area_resize_matches_block_means(tmp_path):
    generator = np.random.default_rng(2)
    array = generator.integers(0, 256, size=(48, 48), dtype=np.uint8)
    loaded = load_image(_save(tmp_path, array, "noise.png"), resolution=12)
    reference = _block_mean(torch.from_numpy(array / 255.0).float()[None], 4)
    torch.testing.assert_close(loaded.image, reference, atol=1e-6, rtol=0)


def test_no_crop_stretches_the_whole_image(tmp_path):
    array = np.empty((40, 80), np.uint8)
    array[:, :40], array[:, 40:] = 51, 204
    loaded = load_image(_save(tmp_path, array, "split.png"), resolution=8, crop="none")
    assert loaded.report["crop"] == "none"
    assert loaded.report["crop_box"] == (0, 0, 40, 80)
    assert loaded.report["scale"] == (0.2, 0.1)
    torch.testing.assert_close(
        loaded.image[:, :, :4], torch.full((1, 8, 4), 0.2), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        loaded.image[:, :, 4:], torch.full((1, 8, 4), 0.8), atol=1e-6, rtol=0
    )


def test_face_box_selects_that_region(tmp_path):
    array = np.zeros((30, 40), np.uint8)
    array[5:21, 10:26] = 255  # a 16 x 16 bright square at (top 5, left 10)
    path = _save(tmp_path, array, "box.png")
    loaded = load_image(path, resolution=8, face_box=(5, 10, 16, 16))
    assert loaded.report["crop"] == "box" and loaded.report["crop_box"] == (5, 10, 16, 16)
    torch.testing.assert_close(loaded.image, torch.ones(1, 8, 8), atol=1e-6, rtol=0)
    # One pixel further the box takes in a dark column on the left: area averaging halves it.
    shifted = load_image(path, resolution=8, face_box=(5, 9, 16, 16))
    torch.testing.assert_close(shifted.image[0, :, 0], torch.full((8,), 0.5), atol=1e-6, rtol=0)


def test_small_crop_is_enlarged_bilinearly(tmp_path):
    array = np.full((10, 10), 128, np.uint8)
    loaded = load_image(_save(tmp_path, array, "small.png"), resolution=32)
    assert loaded.report["resize"] == "bilinear (enlarged)"
    assert loaded.report["scale"] == (3.2, 3.2)
    torch.testing.assert_close(loaded.image, torch.full((1, 32, 32), 128 / 255), atol=1e-6, rtol=0)


def test_report_and_description(tmp_path):
    array = np.full((20, 30, 3), 100, np.uint8)
    path = _save(tmp_path, array, "photo.png")
    loaded = load_image(path, resolution=16)
    report = loaded.report
    assert report["path"] == path
    assert report["original_size"] == (20, 30)
    assert report["resolution"] == 16 and report["channels"] == 1
    low, high = report["value_range"]
    assert low == pytest.approx(100 / 255, abs=1e-6) and high == pytest.approx(100 / 255, abs=1e-6)
    text = loaded.describe()
    for fragment in (
        "photo.png",
        "PNG",
        "30x20 px",
        "BT.601",
        "centre square",
        "top 0, left 5",
        "20x20 px",
        "area to 16x16 px",
        "scale 0.8",
    ):
        assert fragment in text, fragment


# ------------------------------------------------------------------------------------- errors


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "face.png"
    with pytest.raises(FileNotFoundError, match="face.png"):
        load_image(missing, resolution=8)


def test_folder_text_file_and_truncated_file_are_refused(tmp_path):
    with pytest.raises(ValueError, match="is a folder"):
        load_image(tmp_path, resolution=8)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="expected a PNG or JPEG"):
        load_image(text, resolution=8)
    whole = tmp_path / "whole.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (64, 64), np.uint8)).save(whole)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(whole.read_bytes()[:200])
    with pytest.raises(ValueError, match="could not be decoded"):
        load_image(truncated, resolution=8)


def test_too_small_image_is_refused(tmp_path):
    path = _save(tmp_path, np.zeros((5, 40), np.uint8), "strip.png")
    with pytest.raises(ValueError, match=r"40x5 px, too small.*at least 8 px"):
        load_image(path, resolution=8)


def _png_claiming_size(path, width: int, height: int) -> None:
    """A PNG whose header claims ``width x height`` but holds one row of data: the size check
    must refuse it from the header, before decoding anything."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\x00" + b"\x00" * width)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


def test_absurd_size_is_refused_before_decoding(tmp_path):
    path = tmp_path / "huge.png"
    _png_claiming_size(path, 100_000, 9)
    with pytest.raises(ValueError, match="larger than this loader accepts"):
        load_image(path, resolution=8)


def test_bad_arguments(tmp_path):
    path = _save(tmp_path, np.zeros((16, 16), np.uint8), "ok.png")
    with pytest.raises(ValueError, match="resolution must be in"):
        load_image(path, resolution=4)
    with pytest.raises(TypeError, match="resolution must be an int"):
        load_image(path, resolution=16.0)
    with pytest.raises(ValueError, match="channels must be 1"):
        load_image(path, resolution=8, channels=2)
    with pytest.raises(ValueError, match="crop must be one of"):
        load_image(path, resolution=8, crop="left")
    with pytest.raises(ValueError, match="four ints"):
        load_image(path, resolution=8, face_box=(0, 0, 8))
    with pytest.raises(ValueError, match="reaches outside the image"):
        load_image(path, resolution=8, face_box=(4, 4, 16, 16))
    with pytest.raises(ValueError, match="at least 8 px"):
        load_image(path, resolution=8, face_box=(0, 0, 4, 4))
    with pytest.raises(TypeError, match="path must be"):
        load_image(3, resolution=8)


# ------------------------------------------------------------------------------- sample photo


def test_sample_face_photo_loads_framed_on_the_face():
    path = sample_face_photo()
    assert path.is_file() and path.name == "grace_hopper.jpg"
    loaded = load_image(path, resolution=64, face_box=SAMPLE_PHOTO_FACE_BOX)
    assert loaded.image.shape == (1, 64, 64)
    assert 0.0 <= float(loaded.image.min()) and float(loaded.image.max()) <= 1.0
    height, width = loaded.report["original_size"]
    top, left, box_height, box_width = SAMPLE_PHOTO_FACE_BOX
    assert box_height == box_width and top + box_height <= height and left + box_width <= width
    # In the box the face (skin) fills the middle: it is brighter than the dark band of the
    # cap above it and the dark uniform below it.
    face = loaded.image[0, 24:44, 20:44].mean()
    assert face > loaded.image[0, 12:16, 16:44].mean() + 0.2
    assert face > loaded.image[0, 58:64, 0:16].mean() + 0.2


def test_sample_face_photo_absent_fails_clearly(monkeypatch, tmp_path):
    import matplotlib
    import matplotlib.cbook

    def no_sample_data(*args, **kwargs):
        raise OSError("no sample data")

    monkeypatch.setattr(matplotlib, "get_data_path", lambda: str(tmp_path))
    monkeypatch.setattr(matplotlib.cbook, "get_sample_data", no_sample_data)
    with pytest.raises(FileNotFoundError, match="grace_hopper.jpg.*photograph"):
        sample_face_photo()
