"""Image preprocessing is bit-identical to transformers' PIL processors; every unusable image is an ImageError."""

import io
import os
import pickle
import re
import struct
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image
from transformers import CLIPImageProcessorPil, LlavaImageProcessorPil

from vlguard_jax.data.images import ImageConfig, ImageError, ImageSource, preprocess, to_rgb

RNG = np.random.default_rng(0)


def _noise(height: int, width: int, channels: int = 3) -> np.ndarray:
    shape = (height, width) if channels == 1 else (height, width, channels)
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def _palette_with_transparency() -> Image.Image:
    image = Image.fromarray(_noise(90, 140)).quantize(32)
    image.info["transparency"] = 3
    return image


IMAGES = {
    "wide": lambda: Image.fromarray(_noise(300, 500)),
    "tall": lambda: Image.fromarray(_noise(517, 301)),
    "square": lambda: Image.fromarray(_noise(400, 400)),
    "odd_pad": lambda: Image.fromarray(_noise(337, 480)),
    "rgba": lambda: Image.fromarray(_noise(320, 450, 4), "RGBA"),
    "la": lambda: Image.fromarray(_noise(200, 150, 2), "LA"),
    "gray": lambda: Image.fromarray(_noise(480, 640, 1), "L"),
    "palette": lambda: Image.fromarray(_noise(200, 300)).quantize(64),
    "palette_transparent": _palette_with_transparency,
    "cmyk": lambda: Image.fromarray(_noise(210, 180, 4), "CMYK"),
    "uint16": lambda: Image.fromarray(RNG.integers(0, 65536, (120, 90), dtype=np.uint16)),
    "tiny": lambda: Image.fromarray(_noise(13, 20)),
    "one_pixel_row": lambda: Image.fromarray(_noise(1, 40)),
}


def _size_kwargs(size: int) -> dict:
    return {"size": {"shortest_edge": size}, "crop_size": {"height": size, "width": size}}


@pytest.mark.parametrize("size", [336, 224])
@pytest.mark.parametrize("name", IMAGES)
def test_pad_matches_llava_processor_bit_for_bit(name, size):
    image = IMAGES[name]()
    expected = LlavaImageProcessorPil(do_pad=True, **_size_kwargs(size))(images=image, return_tensors="np")
    actual = preprocess(image, ImageConfig(size=size, mode="pad"))
    assert actual.dtype == np.float32 and actual.shape == (3, size, size)
    np.testing.assert_array_equal(actual, expected["pixel_values"][0])


@pytest.mark.parametrize("size", [336, 224])
@pytest.mark.parametrize("name", ["wide", "tall", "square", "rgba", "gray", "palette", "tiny"])
def test_crop_matches_clip_processor_bit_for_bit(name, size):
    image = IMAGES[name]()
    expected = CLIPImageProcessorPil(**_size_kwargs(size))(images=image, return_tensors="np")
    actual = preprocess(image, ImageConfig(size=size, mode="crop"))
    np.testing.assert_array_equal(actual, expected["pixel_values"][0])


@pytest.mark.parametrize("name", ["wide", "tall", "square", "rgba", "gray", "tiny", "one_pixel_row"])
def test_resize_is_minigptv2s_squeeze_to_a_square(name):
    """MiniGPT-v2's `Blip2ImageEvalProcessor`: `Resize((448, 448), BICUBIC)` of the PIL image, `ToTensor`,
    `Normalize` with BLIP's (= CLIP's) mean and std: the processor below with that exact size and no crop."""
    image = IMAGES[name]()
    expected = CLIPImageProcessorPil(size={"height": 448, "width": 448}, do_center_crop=False)(
        images=image, return_tensors="np")
    actual = preprocess(image, ImageConfig(size=448, mode="resize"))
    np.testing.assert_array_equal(actual, expected["pixel_values"][0])


def test_pad_and_crop_differ_on_non_square_images():
    image = IMAGES["wide"]()
    assert not np.array_equal(preprocess(image, ImageConfig()), preprocess(image, ImageConfig(mode="crop")))


def test_config_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        ImageConfig(mode="stretch")


# ---- ImageSource ----

