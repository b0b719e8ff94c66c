"""Image input: a user's PNG/JPEG photograph made into a program's observation.

:func:`load_image` reads the file (Pillow, which matplotlib depends on), converts it to the
program's channels (BT.601 luma for grayscale), crops a square (the centre, or a given box) and
resizes it with antialiasing to the program's resolution. Every choice it makes is recorded in
the returned report, which the command line prints.

>>> from probgraphics.imageio import load_image, sample_face_photo, SAMPLE_PHOTO_FACE_BOX
>>> loaded = load_image(sample_face_photo(), resolution=64, face_box=SAMPLE_PHOTO_FACE_BOX)
>>> tuple(loaded.image.shape), loaded.image.dtype
((1, 64, 64), torch.float32)
>>> loaded.report["crop_box"]
(40, 92, 340, 340)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "LoadedImage",
    "load_image",
    "read_image_array",
    "sample_face_photo",
    "SAMPLE_PHOTO_NAME",
    "SAMPLE_PHOTO_FACE_BOX",
    "LUMA_WEIGHTS",
    "MIN_IMAGE_SIDE",
    "MAX_IMAGE_SIDE",
    "MAX_IMAGE_PIXELS",
    "MAX_RESOLUTION",
]

#: ITU-R BT.601 luma weights (R, G, B), as the face program uses for its grayscale albedo.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
#: Images (and crops) with a side shorter than this hold too little to infer a scene from.
MIN_IMAGE_SIDE = 8
#: Images with a side longer than this, or more than :data:`MAX_IMAGE_PIXELS` pixels, are
#: refused before they are decoded (they are not photographs one infers a scene from, and a
#: crafted file could otherwise claim gigapixels).
MAX_IMAGE_SIDE = 30_000
MAX_IMAGE_PIXELS = 200_000_000
#: The largest output resolution :func:`load_image` makes.
MAX_RESOLUTION = 4096

#: A face photograph that ships with matplotlib (its sample data): Grace Hopper, 512 x 600 RGB.
SAMPLE_PHOTO_NAME = "grace_hopper.jpg"
#: ``(top, left, height, width)`` of a square around the head in :data:`SAMPLE_PHOTO_NAME`,
#: chosen by eye so that the head (cap to chin, about 220 px wide) fills about two thirds of
#: the square, as the face program's renders do at its default camera scale.
SAMPLE_PHOTO_FACE_BOX = (40, 92, 340, 340)

_CROPS = ("center", "none")


@dataclass(frozen=True)
class LoadedImage:
    """An image ready to be a program's observation.

    Attributes:
        image: ``(C, R, R)`` float32 in [0, 1], CPU, contiguous.
        report: what was read and done: ``path``, ``format``, ``mode``, ``original_size``
            (height, width, upright), ``conversions`` (list of str), ``crop`` (``"center"``,
            ``"none"`` or ``"box"``), ``crop_box`` (top, left, height, width), ``scale``
            (output pixels per source pixel, (vertical, horizontal)), ``resize`` (method),
            ``resolution``, ``channels``, ``value_range`` (min, max of ``image``).
    """

    image: torch.Tensor
    report: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """The report as a few human-readable lines (what the command line prints)."""
        r = self.report
        height, width = r["original_size"]
        top, left, box_height, box_width = r["crop_box"]
        scale_y, scale_x = r["scale"]
        scale = f"{scale_y:.3g}" if scale_y == scale_x else f"{scale_y:.3g} x {scale_x:.3g}"
        crop = {
            "center": "centre square",
            "none": "none (the whole image, stretched to a square)",
            "box": "the given box",
        }[r["crop"]]
        low, high = r["value_range"]
        lines = [
            f"image: {r['path']} ({r['format']}, mode {r['mode']}, {width}x{height} px)",
            f"  conversions: {', '.join(r['conversions']) or 'none'}",
            f"  crop: {crop}: top {top}, left {left}, {box_width}x{box_height} px",
            f"  resize: {r['resize']} to {r['resolution']}x{r['resolution']} px (scale {scale}), "
            f"{r['channels']} channel(s), values in [{low:.3f}, {high:.3f}]",
        ]
        return "\n".join(lines)


def sample_face_photo() -> Path:
    """The path of a real face photograph shipped in an installed package.

    It is matplotlib's sample image ``grace_hopper.jpg`` (512 x 600 RGB JPEG); frame the face
    with :data:`SAMPLE_PHOTO_FACE_BOX`.

    Raises:
        FileNotFoundError: this matplotlib installation has no sample data (some distributions
            strip it); pass a photo of your own instead.
    """
    import matplotlib

    candidates = [Path(matplotlib.get_data_path()) / "sample_data" / SAMPLE_PHOTO_NAME]
    try:
        from matplotlib import cbook

        found = cbook.get_sample_data(SAMPLE_PHOTO_NAME, asfileobj=False)
        candidates.insert(0, Path(found))
    except (OSError, ValueError, TypeError):
        pass  # the data folder probe below gives the error message
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"matplotlib's sample photo {SAMPLE_PHOTO_NAME!r} is not installed (looked in "
        f"{[str(p) for p in candidates]}); this matplotlib has no sample data. Give the path of "
        "a face photograph instead."
    )


def _check_path(path: object) -> Path:
    if not isinstance(path, str | os.PathLike):
        raise TypeError(
            f"path must be a str or os.PathLike naming an image file, got {type(path).__name__}."
        )
    path = Path(os.fspath(path))
    if not path.exists():
        raise FileNotFoundError(f"no such image file: {str(path)!r}; check the path.")
    if path.is_dir():
        raise ValueError(f"{str(path)!r} is a folder; expected an image file (PNG or JPEG).")
    return path


def read_image_array(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """Read an image file into floats, before any crop or resize.

    Args:
        path: a PNG or JPEG file (any raster format Pillow reads works; those two are tested).

    Returns:
        ``(pixels, info)``: ``pixels`` a float32 numpy array ``(H, W, 1)`` (gray) or ``(H, W, 3)``
        (colour) in [0, 1], alpha dropped, EXIF orientation applied; ``info`` the keys
        ``path``, ``format``, ``mode``, ``original_size`` (height, width as displayed) and
        ``conversions`` (list of str) of :attr:`LoadedImage.report`.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not an image Pillow can read, a corrupt or truncated one, an image smaller
            than :data:`MIN_IMAGE_SIDE` or larger than :data:`MAX_IMAGE_SIDE` /
            :data:`MAX_IMAGE_PIXELS`, or float pixels outside [0, 1].
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = _check_path(path)
    conversions: list[str] = []
    try:
        with Image.open(path) as opened:
            image_format = opened.format or "unknown"
            mode = opened.mode
            width, height = opened.size
            # The header gives the size, so absurd images are refused before decoding.
            _check_size(path, height, width)
            picture = opened
            if _has_orientation(opened):
                # Phones store photos sideways with an EXIF tag saying how to turn them; the
                # crop box refers to the image as it is displayed.
                picture = ImageOps.exif_transpose(opened)
                conversions.append("turned upright by its EXIF orientation")
                width, height = picture.size
            picture.load()
            pixels = _to_float(picture, conversions)
    except UnidentifiedImageError:
        raise ValueError(
            f"{str(path)!r} is not an image file Pillow can read; expected a PNG or JPEG image."
        ) from None
    except Image.DecompressionBombError as error:
        raise ValueError(
            f"{str(path)!r} is too large to load ({error}); give an image of at most "
            f"{MAX_IMAGE_PIXELS} pixels."
        ) from None
    except PermissionError:
        raise ValueError(
            f"cannot read {str(path)!r}: permission denied; check the file's permissions."
        ) from None
    except (OSError, SyntaxError) as error:
        # Pillow raises OSError for truncated or corrupt data (and SyntaxError for some headers).
        raise ValueError(
            f"{str(path)!r} could not be decoded as an image ({error}); expected an intact PNG or "
            "JPEG file."
        ) from None
    info = {
        "path": str(path),
        "format": image_format,
        "mode": mode,
        "original_size": (height, width),
        "conversions": conversions,
    }
    return pixels, info


