"""Readers of preference pairs (prompt, chosen answer, rejected answer) for DPO, one reader per side.

DPO training tokenizes each side of the pairs as ordinary conversations, `(user: prompt, assistant: answer)`, into two
separate stores and zips them by position. So both sides of a file come from one deterministic parse that validates
BOTH answers whichever side it returns: the same ids, images, order, skips and renamed duplicates; only the assistant
turn differs. `read_records("jsonl:chosen", path)` (and `:rejected`, and `spavl:…`) reads one side.

- `jsonl`: one JSON object a line (or a `.json` list of them): `id`, optional `image` (a path under the image root),
  `prompt`, `chosen`, `rejected`, optional `category`/`subcategory`. VLGuard's pairs reach training as this format.
- `spavl`: SPA-VL (Zhang et al., CVPR 2025; hub `sqrti/SPA-VL`, dataset card §3.2). The train split is
  `data/train-0000k-of-00008.parquet` with `image` (a `datasets.Image`: struct {bytes, path}), `question`, `chosen`,
  `rejected`, `image_name` (e.g. "19902.jpg"; rows may share one); the validation split
  (`validation/validation-*.parquet`) has `class1`/`class2`/`class3` (harm category, sub- and sub-subcategory) instead
  of `image_name`; the test split (`test/harm-*`, `test/help-*`) has no answers, so it is refused. Neither has an id:
  records are `spavl-<row>`, counting rows from 0 over the files in name order. SPA-VL's own DPO code
  (EchoseChen/SPA-VL-RLHF, `load_data`) reads instead a JSON list of `{id, image: path under image_folder, question,
  chosen, rejected}` (the README's format, `train.zip`); that is read too (`.json` or `.jsonl`), images as paths.
  Embedded images are read as bytes and never decoded here; `ensure_spavl_images` writes them once into a zip that
  `images.ImageSource` reads, under the names the reader gives the conversations.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import socket
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from vlguard_jax.data.mixture import fingerprint
from vlguard_jax.data.sources import IMAGE_PLACEHOLDER, Conversation, DataError, Records, Turn, _field, _Reader, _text

PREFERENCE_FORMATS = ("jsonl", "spavl", "vlguard")  # vlguard: converted to jsonl before it is read
SIDES = ("chosen", "rejected")
SPAVL_REQUIRED = ("image", "question", "chosen", "rejected")
SPAVL_COLUMNS = SPAVL_REQUIRED + ("image_name", "class1", "class2", "class3")  # other columns are not read
_BATCH = 64  # parquet rows in memory at once: SPA-VL's images average ~38 kB
_MAGIC = ((b"\xff\xd8\xff", ".jpg"), (b"\x89PNG\r\n\x1a\n", ".png"), (b"GIF87a", ".gif"), (b"GIF89a", ".gif"),
          (b"BM", ".bmp"))


def side_formats(format: str) -> tuple[str, str]:
    """The `read_records` formats of the chosen and the rejected side of a preference format."""
    if format not in PREFERENCE_FORMATS:
        raise DataError(f"unknown preference format {format!r}; known: {', '.join(PREFERENCE_FORMATS)}")
    reader = "jsonl" if format == "vlguard" else format  # VLGuard's pairs are converted to jsonl first
    return f"{reader}:chosen", f"{reader}:rejected"


@dataclasses.dataclass(frozen=True)
class _BadLine:
    """A line of a .jsonl file that is not JSON: a skip like any bad record, not the end of the read."""

    reason: str


@dataclasses.dataclass(frozen=True)
class _Embedded:
    """An image stored in the parquet file: its name in the zip (or why it is unusable) and, to extract, its bytes."""

    name: str | None
    problem: str | None = None
    data: bytes | None = None
    renamed_from: str | None = None


def _pair(record: dict, record_id: str, image: str | None, prompt_key: str, side: str, metadata: dict) -> Conversation:
    """The conversation of `side`, after checking both answers: a pair unusable on one side is skipped on both."""
    prompt = record.get(prompt_key)
    if image is None and isinstance(prompt, str) and IMAGE_PLACEHOLDER in prompt:
        raise DataError(f"'{prompt_key}' has an <image> placeholder but the record has no image")
    prompt = _text(record, prompt_key, image_turn=image is not None)
    answers = {key: _text(record, key) for key in SIDES}
    if answers["chosen"].strip() == answers["rejected"].strip():
        raise DataError("chosen and rejected are the same answer")
    return Conversation(record_id, image, (Turn("user", prompt), Turn("assistant", answers[side])), metadata)


def _checked(path: str | os.PathLike, side: str) -> Path:
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, got {side!r}")
    return Path(path)


def _json_stream(path: Path) -> Iterator[tuple[str, Any]]:
    """Records of a `.json` list (labels `#<index>`) or of JSON lines (labels `line <n>`, 1-based; blank lines are
    not records)."""
    if path.suffix == ".json":
        yield from ((f"#{i}", record) for i, record in enumerate(_Reader(path, "skip").load_list()))
        return
    try:
        handle = path.open(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    with handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield f"line {number}", json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                yield f"line {number}", _BadLine(f"line {number} is not valid JSON ({e.msg} at column {e.colno})")


def _record(record: Any) -> dict:
    if isinstance(record, _BadLine):
        raise DataError(record.reason)
    if not isinstance(record, dict):
        raise DataError(f"record is a {type(record).__name__}, not an object")
    return record


def _categories(record: dict, category: str, subcategories: tuple[str, ...]) -> dict:
    """{"category", "subcategory"} of those the record carries (non-empty strings); the subcategories joined by "/"."""
    meta = {}
    if isinstance(record.get(category), str) and record[category].strip():
        meta["category"] = record[category]
    sub = "/".join(record[key] for key in subcategories if isinstance(record.get(key), str) and record[key].strip())
    if sub:
        meta["subcategory"] = sub
    return meta


def read_jsonl_pairs(path: str | os.PathLike, *, side: str, on_error: str = "skip") -> Records:
    """Generic pairs, `{id, image?, prompt, chosen, rejected, category?, subcategory?}` a line or in a `.json` list;
    `side` picks the answer of the conversations."""
    path = _checked(path, side)

    def parse(index: int, record: Any) -> Conversation:
        record = _record(record)
        record_id = str(_field(record, "id", (str, int)))
        image = _field(record, "image", str) if "image" in record else None
        metadata = {"source": "jsonl", **_categories(record, "category", ("subcategory",))}
        return _pair(record, record_id, image, "prompt", side, metadata)

    return _Reader(path, on_error).run(parse, _json_stream(path))


def read_spavl_pairs(path: str | os.PathLike, *, side: str, on_error: str = "skip") -> Records:
    """SPA-VL pairs from a parquet file, a directory of them (`data/`), or SPA-VL-RLHF's json; `side` picks the answer.
    An embedded image is named by `image_name`, else `<row><extension from its bytes>`; see `ensure_spavl_images`."""
    path = _checked(path, side)
    files = _parquet_files(path)
    stream = _parquet_stream(files, with_bytes=False) if files else _json_stream(path)

    def parse(index: int, record: Any) -> Conversation:
        record = _record(record)
        record_id = str(_field(record, "id", (str, int))) if "id" in record else f"spavl-{index}"
        image, metadata = record.get("image"), {"source": "spavl"}
        if isinstance(image, _Embedded):
            if image.problem:
                raise DataError(image.problem)
            if image.renamed_from:
                metadata["image_renamed_from"] = image.renamed_from
            image = image.name
        elif "image" in record:
            image = _field(record, "image", str)
        metadata.update(_categories(record, "class1", ("class2", "class3")))
        return _pair(record, record_id, image, "question", side, metadata)

    return _Reader(path, on_error).run(parse, stream)


def _parquet_files(path: Path) -> list[Path] | None:
    """The parquet files at `path` in name order (a directory: its own `*.parquet`), None for a json input."""
    if path.is_dir():
        files = sorted(path.glob("*.parquet"))
        if not files:
            raise DataError(f"{path}: no .parquet files in this directory (SPA-VL's train split is "
                            f"data/train-*.parquet)")
        return files
    if path.suffix in (".json", ".jsonl"):
        return None
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    return [path]


def _parquet_stream(files: list[Path], with_bytes: bool) -> Iterator[tuple[str, dict]]:
    """SPA-VL's rows as dicts, `image` an `_Embedded` (bytes kept only `with_bytes`) or, where the column holds
    strings, a path. A name that two different images claim keeps the first; the later one gets its digest added."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    digests: dict[str, str] = {}  # image name → sha256 of the bytes stored under it
    index = 0
    for file in files:
        try:
            parquet = pq.ParquetFile(file)
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"{file}: not a readable parquet file ({e})") from e
        schema = parquet.schema_arrow
        missing = [c for c in SPAVL_REQUIRED if c not in schema.names]
        if missing:
            raise DataError(f"{file}: no {', '.join(missing)} column (has {', '.join(schema.names)}); SPA-VL's "
                            f"train (data/) and validation splits hold preference pairs, its test split does not")
        embedded = _embedded(schema, file)
        for batch in parquet.iter_batches(batch_size=_BATCH, columns=[c for c in SPAVL_COLUMNS if c in schema.names]):
            for row in batch.to_pylist():
                if embedded:
                    row["image"] = _embedded_image(row, index, digests, with_bytes)
                yield f"spavl-{index}", row
                index += 1