def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


FILES = {
    "a.png": _encode(Image.fromarray(_noise(40, 60, 4), "RGBA"), "PNG"),
    "sub/b.jpg": _encode(Image.fromarray(_noise(50, 30)), "JPEG"),
    "sub/deeper/c.png": _encode(Image.fromarray(_noise(20, 20, 1), "L"), "PNG"),
}


def _write_tree(root, files=FILES):
    for relpath, data in files.items():
        (root / relpath).parent.mkdir(parents=True, exist_ok=True)
        (root / relpath).write_bytes(data)
    return root


def _write_zip(path, files=FILES, prefix=""):
    with zipfile.ZipFile(path, "w") as archive:
        for relpath, data in files.items():
            archive.writestr(prefix + relpath, data)
    return path


def test_directory_and_zips_give_the_same_pixels(tmp_path):
    sources = [
        ImageSource(_write_tree(tmp_path / "dir")),
        ImageSource(_write_zip(tmp_path / "flat.zip")),
        ImageSource(_write_zip(tmp_path / "nested.zip", prefix="train/")),
    ]
    for relpath in FILES:
        images = [source.load(relpath) for source in sources]
        assert all(image.mode == "RGB" for image in images)
        for image in images[1:]:
            np.testing.assert_array_equal(np.asarray(image), np.asarray(images[0]))
    assert np.asarray(sources[2].load("train/sub/b.jpg")).shape == (50, 30, 3)  # the full member name works too
    for source in sources:
        source.close()


def test_files_load_and_preprocess_as_llava_reads_them(tmp_path):
    """`Image.open(path).convert('RGB')` (LLaVA's loaders, VLGuard's): alpha dropped, not composited onto white as
    transformers 5 does; the processor then sees the RGB array, as transformers 4.31 did."""
    files = {"a.png": FILES["a.png"], "p.png": _encode(_palette_with_transparency(), "PNG")}
    source = ImageSource(_write_tree(tmp_path, files))
    for name in files:
        rgb = np.asarray(Image.open(tmp_path / name).convert("RGB"))
        assert not np.array_equal(rgb, np.asarray(to_rgb(Image.open(tmp_path / name))))  # the test can tell
        np.testing.assert_array_equal(np.asarray(source.load(name)), rgb)
        expected = LlavaImageProcessorPil(do_pad=True, **_size_kwargs(336))(images=rgb, return_tensors="np")
        np.testing.assert_array_equal(source.pixels(name, ImageConfig()), expected["pixel_values"][0])


def test_zip_source_pickles_and_reopens_its_handle(tmp_path):
    source = ImageSource(_write_zip(tmp_path / "images.zip", prefix="train/"))
    before = np.asarray(source.load("sub/b.jpg"))
    clone = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(np.asarray(clone.load("sub/b.jpg")), before)
    np.testing.assert_array_equal(np.asarray(source.load("sub/b.jpg")), before)
    source.close()
    clone.close()


def _expect_error(source, relpath, reason):
    with pytest.raises(ImageError, match=re.escape(repr(relpath)) + ".*" + reason) as info:
        source.load(relpath)
    assert str(source.root) in str(info.value)


def test_missing_files(tmp_path):
    _expect_error(ImageSource(_write_tree(tmp_path / "dir")), "sub/nope.jpg", "not found")
    _expect_error(ImageSource(_write_zip(tmp_path / "x.zip", prefix="train/")), "sub/nope.jpg", "not found")


