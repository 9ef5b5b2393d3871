"""Image loading and CLIP preprocessing, bit-identical to transformers' PIL image processors.

`preprocess` repeats `LlavaImageProcessorPil(do_pad=True)` ("pad", LLaVA-1.5) and `CLIPImageProcessorPil` ("crop")
step for step, or MiniGPT-v2's `Blip2ImageEvalProcessor` ("resize": the whole image squeezed to a square, no
crop): RGB conversion (transparency composited onto white), optional pad to a square filled with
`int(255 * mean)`, PIL bicubic resize of the shortest edge on uint8, centre crop, `float64 * (1/255)` cast to
float32, then `(x - mean) / std` in float32. `ImageSource` reads images from a directory or a zip archive as
LLaVA's training and evaluation and VLGuard's evaluation read them, `Image.open(path).convert('RGB')` (alpha
dropped, not composited), and turns every way an image can be unusable (missing, corrupt, truncated, too large,
outside the root, an extreme aspect ratio) into an `ImageError`. No buffer preprocessing makes (a padded canvas, a
resized image) may hold more than `max_pixels` pixels: padding a 1×N image makes N×N pixels, and resizing its
shortest edge to 336 makes 336×336N.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import posixpath
import warnings
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterable, Iterator

import numpy as np
from PIL import Image

MODES = ("pad", "crop", "resize")
MAX_PIXELS = 89_478_485  # PIL's own decompression-bomb limit (Image.MAX_IMAGE_PIXELS)
_RESCALE = 1 / 255  # transformers' rescale_factor; multiplying (not dividing) keeps the same float64 rounding
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError)  # what PIL raises for bad or cut-off image data
_ARCHIVE_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError)


class ImageError(ValueError):
    """An image that cannot be used; the message names the path, the root and the reason."""


@dataclasses.dataclass(frozen=True)
class ImageConfig:
    size: int = 336
    mode: str = "pad"  # "pad": LLaVA-1.5 pad-to-square; "crop": plain CLIP resize + centre crop; "resize": MiniGPT-v2
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"ImageConfig.mode must be one of {MODES}, got {self.mode!r}")
        if self.size <= 0:
            raise ValueError(f"ImageConfig.size must be positive, got {self.size}")


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB the way transformers' `convert_to_rgb` does it: anything transparent is composited onto white."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def preprocess(image: Image.Image, config: ImageConfig, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Any PIL mode → float32 [3, size, size] exactly as transformers' processors give it; an ImageError, before it
    is made, where the padded or the resized copy would hold more than `max_pixels` pixels."""
    return normalize(resized(image, config, max_pixels), config.mean, config.std)