def _embedded(schema, file: Path) -> bool:
    """True for a `datasets.Image` column (struct {bytes, path}), False for image paths (strings)."""
    import pyarrow as pa

    kind = schema.field("image").type
    if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
        return True
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return False
    raise DataError(f"{file}: column 'image' is {kind}, neither a datasets Image (struct with bytes) nor a path")


def _embedded_image(row: dict, index: int, digests: dict[str, str], with_bytes: bool) -> _Embedded:
    image = row["image"]
    if image is None:
        return _Embedded(None, "no image (the 'image' column is null)")
    data = image.get("bytes")
    if not data:
        where = f" (only a path, {image['path']!r})" if image.get("path") else ""
        return _Embedded(None, f"the image has no bytes{where}")
    given = row.get("image_name")
    if isinstance(given, str) and given.strip():
        name = str(PurePosixPath(given))  # "./a.jpg" → "a.jpg", as ImageSource looks it up
        if name.startswith(("/", "\\")) or os.path.isabs(name) or ".." in name.split("/") or name == ".":
            return _Embedded(None, f"image_name {given!r} is not a relative path inside an image folder")
    else:
        name = f"{index}{_extension(data, image.get('path'))}"
    digest = hashlib.sha256(data).hexdigest()
    renamed_from = None
    if digests.setdefault(name, digest) != digest:
        renamed_from, stem = name, PurePosixPath(name)
        name = str(stem.with_name(f"{stem.stem}-{digest[:16]}{stem.suffix}"))
        if digests.setdefault(name, digest) != digest:
            raise DataError(f"image names {renamed_from!r} and {name!r} are both taken by other images")
    return _Embedded(name, None, data if with_bytes else None, renamed_from)