def _has_orientation(picture: Any) -> bool:
    try:
        return int(picture.getexif().get(0x0112, 1)) != 1
    except Exception:  # unreadable EXIF counts as none
        return False


def _check_size(path: Path, height: int, width: int) -> None:
    if min(height, width) < MIN_IMAGE_SIDE:
        raise ValueError(
            f"{str(path)!r} is {width}x{height} px, too small to infer a scene from; expected at "
            f"least {MIN_IMAGE_SIDE} px on each side."
        )
    if max(height, width) > MAX_IMAGE_SIDE or height * width > MAX_IMAGE_PIXELS:
        raise ValueError(
            f"{str(path)!r} is {width}x{height} px, larger than this loader accepts (at most "
            f"{MAX_IMAGE_SIDE} px a side and {MAX_IMAGE_PIXELS} pixels); downscale it first."
        )


def _to_float(picture: Any, conversions: list[str]) -> np.ndarray:
    """Pillow image -> float32 ``(H, W, 1 or 3)`` in [0, 1], alpha dropped."""
    mode = picture.mode
    if mode == "1":
        picture = picture.convert("L")
        conversions.append("1-bit to 8-bit gray")
        mode = "L"
    elif mode == "P":
        has_alpha = "transparency" in picture.info or picture.palette.mode == "RGBA"
        picture = picture.convert("RGBA" if has_alpha else "RGB")
        conversions.append(f"palette to {picture.mode}")
        mode = picture.mode
    elif mode == "PA":
        picture = picture.convert("RGBA")
        conversions.append("palette to RGBA")
        mode = "RGBA"
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        picture = picture.convert("RGB")
        conversions.append(f"{mode} to RGB")
        mode = "RGB"
    elif mode == "La":  # gray with premultiplied alpha
        picture = picture.convert("LA")
        mode = "LA"
    elif mode == "RGBa":
        picture = picture.convert("RGBA")
        mode = "RGBA"

    array = np.asarray(picture)
    if mode in ("L", "LA", "RGB", "RGBA", "RGBX"):
        if array.dtype != np.uint8:
            raise ValueError(f"unexpected pixel type {array.dtype} for mode {mode}")
        pixels = array.astype(np.float32) / 255.0
    elif mode.startswith("I;16") or mode == "I":
        # 16-bit PNGs: Pillow gives mode I;16 (or I, 32-bit ints holding the 16-bit values).
        array = array.astype(np.float64)
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise ValueError(
                f"integer pixels outside the 16-bit range [0, 65535] (got "
                f"[{array.min():.0f}, {array.max():.0f}]); expected an 8- or 16-bit image."
            )
        pixels = (array / 65535.0).astype(np.float32)
        conversions.append("16-bit to [0, 1]")
    elif mode == "F":
        pixels = array.astype(np.float32)
        if not np.isfinite(pixels).all():
            raise ValueError("the image has NaN/inf pixels; expected finite values in [0, 1].")
        low, high = float(pixels.min()), float(pixels.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"float pixels must lie in [0, 1], got [{low:.3g}, {high:.3g}]; rescale the image "
                "or save it as 8-bit."
            )
    else:
        raise ValueError(f"unsupported image mode {mode!r}; save the image as 8-bit RGB or gray.")

    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if mode == "RGBX":  # padding byte, not alpha
        pixels = pixels[:, :, :3]
    elif pixels.shape[-1] in (2, 4):
        pixels = pixels[:, :, :-1]
        conversions.append("dropped alpha")
    return np.ascontiguousarray(pixels, dtype=np.float32)