def test_corrupt_and_truncated_images(tmp_path):
    png, jpeg = FILES["a.png"], FILES["sub/b.jpg"]
    files = {"garbage.jpg": b"not an image", "half.png": png[: len(png) // 2], "half.jpg": jpeg[: len(jpeg) // 2]}
    sources = ImageSource(_write_tree(tmp_path / "dir", files)), ImageSource(_write_zip(tmp_path / "x.zip", files))
    for source in sources:
        for relpath in files:
            _expect_error(source, relpath, "corrupt or truncated")


def _black_png(side: int) -> bytes:
    """A genuine side x side 1-bit PNG, compressed row by row so no side² buffer is ever built."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    row = bytes(1 + (side + 7) // 8)  # filter byte + packed bits
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bombs_are_refused_before_decoding(tmp_path):
    one_pixel = _encode(Image.new("RGB", (1, 1)), "PNG")
    sides = {"mid.png": 4_000, "big.png": 12_000, "huge.png": 20_000}
    root = _write_tree(tmp_path, {"one.png": one_pixel, **{name: _black_png(side) for name, side in sides.items()}})
    _expect_error(ImageSource(root, max_pixels=0), "one.png", "decompression bomb: 1x1 pixels")
    _expect_error(ImageSource(root), "huge.png", "decompression bomb")  # PIL's own DecompressionBombError
    _expect_error(ImageSource(root, max_pixels=10**9), "big.png", "decompression bomb")  # PIL's warning, as error
    _expect_error(ImageSource(root, max_pixels=10**6), "mid.png", "4000x4000 pixels is more than max_pixels")


def test_zip_members_over_the_size_cap_are_refused_before_reading(tmp_path, monkeypatch):
    source = ImageSource(_write_zip(tmp_path / "x.zip", prefix="train/"), max_member_bytes=1000)
    size = len(FILES["sub/b.jpg"])
    assert size > 1000
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda *args, **kwargs: pytest.fail("the member was read"))
    with pytest.raises(ImageError) as info:
        source.load("sub/b.jpg")
    assert str(info.value) == (f"image 'sub/b.jpg' under {source.root}: archive member 'train/sub/b.jpg' is {size} "
                               f"bytes uncompressed, more than max_member_bytes=1000; raise it "
                               f"(ImageSource(max_member_bytes=...)) to read it")
    monkeypatch.undo()
    assert source.load("sub/deeper/c.png").size == (20, 20)  # a member under the cap
    source.close()


@pytest.mark.parametrize("mode, step", [("pad", "padded to 10000x10000 (100000000 pixels)"),
                                        ("crop", "resized to 336x3360000 (1128960000 pixels)")])
def test_extreme_aspect_ratios_are_refused_before_a_huge_buffer(tmp_path, mode, step):
    """A 1x10000 image is within max_pixels, its 10000² padded canvas or 336x3.36M resized copy is not."""
    source = ImageSource(_write_tree(tmp_path, {"thin.png": _encode(Image.fromarray(_noise(10000, 1)), "PNG")}))
    with pytest.raises(ImageError) as info:
        source.pixels("thin.png", ImageConfig(mode=mode))
    assert str(info.value) == (f"image 'thin.png' under {source.root}: 1x10000 pixels would be {step}, more than "
                               f"max_pixels=89478485; raise max_pixels (ImageSource(max_pixels=...)) to allow it")


def test_paths_leaving_the_root(tmp_path):
    root = _write_tree(tmp_path / "root")
    outside = _write_tree(tmp_path / "outside")
    os.symlink(outside / "a.png", root / "link.png")
    os.symlink(outside / "sub", root / "linked_dir")
    os.symlink(root / "a.png", root / "inside_link.png")
    source = ImageSource(root)
    _expect_error(source, "../outside/a.png", r"'\.\.'")
    _expect_error(source, "sub/../../outside/a.png", r"'\.\.'")
    _expect_error(source, str(root / "a.png"), "not a relative path")
    _expect_error(source, "link.png", "outside the image root")
    _expect_error(source, "linked_dir/b.jpg", "outside the image root")
    assert source.load("inside_link.png").size == (60, 40)


def test_zip_member_names_leaving_the_root(tmp_path):
    files = {"../evil.png": FILES["a.png"], "/abs.png": FILES["a.png"], "ok.png": FILES["a.png"]}
    source = ImageSource(_write_zip(tmp_path / "x.zip", files))
    _expect_error(source, "../evil.png", r"'\.\.'")
    _expect_error(source, "/abs.png", "not a relative path")
    assert source.load("ok.png").size == (60, 40)
    source.close()


def test_root_must_be_a_directory_or_zip(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ImageError, match="notes.txt.*neither a directory nor a zip"):
        ImageSource(tmp_path / "notes.txt")
