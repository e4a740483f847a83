"""The one place image files are opened: header first, a pixel cap, then decoding (issue 17).

A PNG of a few hundred kB can announce 20000×20000 pixels and decode to 1.2 GB (a decompression bomb); a
12000×12000 photo becomes 1.7 GB of float pixels once letterboxed. Pillow's own guard only warns below twice its
limit (179 megapixels) and raises its own error type above it. Here the header is read first and anything above
``MAX_IMAGE_PIXELS`` (an 8K×8K photo) is refused in one sentence before a pixel is decoded, for detection,
evaluation and INT8 calibration alike.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from .errors import MaeDetError

__all__ = ["MAX_IMAGE_PIXELS", "ImageError", "image_size", "pixel_limit", "read_image"]

MAX_IMAGE_PIXELS = 64 * 2**20  # 64 megapixels: 8192×8192


class ImageError(MaeDetError):
    """An image file that is missing, unreadable, empty or too large to decode safely."""


def pixel_limit() -> int:
    """The pixel cap: ours, or PIL's ``Image.MAX_IMAGE_PIXELS`` where an application set it lower."""
    from PIL import Image

    return min(MAX_IMAGE_PIXELS, Image.MAX_IMAGE_PIXELS or MAX_IMAGE_PIXELS)


def _too_large(path: str | os.PathLike[str], what: str, size: str) -> ImageError:
    limit = pixel_limit()
    shown = f"{limit // 2**20} megapixels" if limit % 2**20 == 0 else f"{limit:,} pixels"
    return ImageError(
        f"{what} {str(path)!r} is {size} pixels; the limit is {shown} (it would decompress to gigabytes)."
    )


@contextmanager
def _opened(path: str | os.PathLike[str], what: str) -> Iterator[Any]:
    """The image with only its header read, checked: present, readable, not empty, within the pixel cap."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except FileNotFoundError:
        raise ImageError(f"{what} {str(path)!r} does not exist.") from None
    except Image.DecompressionBombError:
        raise _too_large(path, what, f"over {2 * (Image.MAX_IMAGE_PIXELS or 0):,}") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        raise ImageError(f"{what} {str(path)!r} cannot be read as an image.") from None
    with img:
        width, height = img.size
        if width < 1 or height < 1:
            raise ImageError(f"{what} {str(path)!r} has no pixels ({width}×{height}).")
        if width * height > pixel_limit():
            raise _too_large(path, what, f"{width}×{height}")
        yield img


def image_size(path: str | os.PathLike[str], what: str = "image") -> tuple[int, int]:
    """(height, width) from the header alone; a missing, unreadable or oversized file is one sentence."""
    with _opened(path, what) as img:
        width, height = img.size
    return height, width


def read_image(path: str | os.PathLike[str], what: str = "image") -> np.ndarray:
    """RGB uint8 (H, W, 3), upright per its EXIF orientation (as OpenCV, which mmdetection reads with)."""
    from PIL import Image, ImageOps

    with _opened(path, what) as img:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
        except (OSError, ValueError, SyntaxError):
            raise ImageError(f"{what} {str(path)!r} cannot be read as an image (its data is damaged).") from None