def _extension(data: bytes, path: str | None) -> str:
    """The image's type from its first bytes, else from the path it was stored from, else '.img'."""
    for magic, extension in _MAGIC:
        if data.startswith(magic):
            return extension
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return PurePosixPath(path).suffix.lower() if path and PurePosixPath(path).suffix else ".img"


def spavl_images_path(path: str | os.PathLike, folder: str | os.PathLike) -> Path:
    """`folder/<stem>-<16 hex of the content digest>-images.zip`: a changed file extracts into another zip."""
    path = Path(path)
    files = _parquet_files(path) or [path]
    if len(files) == 1 and not path.is_dir():
        digest = fingerprint(files[0])["sha256"]
    else:
        prints = [fingerprint(f) for f in files]
        digest = hashlib.sha256("".join(f"{f.name}\t{p['sha256']}\t{p['size']}\n"
                                        for f, p in zip(files, prints)).encode()).hexdigest()
    return Path(folder) / f"{path.stem}-{digest[:16]}-images.zip"


def ensure_spavl_images(path: str | os.PathLike, folder: str | os.PathLike) -> Path | None:
    """The zip of every embedded image of the SPA-VL file(s) at `path`, named as `read_spavl_pairs` names them,
    written under `folder` on first use (None where all records name image files instead). The zip is byte-identical
    on every host (stored, fixed timestamps); it is written to a temporary file, synced and linked into place, so a
    crash leaves no partial zip and of two concurrent builders the first one's file stays."""
    path = Path(path)
    files = _parquet_files(path)
    if files is None or not any(_embedded(_schema(f), f) for f in files):
        return None
    target = spavl_images_path(path, folder)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)  # a dead build of a process that had our pid
    try:
        written: set[str] = set()
        with zipfile.ZipFile(temporary, "w", zipfile.ZIP_STORED) as archive:
            for _, row in _parquet_stream(files, with_bytes=True):
                image = row["image"]
                if isinstance(image, _Embedded) and image.problem is None and image.name not in written:
                    archive.writestr(zipfile.ZipInfo(image.name, date_time=(1980, 1, 1, 0, 0, 0)), image.data)
                    written.add(image.name)
        _fsync(temporary)
        try:
            os.link(temporary, target)  # unlike rename, never replaces a zip another builder put there first
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links
            if not target.exists():
                os.rename(temporary, target)
        _fsync(target.parent)
    finally:
        temporary.unlink(missing_ok=True)
    return target


def _schema(file: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(file)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{file}: not a readable parquet file ({e})") from e
    if "image" not in schema.names:
        raise DataError(f"{file}: no image column (has {', '.join(schema.names)})")
    return schema


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


PREFERENCE_READERS = {f"{name}:{side}": functools.partial(reader, side=side)
                      for name, reader in (("jsonl", read_jsonl_pairs), ("spavl", read_spavl_pairs)) for side in SIDES}
