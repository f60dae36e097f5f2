"""Reading and writing images, masks and label maps: the CLI's file side.

Reading: every file's size is checked from its header before it is decoded (at most
``tasks.MAX_IMAGE_PIXELS``), and pixels go through the same conversions as the Python API
(``tasks.as_rgb_uint8``, ``as_mask``, ``as_label_map``), so a file and an array mean the same.

Writing: every output goes through :func:`write_atomically` (a temporary file in the target's
folder, renamed over the target only when complete, removed on any error or interrupt) and is
created with the user's umask. The extension decides the format: :data:`OUTPUT_FORMATS`.
"""
from __future__ import annotations

import contextlib
import os
import struct
import tempfile
import warnings
import zlib
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}

# Output extension -> Pillow format. Anything else is refused before any work starts.
OUTPUT_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}
# Label maps must keep their class ids exactly: JPEG's lossy compression would corrupt them.
LABEL_FORMATS = ("PNG", "TIFF")
DEFAULT_JPEG_QUALITY = 95
TEMPORARY_SUFFIX = ".tmp"


# -- reading ----------------------------------------------------------------------------------------
# What Pillow raises for a damaged file (a bad chunk, a truncated stream), when opening or decoding it.
_DAMAGED_FILE_ERRORS = (OSError, SyntaxError, EOFError, struct.error, zlib.error)


def _damaged(path: Path, error: BaseException) -> ValueError:
    return ValueError(f"{path}: the file is damaged or not an image Pillow can decode ({error})")


@contextlib.contextmanager
def open_checked(path: Path) -> Iterator["object"]:
    """Open an image file (header only) and refuse it before decoding when it is beyond the size limit."""
    from PIL import Image, UnidentifiedImageError

    from .tasks import MAX_IMAGE_PIXELS, check_image_size

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"not found: {path}")
    try:
        with warnings.catch_warnings():
            # Our own limit is far below Pillow's bomb warning; its error still applies beyond 2x.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError:
        raise ValueError(f"{path}: far beyond the supported {MAX_IMAGE_PIXELS / 1e6:.0f} Mpx "
                         "(Pillow refused to open it)") from None
    except UnidentifiedImageError:
        raise ValueError(f"{path}: not an image file Pillow can read") from None
    except PermissionError:
        raise
    except _DAMAGED_FILE_ERRORS as error:
        raise _damaged(path, error) from None
    with image:
        check_image_size(*image.size, what=str(path))
        yield image


def _decoded(path: Path, image) -> np.ndarray:
    """:func:`_native_pixels`, with a damaged file's error naming the file (one line)."""
    try:
        return _native_pixels(image)
    except PermissionError:
        raise
    except _DAMAGED_FILE_ERRORS as error:
        raise _damaged(path, error) from None


# EXIF orientations that turn the picture a quarter (transpose, 90°, transverse, 270°): width and height swap.
_QUARTER_TURNS = (5, 6, 7, 8)


def oriented_size(image) -> tuple[int, int]:
    """(width, height) of an opened picture as the readers return it (EXIF orientation applied), from its header."""
    width, height = image.size
    return (height, width) if image.getexif().get(0x0112, 1) in _QUARTER_TURNS else (width, height)