def resized(image: Image.Image, config: ImageConfig, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """`preprocess` up to its last uint8 step: the padded, resized and cropped uint8 [size, size, 3] (what an attack
    on the pixels moves, and what a saved PNG of it holds)."""
    pixels = np.asarray(to_rgb(image))
    height, width = pixels.shape[:2]
    if config.mode == "pad":
        side = max(height, width)
        _check_buffer(image, f"padded to {side}x{side}", side * side, max_pixels)
        pixels = _pad_to_square(pixels, tuple(int(m * 255) for m in config.mean))
        height = width = side
    if config.mode == "resize":  # torchvision's Resize((size, size), BICUBIC) on the PIL image
        new_width = new_height = config.size
    else:
        short, long = min(height, width), max(height, width)
        new_long = int(config.size * long / short)  # transformers' get_resize_output_image_size, truncating
        new_width, new_height = (config.size, new_long) if width <= height else (new_long, config.size)
    _check_buffer(image, f"resized to {new_width}x{new_height}", new_width * new_height, max_pixels)
    scaled = np.asarray(Image.fromarray(pixels).resize((new_width, new_height), Image.Resampling.BICUBIC))
    top, left = (new_height - config.size) // 2, (new_width - config.size) // 2
    return scaled[top: top + config.size, left: left + config.size]


def normalize(pixels: np.ndarray, mean: tuple[float, float, float], std: tuple[float, float, float]) -> np.ndarray:
    """uint8 [H, W, 3] → float32 [3, H, W] in the processors' arithmetic: rescale in float64, normalize in float32."""
    mean, std = (np.reshape(v, (3, 1, 1)).astype(np.float32) for v in (mean, std))
    return (unit_pixels(pixels) - mean) / std


def unit_pixels(pixels: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] → float32 [3, H, W] in [0, 1], rescaled as the processors rescale (before normalizing)."""
    return np.ascontiguousarray((pixels.astype(np.float64) * _RESCALE).astype(np.float32).transpose(2, 0, 1))


def _check_buffer(image: Image.Image, step: str, pixels: int, max_pixels: int) -> None:
    if pixels > max_pixels:
        raise ImageError(f"{image.width}x{image.height} pixels would be {step} ({pixels} pixels), more than "
                         f"max_pixels={max_pixels}; raise max_pixels (ImageSource(max_pixels=...)) to allow it")


def _pad_to_square(pixels: np.ndarray, colour: tuple[int, ...]) -> np.ndarray:
    """Centre an [H, W, 3] uint8 image on a square canvas of `colour` (LLaVA's expand2square)."""
    height, width = pixels.shape[:2]
    if height == width:
        return pixels
    side = max(height, width)
    canvas = np.empty((side, side, 3), np.uint8)
    canvas[:] = colour
    top, left = (side - height) // 2, (side - width) // 2
    canvas[top: top + height, left: left + width] = pixels
    return canvas


class ImageSource:
    """Reads images by relative path from a directory or straight from a .zip archive (no unpacking).

    `max_pixels` bounds a decoded image and every buffer its preprocessing makes; `max_member_bytes` bounds what an
    archive member may decompress to, checked on the archive's directory before a byte of it is inflated."""

    def __init__(self, root: str | os.PathLike, max_pixels: int = MAX_PIXELS, max_member_bytes: int = 2**29):
        self.root = Path(root).resolve()
        self.max_pixels = max_pixels
        self.max_member_bytes = max_member_bytes
        if self.root.is_dir():
            self.is_zip = False
        elif zipfile.is_zipfile(self.root):
            self.is_zip = True
        else:
            raise ImageError(f"image root {self.root} is neither a directory nor a zip archive")
        self._zip: zipfile.ZipFile | None = None
        self._zip_pid: int | None = None
        self._prefix = ""

    def __repr__(self) -> str:
        return (f"ImageSource({str(self.root)!r}, max_pixels={self.max_pixels}, "
                f"max_member_bytes={self.max_member_bytes})")

    def __getstate__(self) -> dict:
        """The zip handle stays behind: each process opens its own on first use."""
        return {**self.__dict__, "_zip": None, "_zip_pid": None, "_prefix": ""}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = self._zip_pid = None

    def load(self, relpath: str) -> Image.Image:
        """The image at `relpath`, fully decoded and converted to RGB as `Image.open(path).convert('RGB')` does;
        raises ImageError."""
        self._check_relative(relpath)
        data = self._read_zip(relpath) if self.is_zip else self._read_file(relpath)
        return self._decode(relpath, data)

    def size(self, relpath: str) -> tuple[int, int]:
        """(height, width) of the image at `relpath` from its header alone (no pixel is decoded, an archive member
        is inflated only as far as its header): what an any-resolution model's token count needs. Raises
        ImageError as `load` does for a path, file, member or header that `load` would refuse."""
        self._check_relative(relpath)
        try:
            stream = self._archive().open(self._member(relpath)) if self.is_zip else self._file(relpath).open("rb")
            with stream, self._opened(relpath, stream) as image:
                return image.height, image.width
        except FileNotFoundError:
            raise self.error(relpath, "file not found") from None
        except _ARCHIVE_ERRORS as e:  # PIL's own errors are ImageErrors already; what is left failed reading
            raise self.error(relpath, f"cannot read {'archive member' if self.is_zip else 'file'} ({e})") from e

    def missing(self, relpaths: Iterable[str]) -> list[str]:
        """Those of `relpaths` that `load` would not find, in order, from the archive's index or one listing per
        folder: no image is opened, so hundreds of thousands take seconds, not the minutes a decode would."""
        if self.is_zip:
            names = set(self._archive().namelist())
            found = lambda path: path in names or self._prefix + path in names
        else:
            listings: dict[str, set[str]] = {}  # folder → the names of its files, listed once

            def found(path: str) -> bool:
                folder, _, name = path.rpartition("/")
                if folder not in listings:
                    listings[folder] = self._files_in(folder)
                return name in listings[folder]
        absent = []
        for relpath in relpaths:
            try:
                self._check_relative(relpath)
            except ImageError:
                absent.append(relpath)
                continue
            if not found(posixpath.normpath(relpath)):  # "a//b" and "./a" name "a/b" and "a", as `load` reads them
                absent.append(relpath)
        return absent

    def _files_in(self, folder: str) -> set[str]:
        """The names of the files in `folder` of this directory root (none when it is absent)."""
        try:
            with os.scandir(self.root / folder) as entries:
                return {entry.name for entry in entries if entry.is_file()}
        except (FileNotFoundError, NotADirectoryError):
            return set()

    def _check_relative(self, relpath: str) -> None:
        if not relpath or relpath.startswith(("/", "\\")) or os.path.isabs(relpath):
            raise self.error(relpath, "not a relative path")
        if ".." in relpath.split("/"):
            raise self.error(relpath, "'..' would leave the image root")

    def pixels(self, relpath: str, config: ImageConfig) -> np.ndarray:
        """`preprocess` of the image at `relpath` under this source's `max_pixels`; its errors name the image."""
        image = self.load(relpath)
        try:
            return preprocess(image, config, self.max_pixels)
        except ImageError as e:
            raise self.error(relpath, str(e)) from None

    def error(self, relpath: str, reason: str) -> ImageError:
        """An ImageError naming the image and this root (for a step of preprocessing done elsewhere)."""
        return ImageError(f"image {relpath!r} under {self.root}: {reason}")

    def _file(self, relpath: str) -> Path:
        path = (self.root / relpath).resolve()
        if not path.is_relative_to(self.root):
            raise self.error(relpath, f"resolves to {path}, outside the image root (symlink?)")
        return path

    def _read_file(self, relpath: str) -> bytes:
        path = self._file(relpath)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise self.error(relpath, "file not found") from None
        except OSError as e:
            raise self.error(relpath, f"cannot read file ({e})") from e

    def _member(self, relpath: str) -> zipfile.ZipInfo:
        """The archive member of `relpath`, refused when it would inflate to more than `max_member_bytes`."""
        archive = self._archive()
        name = str(PurePosixPath(relpath))  # "a//b" and "./a" name the member "a/b" and "a"
        for member in (name, self._prefix + name) if self._prefix else (name,):
            try:
                info = archive.getinfo(member)
            except KeyError:
                continue
            if info.file_size > self.max_member_bytes:  # zipfile inflates no more than file_size bytes
                raise self.error(relpath, f"archive member {member!r} is {info.file_size} bytes uncompressed, more "
                                          f"than max_member_bytes={self.max_member_bytes}; raise it "
                                          f"(ImageSource(max_member_bytes=...)) to read it")
            return info
        raise self.error(relpath, "not found in the archive")

    def _read_zip(self, relpath: str) -> bytes:
        info = self._member(relpath)
        try:
            return self._archive().read(info)
        except _ARCHIVE_ERRORS as e:
            raise self.error(relpath, f"cannot read archive member {info.filename!r} ({e})") from e

    def _archive(self) -> zipfile.ZipFile:
        """This process's zip handle; a forked child must not share its parent's file offset."""
        if self._zip_pid != os.getpid():
            self.close()
            self._zip = zipfile.ZipFile(self.root)
            self._zip_pid = os.getpid()
            self._prefix = _single_top_folder(self._zip.namelist())
        return self._zip

    def _decode(self, relpath: str, data: bytes) -> Image.Image:
        with self._opened(relpath, io.BytesIO(data)) as image:
            try:
                image.load()
                rgb = image.convert("RGB")
            except _DECODE_ERRORS as e:
                raise self.error(relpath, f"corrupt or truncated image ({type(e).__name__}: {e})") from e
            # A transparent colour survives convert() in `info`; LLaVA's processor (transformers 4.31)
            # ignores it on an RGB image, transformers 5 and `to_rgb` would composite it onto white.
            rgb.info.pop("transparency", None)
            return rgb

    @contextlib.contextmanager
    def _opened(self, relpath: str, stream: BinaryIO) -> Iterator[Image.Image]:
        """The image in `stream` with its header read and no pixel decoded, refused (ImageError) when its header is
        unreadable or announces more than `max_pixels` pixels."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(stream)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise self.error(relpath, f"decompression bomb ({e})") from e
        except _DECODE_ERRORS as e:
            raise self.error(relpath, f"corrupt or truncated image ({type(e).__name__}: {e})") from e
        with image:
            if image.width * image.height > self.max_pixels:
                raise self.error(relpath, f"decompression bomb: {image.width}x{image.height} pixels is more than "
                                          f"max_pixels={self.max_pixels}")
            yield image


def _single_top_folder(names: list[str]) -> str:
    """'train/' when every member sits under train/, so 'x/y.jpg' also finds 'train/x/y.jpg'; else ''."""
    tops = {name.split("/", 1)[0] for name in names}
    if len(tops) == 1 and all("/" in name for name in names):
        return tops.pop() + "/"
    return ""
