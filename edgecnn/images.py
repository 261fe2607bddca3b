"""The one image loader: file or bytes -> uint8 array of the model's size and channels.

Training, INT8 calibration, parity checks, ``predict`` and ``serve`` all call `load_image`,
so they can never disagree about decoding, resizing or channel handling. Preprocessing
(rescale, mean subtraction) is not done here: it is inside the model graph.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from edgecnn.errors import ImageError, ImageTooLarge, first_line

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
DEFAULT_MAX_PIXELS = 64_000_000  # decompression-bomb guard: 64 megapixels
# The only decoders Pillow may pick: ICO/ICNS decode an embedded PNG while opening (past the pixel
# limit) and EPS runs Ghostscript. An ICO, say, is refused as "not a decodable image".
FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM")
BACKGROUND = (255, 255, 255)  # transparent pixels are composited over white


def is_image_file(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def load_image(
    source: str | os.PathLike | bytes,
    image_size: tuple[int, int],
    channels: int = 3,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    exif_orientation: bool | None = None,
) -> np.ndarray:
    """Decode `source` (a path or encoded bytes) into a (H, W, C) uint8 array.

    image_size: (height, width) of the result. channels: 1 (grayscale) or 3 (RGB);
    grayscale, RGB, RGBA, palette, 16-bit and float images all convert; alpha is composited
    over `BACKGROUND` (white); float images in [0, 1] are scaled to 0..255. Only `FORMATS` are
    opened. Large JPEGs are decoded at a reduced scale inside the decoder (`Image.draft`)
    before resizing, and `max_pixels` is checked after that, so a 50 MP phone JPEG that
    decodes at 1/8 scale is accepted. Raises `ImageError` naming the source when the bytes
    are not a decodable image, `ImageTooLarge` when it has more than `max_pixels` pixels.

    exif_orientation: turn the pixels as the EXIF Orientation tag says (after draft), as every
    photo viewer does; None: on unless the environment sets EDGECNN_EXIF_ORIENTATION=0 (for a
    model trained elsewhere, e.g. with Keras' loaders, on photos that were not turned).
    """
    from PIL import Image

    name = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
    height, width = int(image_size[0]), int(image_size[1])
    mode = "L" if channels == 1 else "RGB"
    if not isinstance(source, (bytes, bytearray)):
        _check_regular_file(source)
    try:
        with Image.open(
            io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source, formats=FORMATS
        ) as img:
            orientation = (
                _orientation(img)
                if (exif_orientation_enabled() if exif_orientation is None else exif_orientation)
                else 1
            )
            want_w, want_h = (height, width) if orientation in (5, 6, 7, 8) else (width, height)  # before turning
            if img.format == "JPEG" and (img.width >= 2 * want_w and img.height >= 2 * want_h):
                img.draft(mode, (want_w, want_h))  # before the pixel check: what is decoded is what costs
            if max_pixels is not None and img.width * img.height > max_pixels:
                raise ImageTooLarge(f"{name}: {img.width}x{img.height} is more than the {max_pixels:,}-pixel limit")
            if orientation != 1:
                from PIL import ImageOps

                img = ImageOps.exif_transpose(img)
            if img.mode != mode:
                if img.mode in ("P", "PA") or img.mode.startswith("I;16") or img.mode in ("I", "F"):
                    img = _normalize_mode(img)
                if img.mode in ("RGBA", "LA", "La", "RGBa"):
                    img = _over_background(img)
                img = img.convert(mode)
            if img.size != (width, height):
                img = img.resize((width, height), Image.BILINEAR)
            array = np.asarray(img, dtype=np.uint8)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow refuses it while opening, before our own check
        limit = "Pillow's decompression-bomb" if max_pixels is None else f"{max_pixels:,}-pixel"
        raise ImageTooLarge(f"{name}: more than the {limit} limit ({first_line(exc)})") from None
    except MemoryError:
        raise ImageTooLarge(f"{name}: decoding it needs more memory than this machine has") from None
    except Exception as exc:  # Pillow's decoders raise many kinds on damaged files (found by tests/test_fuzz.py)
        detail = re.sub(r" ?<_io\.\w+ object at 0x[0-9a-f]+>", "", first_line(exc).replace(repr(name), "")).strip()
        if not isinstance(exc, (OSError, ValueError, SyntaxError)):
            detail = f"its decoder failed with {type(exc).__name__}: {detail}"
        raise ImageError(f"{name}: not a decodable image ({detail})") from None
    if channels == 1:
        array = array[:, :, None]
    return array


def exif_orientation_enabled() -> bool:
    """EXIF orientation is applied unless EDGECNN_EXIF_ORIENTATION is 0, off, false or no."""
    return os.environ.get("EDGECNN_EXIF_ORIENTATION", "1").strip().lower() not in ("0", "off", "false", "no")


def _orientation(img) -> int:
    try:
        value = img.getexif().get(0x0112, 1)  # the Orientation tag
    except Exception:  # a broken EXIF block: the pixels as stored
        return 1
    return value if value in range(1, 9) else 1


def _check_regular_file(path: str | os.PathLike) -> None:
    """A one-line ImageError unless `path` is a readable regular file: opening a FIFO would wait
    for a writer forever, a device would read without end."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ImageError(
            f"{path}: no such image file" + (" (a broken symlink)" if os.path.islink(path) else "")
        ) from None
    except OSError as exc:  # a symlink loop, a permission denied on the way
        raise ImageError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(mode):
        kind = (
            "a FIFO"
            if stat.S_ISFIFO(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "a device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a folder"
            if stat.S_ISDIR(mode)
            else "not a file"
        )
        raise ImageError(f"{path}: not a regular file ({kind}); skipped")
    if not os.access(path, os.R_OK):
        raise ImageError(f"{path}: cannot be read (permission denied)")


def image_header(path: str | os.PathLike) -> tuple[str, tuple[int, int]] | None:
    """(mode, (width, height)) read from the header only; None when it is not one of `FORMATS` or
    cannot be read, a decompression bomb included (Pillow's error for those is not an OSError)."""
    from PIL import Image

    try:
        _check_regular_file(path)
        with Image.open(path, formats=FORMATS) as img:
            return img.mode, img.size
    except Exception:  # not a regular file, damaged, a bomb, or a decoder's own failure: not an image to train on
        return None


def _normalize_mode(img):
    """Bring palette and 16/32-bit images to plain 8-bit modes before conversion."""
    if img.mode in ("P", "PA"):
        return img.convert("RGBA")
    array = np.asarray(img, dtype=np.float64)
    if img.mode == "F" and array.size and 0.0 <= array.min() and array.max() <= 1.0:
        top = 1.0  # a float image in [0, 1]
    else:
        top = 65535.0 if img.mode.startswith("I;16") or array.max() > 255 else 255.0
    from PIL import Image

    return Image.fromarray(np.clip(array / top * 255.0, 0, 255).astype(np.uint8), "L")


def _over_background(img):
    """Composite an image with alpha over `BACKGROUND` (an RGB image, or L for LA)."""
    from PIL import Image

    rgba = img.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (*BACKGROUND, 255)), rgba).convert("RGB")


def to_batch(images: Sequence[np.ndarray], layout: str = "nhwc", dtype: str = "uint8") -> np.ndarray:
    """Stack (H, W, C) uint8 images into one model input batch of `layout` and `dtype`."""
    batch = np.stack(images, axis=0)
    if layout == "nchw":
        batch = batch.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(batch, dtype=np.dtype(dtype))


def find_images(paths: Sequence[str | os.PathLike]) -> tuple[list[Path], list[Path]]:
    """Expand files and folders (recursively, sorted) into (image files, skipped non-image files)."""
    images: list[Path] = []
    skipped: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for f in sorted(files):
                    if f.startswith("."):
                        continue
                    (images if is_image_file(f) else skipped).append(Path(root) / f)
        elif p.is_file():
            images.append(p)
        else:
            raise ImageError(f"{p}: no such file or folder")
    return images, skipped
