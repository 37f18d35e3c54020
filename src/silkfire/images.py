"""The one image path policy: every stage that reads an image file, or sends one to a server, goes through here.

Records name images by a path relative to an image root (the world folder, `silkie.sample.image_root`, a
benchmark's image folder). A record is data, and data can be hostile or simply wrong: `/etc/passwd`,
`../../secret.png`, a symlink out of the root, a FIFO that blocks a reader forever, a 144-megapixel PNG of
420 KB that takes 700 MB to decode. :func:`check_image` refuses all of them *before* a byte of the file is read
(past the image header) or sent:

- the path is a non-empty string without NUL bytes, relative (no `/x`, no `C:\\x`);
- resolved with its symlinks, it stays inside the resolved root;
- it names a regular file of at most :data:`MAX_IMAGE_BYTES`;
- its header is an image PIL can open, of at most `max_pixels` pixels (`images.max_pixels` in conf/config.yaml;
  the stage runner exports it as $SILKFIRE_MAX_IMAGE_PIXELS so DVC's stage processes and fan-out workers see it).

A :class:`CheckedImage` is the only way to the file's bytes (:meth:`CheckedImage.read_bytes`, what API clients
send) or pixels (:meth:`CheckedImage.load`, what models read); both decode the bytes they read, so a file
swapped after the check is caught too.
"""

from __future__ import annotations

import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

# 36 Mpx (6000 x 6000): above every image of VLFeedback, FIRE, MME and MMHal-Bench, far below a decompression bomb.
DEFAULT_MAX_PIXELS = 36_000_000
MAX_PIXELS_ENV = "SILKFIRE_MAX_IMAGE_PIXELS"
MAX_IMAGE_BYTES = 64 * 1024 * 1024  # no benchmark image comes close; a bigger "image" is a mistake or an attack

ESCAPES_WITH_DOTDOT = "path escapes the data root through '..'"
ESCAPES_WITH_SYMLINK = "symlink points outside the data root"
ABSOLUTE = "absolute path (image paths must be relative to the data root)"
IMAGE_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp", "BMP": "image/bmp"}


class UnsafeImage(ValueError):
    """An image path or file the policy refuses; ``reason`` is the short why (what gate reports show)."""

    def __init__(self, relative: Any, root: str | Path, reason: str) -> None:
        self.relative, self.root, self.reason = relative, Path(root), reason
        super().__init__(f"image {relative!r} (root {root}): {reason}")


def max_pixels() -> int | None:
    """The configured pixel limit ($SILKFIRE_MAX_IMAGE_PIXELS, else the default); 0 or less means no limit."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(raw))
    except ValueError:
        raise ValueError(f"${MAX_PIXELS_ENV}={raw!r}: expected a whole number of pixels (images.max_pixels)") from None
    return value if value > 0 else None


def export_max_pixels(value: int | None) -> None:
    """Make `images.max_pixels` the limit of this process and of every process it starts."""
    os.environ[MAX_PIXELS_ENV] = str(int(value) if value else 0)


@dataclass(frozen=True)
class CheckedImage:
    """An image file that passed the policy: inside its root, a regular file, a small-enough image."""

    path: Path  # resolved: no symlinks left
    width: int
    height: int
    format: str  # PIL's name: PNG, JPEG, ...
    mode: str  # as stored: RGB, L, P, ...
    max_pixels: int | None

    @property
    def mime(self) -> str:
        return IMAGE_MIME.get(self.format, "image/png")

    def read_bytes(self) -> bytes:
        """The file's bytes (what an API request carries), verified to decode within the limits."""
        data = _read_regular_file(self.path)
        _decode(io.BytesIO(data), self.path, self.max_pixels, full=True)
        return data

    def load(self) -> Any:
        """The decoded image in RGB (a ``PIL.Image.Image``)."""
        return _decode(io.BytesIO(_read_regular_file(self.path)), self.path, self.max_pixels, full=True).convert("RGB")