def _native_pixels(image) -> np.ndarray:
    """Decoded pixels keeping their depth: 16-bit gray as uint16, float as float32, else 8-bit RGB(A)/L."""
    from PIL import ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I;16"):
        return np.asarray(image).astype(np.uint16)  # also turns big-endian I;16B into native order
    if image.mode == "I":  # 32-bit integers: what Pillow gives for some 16-bit files
        pixels = np.asarray(image)
        if pixels.size and (pixels.min() < 0 or pixels.max() > 65535):
            raise ValueError(f"32-bit integer pixels {pixels.min()}..{pixels.max()} are outside 16 bits")
        return pixels.astype(np.uint16)
    if image.mode == "F":
        return np.asarray(image, dtype=np.float32)
    if image.mode in ("L", "RGB", "RGBA", "LA"):
        return np.asarray(image)
    if image.mode == "P":  # palette: its colours, transparency kept as alpha (masks read it)
        return np.asarray(image.convert("RGBA" if "transparency" in image.info else "RGB"))
    if image.mode == "1":
        return np.asarray(image.convert("L"))
    return np.asarray(image.convert("RGB"))  # CMYK, YCbCr, ...: Pillow's conversion


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB: EXIF orientation applied; palette, CMYK and gray become RGB; alpha is
    dropped (transparent pixels keep their stored colour); 16-bit and float pixels are scaled to
    8 bits by ``tasks.to_uint8`` (uint16 / 257; floats 0..1 or 0..255), never clipped."""
    from .tasks import as_rgb_uint8

    with open_checked(path) as image:
        pixels = _decoded(path, image)
    try:
        return as_rgb_uint8(pixels, min_size=1)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def read_mask(path: Path) -> np.ndarray:
    """(H, W) bool: any non-black pixel is set (transparent pixels are not), as ``tasks.as_mask``."""
    from .tasks import as_mask

    with open_checked(path) as image:
        pixels = _decoded(path, image)
    try:
        return as_mask(pixels, pixels.shape[:2], "mask")
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def read_label_map(path: Path) -> np.ndarray:
    """(H, W) int32 class indices, checked against the 19 classes: a single-channel map of indices
    (8- or 16-bit), or a colour picture in our palette (a palette PNG is read by its colours)."""
    from .tasks import as_label_map

    with open_checked(path) as image:
        pixels = _decoded(path, image)
    try:
        return as_label_map(pixels, pixels.shape[:2], "labels")
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def read_index_map(path: Path) -> np.ndarray:
    """A single-channel map of integers as stored (label indices, or a mask); RGB is read as luma."""
    with open_checked(path) as image:
        if image.mode in ("RGB", "RGBA"):
            return np.asarray(image.convert("L"))
        return np.asarray(image)


def list_images(path: Path) -> list[Path]:
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path}")
        return files
    if not path.exists():
        raise FileNotFoundError(f"input not found: {path}")
    return [path]


def companion(path_or_dir: Path | None, image_path: Path) -> Path | None:
    """The mask/labels file that goes with ``image_path``: the file itself, or the same stem in a folder."""
    if path_or_dir is None:
        return None
    path_or_dir = Path(path_or_dir)
    if path_or_dir.is_dir():
        for suffix in (".png", image_path.suffix):
            candidate = path_or_dir / (image_path.stem + suffix)
            if candidate.exists():
                return candidate
        raise FileNotFoundError(f"no file for '{image_path.stem}' in {path_or_dir}")
    if not path_or_dir.exists():
        raise FileNotFoundError(f"not found: {path_or_dir}")
    return path_or_dir


# -- writing ----------------------------------------------------------------------------------------
def output_format(path: Path, labels: bool = False) -> str:
    """The Pillow format an output path's extension asks for; ValueError for any other extension,
    and for JPEG when the output is a label map."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        known = ", ".join(OUTPUT_FORMATS)
        found = f"extension '{Path(path).suffix}'" if suffix else "no extension"
        raise ValueError(f"output {path} has {found}: the extension sets the format ({known})")
    kind = OUTPUT_FORMATS[suffix]
    if labels and kind not in LABEL_FORMATS:
        raise ValueError(f"output {path}: label maps are written as PNG or TIFF only (JPEG would change class ids)")
    return kind


def current_umask() -> int:
    """The process umask, read without changing it where the system allows (Linux /proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM for a few statements, so a temporary file is never created unrecorded."""
    import signal

    if not hasattr(signal, "pthread_sigmask"):  # Windows: no signal masks
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write a file by ``write(handle)`` into a temporary file beside it, then rename it over ``path``.

    A failure or an interrupt (KeyboardInterrupt, SIGTERM turned into one) removes the temporary
    file and leaves any earlier ``path`` untouched. The file gets the mode a plain ``open`` would
    (0o666 minus the umask), not mkstemp's 0600, also when it replaces an existing file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = handle = None
    try:
        with _signals_deferred():  # an interrupt lands after both names are set, inside this try
            fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
            handle = os.fdopen(fd, "wb")
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o666 & ~current_umask())
        os.replace(temporary, path)
    except BaseException:
        if handle is not None:
            handle.close()
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        raise


def write_image(path: Path, image: np.ndarray, jpeg_quality: int = DEFAULT_JPEG_QUALITY) -> None:
    """Write an (H, W, 3) or (H, W) uint8 image in the format of the path's extension."""
    from PIL import Image

    kind = output_format(path)
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"images are written from uint8 pixels, got {image.dtype}")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"an image to write is (H, W) or (H, W, 3), got shape {image.shape}")
    picture = Image.fromarray(image)
    options = {"quality": int(jpeg_quality)} if kind == "JPEG" else {}
    if kind == "TIFF":
        options["compression"] = "tiff_deflate"
    write_atomically(path, lambda handle: picture.save(handle, format=kind, **options))


def write_labels(path: Path, labels: np.ndarray) -> None:
    """Write a (H, W) map of class indices as an 8-bit single-channel PNG or TIFF (never JPEG)."""
    from PIL import Image

    kind = output_format(path, labels=True)
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"a label map is 2-D, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"label values {labels.min()}..{labels.max()} do not fit an 8-bit file")
    picture = Image.fromarray(labels.astype(np.uint8))
    options = {"compression": "tiff_deflate"} if kind == "TIFF" else {}
    write_atomically(path, lambda handle: picture.save(handle, format=kind, **options))


def write_text(path: Path, text: str) -> None:
    """Write a UTF-8 text file (e.g. detect's JSON) through the same temporary-file-and-rename path."""
    write_atomically(path, lambda handle: handle.write(text.encode("utf-8")))


def write_atomic(path: Path, array: np.ndarray) -> None:
    """A 2-D array as a label map, an (H, W, 3) array as an image; format from the extension."""
    from .tasks import to_uint8

    array = np.asarray(array)
    if array.ndim == 2:
        write_labels(path, array)
    else:
        write_image(path, to_uint8(array))