def _check_box(box: object, height: int, width: int) -> tuple[int, int, int, int]:
    try:
        values = tuple(box)  # type: ignore[arg-type]
    except TypeError:
        values = ()
    if len(values) != 4 or not all(
        isinstance(v, int | np.integer) and not isinstance(v, bool) for v in values
    ):
        raise ValueError(
            f"face_box must be four ints (top, left, height, width) in pixels, got {box!r}."
        )
    top, left, box_height, box_width = (int(v) for v in values)
    if box_height < MIN_IMAGE_SIDE or box_width < MIN_IMAGE_SIDE:
        raise ValueError(
            f"face_box {values} is {box_width}x{box_height} px; a crop needs at least "
            f"{MIN_IMAGE_SIDE} px on each side."
        )
    if top < 0 or left < 0 or top + box_height > height or left + box_width > width:
        raise ValueError(
            f"face_box (top, left, height, width) = {values} reaches outside the image, which is "
            f"{width}x{height} px (rows 0..{height - 1}, columns 0..{width - 1}); give a box "
            "inside it."
        )
    return top, left, box_height, box_width


def _resize(pixels: torch.Tensor, resolution: int) -> tuple[torch.Tensor, str]:
    """``(C, h, w)`` -> ``(C, R, R)``: area averaging to shrink (antialiased: each output pixel
    is the mean of the source pixels it covers), bilinear to enlarge."""
    _, h, w = pixels.shape
    if (h, w) == (resolution, resolution):
        return pixels, "none (already at the resolution)"
    if h >= resolution and w >= resolution:
        method = "area"
        out = torch.nn.functional.interpolate(
            pixels[None], size=(resolution, resolution), mode="area"
        )
    elif h <= resolution and w <= resolution:
        method = "bilinear (enlarged)"
        out = torch.nn.functional.interpolate(
            pixels[None], size=(resolution, resolution), mode="bilinear", align_corners=False
        )
    else:  # shrinks one way, enlarges the other (crop="none" on a long image)
        method = "bilinear with antialiasing"
        out = torch.nn.functional.interpolate(
            pixels[None],
            size=(resolution, resolution),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
    return out[0], method


def load_image(
    path: str | os.PathLike,
    *,
    resolution: int,
    channels: int = 1,
    crop: str = "center",
    face_box: tuple[int, int, int, int] | None = None,
) -> LoadedImage:
    """Read a PNG/JPEG image and make it a ``(channels, resolution, resolution)`` observation.

    Steps, each recorded in the report: read (8-bit, 16-bit or float pixels to [0, 1]; palette
    and other modes to RGB; alpha dropped; EXIF orientation applied); convert channels
    (``channels=1``: BT.601 luma ``0.299 R + 0.587 G + 0.114 B``; ``channels=3`` from gray:
    the gray copied to R, G, B); crop (``face_box`` if given, else the largest centred square
    for ``crop="center"``, or nothing for ``crop="none"``, which stretches a non-square image);
    resize to ``resolution`` (area averaging when shrinking, bilinear when enlarging).

    Args:
        path: the image file.
        resolution: output height and width in pixels, an int in [8, 4096] (the program's
            ``resolution``).
        channels: 1 (grayscale) or 3 (RGB), the program's ``channels``.
        crop: ``"center"`` (default) or ``"none"``; ignored when ``face_box`` is given.
        face_box: ``(top, left, height, width)`` of the region to keep, in pixels of the image
            as displayed (after EXIF orientation). A non-square box is stretched to a square.

    Returns:
        :class:`LoadedImage`: ``image`` ``(channels, resolution, resolution)`` float32 CPU in
        [0, 1], and ``report``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a readable image, too small / too large, a bad box, bad arguments.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int | np.integer):
        raise TypeError(f"resolution must be an int (pixels), got {resolution!r}; e.g. 64.")
    resolution = int(resolution)
    if not MIN_IMAGE_SIDE <= resolution <= MAX_RESOLUTION:
        raise ValueError(
            f"resolution must be in [{MIN_IMAGE_SIDE}, {MAX_RESOLUTION}] pixels, got {resolution}; "
            "use the program's resolution (e.g. 64)."
        )
    if channels not in (1, 3) or isinstance(channels, bool):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}.")
    if crop not in _CROPS:
        raise ValueError(f"crop must be one of {_CROPS}, got {crop!r}; or give face_box=...")

    pixels, report = read_image_array(path)
    conversions = report["conversions"]
    height, width, source_channels = pixels.shape

    tensor = torch.from_numpy(pixels).permute(2, 0, 1)  # (C_src, H, W)
    if channels == 1 and source_channels == 3:
        luma = torch.tensor(LUMA_WEIGHTS, dtype=torch.float32)
        tensor = torch.einsum("chw,c->hw", tensor, luma)[None]
        conversions.append("RGB to gray (BT.601 luma 0.299 R + 0.587 G + 0.114 B)")
    elif channels == 3 and source_channels == 1:
        tensor = tensor.expand(3, height, width)
        conversions.append("gray copied to R, G, B")

    if face_box is not None:
        top, left, box_height, box_width = _check_box(face_box, height, width)
        crop_kind = "box"
    elif crop == "center":
        side = min(height, width)
        top, left, box_height, box_width = (height - side) // 2, (width - side) // 2, side, side
        crop_kind = "center"
    else:
        top, left, box_height, box_width = 0, 0, height, width
        crop_kind = "none"
    tensor = tensor[:, top : top + box_height, left : left + box_width]
    resized, method = _resize(tensor.contiguous(), resolution)
    image = resized.clamp(0.0, 1.0).to(torch.float32).contiguous()

    report.update(
        crop=crop_kind,
        crop_box=(top, left, box_height, box_width),
        scale=(resolution / box_height, resolution / box_width),
        resize=method,
        resolution=resolution,
        channels=channels,
        value_range=(float(image.min()), float(image.max())),
    )
    return LoadedImage(image=image, report=report)