def resolve_inside(root: str | Path, relative: Any) -> Path:
    """The resolved regular file `relative` names under `root`; raises :class:`UnsafeImage` (no file is opened)."""
    if not isinstance(relative, str):
        raise UnsafeImage(relative, root, f"not a path string ({type(relative).__name__})")
    if not relative.strip():
        raise UnsafeImage(relative, root, "empty path")
    if "\x00" in relative:
        raise UnsafeImage(relative, root, "NUL byte in path")
    if PurePosixPath(relative).is_absolute() or PureWindowsPath(relative).anchor:
        raise UnsafeImage(relative, root, ABSOLUTE)
    resolved_root = Path(root).resolve()
    try:
        resolved = (resolved_root / relative).resolve()
    except (OSError, RuntimeError, ValueError) as error:  # symlink loops, names too long
        raise UnsafeImage(relative, root, f"cannot resolve path ({error})") from None
    if not resolved.is_relative_to(resolved_root):
        dotdot = ".." in PurePosixPath(relative.replace("\\", "/")).parts
        raise UnsafeImage(relative, root, ESCAPES_WITH_DOTDOT if dotdot else ESCAPES_WITH_SYMLINK)
    try:
        mode = resolved.stat().st_mode
    except FileNotFoundError:
        raise UnsafeImage(relative, root, "file not found") from None
    except OSError as error:
        raise UnsafeImage(relative, root, f"cannot stat file ({error.strerror or error})") from None
    if not stat.S_ISREG(mode):
        raise UnsafeImage(relative, root, "not a file")
    return resolved


def check_image(root: str | Path, relative: Any, *, limit: int | None | str = "configured") -> CheckedImage:
    """Apply the policy to one record's image path; reads the image header only. Raises :class:`UnsafeImage`."""
    pixels = max_pixels() if limit == "configured" else limit
    path = resolve_inside(root, relative)
    size = path.stat().st_size
    if size > MAX_IMAGE_BYTES:
        raise UnsafeImage(relative, root, f"file too large ({size} bytes, limit {MAX_IMAGE_BYTES})")
    try:
        with path.open("rb") as handle:
            image = _decode(handle, path, pixels, full=False)
            width, height, kind, mode = image.width, image.height, str(image.format or ""), image.mode
    except UnsafeImage as error:
        raise UnsafeImage(relative, root, error.reason) from None
    return CheckedImage(path=path, width=width, height=height, format=kind, mode=mode,
                        max_pixels=pixels)


def refusals(root: str | Path, relatives: Any) -> dict[str, str]:
    """Each distinct path the policy refuses, with the reason (headers only: what a stage checks before it
    sends or reads anything)."""
    found: dict[str, str] = {}
    for relative in dict.fromkeys(relatives):
        try:
            check_image(root, relative)
        except UnsafeImage as error:
            found[str(relative)] = error.reason
    return found


def load_image(root: str | Path, relative: Any) -> Any:
    """The RGB image a record names, through the policy (what every model-side reader calls)."""
    return check_image(root, relative).load()


def _read_regular_file(path: Path) -> bytes:
    # O_NOFOLLOW: the checked path has no symlinks; if one appears in its place since the check, refuse it.
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_IMAGE_BYTES:
            raise UnsafeImage(str(path), path.parent, "not a regular file of a sane size any more")
        return handle.read(MAX_IMAGE_BYTES + 1)


def _decode(handle: Any, path: Path, pixels: int | None, *, full: bool) -> Any:
    """Open an image from a binary handle, refuse it past the pixel limit before decoding, optionally decode."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():  # PIL's own bomb warning: our limit, checked next, decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(handle)  # reads the header only
        if pixels is not None and image.width * image.height > pixels:
            raise UnsafeImage(str(path), path.parent,
                              f"image too large: {image.width}x{image.height} = {image.width * image.height} "
                              f"pixels (limit {pixels}; raise images.max_pixels to accept it)")
        if full:
            image.load()  # every pixel: a truncated file fails here, not later in a model
    except UnsafeImage:
        raise
    except Exception as error:  # noqa: BLE001 -- any decoder error means "not a usable image"
        raise UnsafeImage(str(path), path.parent, f"cannot decode image ({type(error).__name__}: {error})") from None
    return image
