"""Reading images from disk: EXIF orientation applied, always 3-channel RGB."""
from __future__ import annotations

import os

from PIL import Image, ImageOps, UnidentifiedImageError


def read_image(path: str, image_id: int | str | None = None) -> Image.Image:
    """Read the image at `path` as an upright RGB PIL image.

    The EXIF orientation tag (phone photos) is applied, so the returned pixels are as a viewer
    shows them; grayscale, palette, CMYK and RGBA images are converted to RGB (alpha dropped).
    Raises FileNotFoundError or RuntimeError naming the file and `image_id` when the file is
    missing or cannot be decoded.
    """
    where = f"image {path!r}" + ("" if image_id is None else f" (image id {image_id})")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{where} does not exist")
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode != "RGB":
                # RGBA/LA: drop alpha; L/P/CMYK/I: convert to three channels.
                img = img.convert("RGB")
            img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise RuntimeError(f"cannot decode {where}: {err}") from err
    return img
