"""Reading images from disk: always 3-channel 8-bit RGB, EXIF orientation handled, errors that
name the file and the image id.

Conversions: grayscale, palette, CMYK and RGBA/LA images become RGB (alpha dropped, not
composited); 16-bit grayscale ("I;16", "I;16B", "I") is scaled to 8 bits by v * 255 / 65535,
rounded (PIL's own convert("RGB") would clip every value above 255 to white).

EXIF orientation (phone photos store the pixels sideways and a tag saying how to turn them): the
image is returned upright, as viewers show it, and annotations are taken in that frame. When the
caller knows the annotation's image size (`expected_size`, the json's height and width) and it
matches the stored, un-rotated pixels but not the upright ones (orientations 5-8 swap the sides),
the annotations were made on the stored pixels: the image is then returned as stored, so that
boxes and pixels agree. A size that matches neither frame is an ImageSizeError.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from drdet.utils.errors import UserInputError

EXIF_ORIENTATION = 0x0112
# Orientations whose upright image has width and height swapped (rotations by 90 degrees).
_SWAPS_SIDES = (5, 6, 7, 8)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class ImageReadError(UserInputError, RuntimeError):
    """An image that cannot be used: unreadable, undecodable or not of the annotated size.

    Attributes: path, image_id (None when unknown) and reason (the message without the file)."""

    def __init__(self, path: str, image_id: int | str | None, reason: str):
        self.path, self.image_id, self.reason = path, image_id, reason
        super().__init__(f"{describe(path, image_id)}: {reason}")

    def __reduce__(self):
        return type(self), (self.path, self.image_id, self.reason)


class MissingImageError(ImageReadError, FileNotFoundError):
    """The image file does not exist."""


class ImageSizeError(ImageReadError):
    """The decoded image's size matches neither the annotation's size nor its EXIF-rotated one."""


def describe(path: str, image_id: int | str | None) -> str:
    """ "image '/data/x.jpg' (image id 12)": how errors and warnings name an image."""
    return f"image {path!r}" + ("" if image_id is None else f" (image id {image_id})")


def sixteen_bit_to_rgb(img: Image.Image) -> Image.Image:
    """A 16-bit grayscale PIL image ("I;16*" or "I") as 8-bit RGB: v -> round(v * 255 / 65535),
    values outside 0..65535 clipped first."""
    values = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)
    gray = ((values * 255 + 32767) // 65535).astype(np.uint8)
    return Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2), mode="RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """`img` as an 8-bit RGB image (see the module docstring for the conversions)."""
    if img.mode == "RGB":
        return img
    if img.mode in _SIXTEEN_BIT_MODES:
        return sixteen_bit_to_rgb(img)
    return img.convert("RGB")


def read_image(
    path: str, image_id: int | str | None = None, expected_size: tuple[int, int] | None = None
) -> Image.Image:
    """Read the image at `path` as an 8-bit RGB PIL image.

    Args:
        image_id: named in errors.
        expected_size: (height, width) the annotations were made for, or None. It decides the
            EXIF frame (upright unless only the stored frame matches, see the module docstring);
            a size that matches neither frame raises ImageSizeError.
    Raises:
        MissingImageError (a FileNotFoundError) when the file does not exist, ImageReadError when
        it is empty or cannot be decoded (truncated, corrupt, not an image), ImageSizeError; all
        name the file and `image_id`.
    """
    if not os.path.isfile(path):
        raise MissingImageError(path, image_id, "file does not exist")
    if os.path.getsize(path) == 0:
        raise ImageReadError(path, image_id, "cannot decode: the file is empty (0 bytes)")
    try:
        with Image.open(path) as stored:
            img: Image.Image = stored
            orientation = img.getexif().get(EXIF_ORIENTATION, 1)
            stored_w, stored_h = img.size
            upright = (stored_h, stored_w) if orientation in _SWAPS_SIDES else (stored_w, stored_h)
            use_stored = False
            if expected_size is not None:
                want = (int(expected_size[1]), int(expected_size[0]))  # (w, h) as PIL's size
                if want != upright:
                    if want != (stored_w, stored_h):
                        raise ImageSizeError(
                            path,
                            image_id,
                            f"the annotation says {want[0]} x {want[1]} (w x h) but the image is "
                            f"{upright[0]} x {upright[1]}"
                            + (
                                f" (stored {stored_w} x {stored_h}, EXIF orientation {orientation})"
                                if upright != (stored_w, stored_h)
                                else ""
                            )
                            + "; fix the width/height in the annotation file or the image",
                        )
                    use_stored = True
            img.load()
            if not use_stored and orientation != 1:
                img = ImageOps.exif_transpose(img)
            img = to_rgb(img)
            img.load()
    except ImageReadError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(path, image_id, f"cannot decode: {err}") from err
    if img.width == 0 or img.height == 0:
        raise ImageReadError(
            path, image_id, f"the image has no pixels ({img.width} x {img.height})"
        )
    return img
