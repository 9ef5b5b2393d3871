"""Tokenized samples cached on disk: a source file is parsed and tokenized once, then memory-mapped by every start.

A store holds every record of one source file as `ChatTokenizer.encode(expand_image=False)` tokenizes it, one row
per parsed conversation, in file order: id, image path, source name, harm category (`category/subcategory` of a
VLGuard unsafe image, else empty: what `data.safety_exclude_categories` removes without parsing again), input ids and
labels (one image token per image), length after image expansion (an any-resolution model's image counts one token
here: its own count follows its size, `data.image_sizes`) and, for a sample that cannot be trained on, the
`SampleError` reason (its tokens empty). The reader's skipped records and renamed duplicates sit in meta.json. The
rows are an Arrow file opened as a `datasets.Dataset`, memory-mapped: 665k samples cost the pages a batch touches,
not a gigabyte of Python objects, and a mixture picks its rows by id (`Samples.select`).

A store lives at CACHE/<file stem>-<format>-<digest of its key>. The key is the file's content (sha256 and size,
not its path, so hosts that mount the data elsewhere share it), the reader (format, seed, the readers' code), the
store layout and `ChatTokenizer.fingerprint()` (tokenizer, template, tokenization, max_length, truncation, image
tokens): a change in any of them opens another store, built on first use. A build writes a temporary directory and
renames it into place once complete and synced, so a crash leaves nothing that looks like a store (at most a
`.…tmp` directory, never read, safe to delete), and of two builders of one key the first rename wins.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import shutil
import socket
from pathlib import Path
from typing import Iterator, Sequence

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vlguard_jax.data import harm_categories, preference, sources, tasks
from vlguard_jax.data.chat import ChatTokenizer, Encoded, SampleError
from vlguard_jax.data.mixture import fingerprint
from vlguard_jax.data.sources import Conversation, DataError, Skip, read_records

LAYOUT = 2  # bump when the rows change meaning; a fix to a reader (`_READERS`) rebuilds stores on its own
_READERS = hashlib.sha256(b"".join(Path(m.__file__).read_bytes()
                                   for m in (sources, tasks, preference))).hexdigest()[:16]
SCHEMA = pa.schema([("id", pa.string()), ("image", pa.string()), ("source", pa.string()), ("category", pa.string()),
                    ("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32())),
                    ("length", pa.int32()), ("skip", pa.string())])
ROWS, META = "samples.arrow", "meta.json"
CHUNK = 1000  # conversations per Arrow record batch and per tokenizing task


@dataclasses.dataclass(frozen=True)
class SourceFile:
    """A data file and how it is read: what a store is built from."""

    format: str  # reader: vlguard, llava, alpaca
    path: str
    sha256: str
    size: int
    seed: int = 0  # the vlguard reader's round order (other readers take none)

    @classmethod
    def of(cls, format: str, path: str | os.PathLike, seed: int = 0, content: dict | None = None) -> SourceFile:
        """`content`: the file's `mixture.fingerprint`, when the caller has hashed it already."""
        content = content or fingerprint(path)
        return cls(format, str(path), content["sha256"], content["size"], seed if format == "vlguard" else 0)

    def read(self) -> sources.Records:
        return read_records(self.format, self.path, **({"seed": self.seed} if self.format == "vlguard" else {}))


def store_key(file: SourceFile, chat: ChatTokenizer) -> dict:
    return {"layout": LAYOUT, "readers": _READERS, "format": file.format, "seed": file.seed, "sha256": file.sha256,
            "size": file.size, "chat": chat.fingerprint()}


def store_path(file: SourceFile, chat: ChatTokenizer, cache_dir: str | os.PathLike) -> Path:
    digest = hashlib.sha256(json.dumps(store_key(file, chat), sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{Path(file.path).stem}-{file.format.replace(':', '-')}-{digest}"


def ensure(file: SourceFile, chat: ChatTokenizer, cache_dir: str | os.PathLike, workers: int | None = None) -> Path:
    """The store of `file` under `cache_dir`, built first when absent (`workers` tokenizing processes; default: one
    per CPU this process may use)."""
    path = store_path(file, chat, cache_dir)
    if not path.exists():
        build(path, file, chat, workers)
    return path


def build(path: Path, file: SourceFile, chat: ChatTokenizer, workers: int | None = None) -> None:
    """Parses and tokenizes `file` into a temporary directory, then renames it to `path` (atomic on POSIX)."""
    from tqdm import tqdm

    records = file.read()
    temporary = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    shutil.rmtree(temporary, ignore_errors=True)  # a dead build of a process that had our pid
    temporary.mkdir(parents=True)
    try:
        with (pa.OSFile(str(temporary / ROWS), "wb") as sink, pa.ipc.new_stream(sink, SCHEMA) as writer,
              tqdm(total=len(records.conversations), desc=f"tokenizing {file.path} (once)", unit="sample",
                   disable=None) as bar):  # a bar on terminals only
            for batch in _encoded_batches(records.conversations, chat, workers):
                writer.write_batch(batch)
                bar.update(batch.num_rows)
        meta = {"key": store_key(file, chat), "built_from": file.path,
                "reader_skips": [dataclasses.asdict(s) for s in records.skips],
                "duplicate_ids": records.duplicate_ids}
        (temporary / META).write_text(json.dumps(meta, indent=1))
        for name in (ROWS, META, "."):  # on disk before the rename makes it visible
            descriptor = os.open(temporary / name, os.O_RDONLY)
            os.fsync(descriptor)
            os.close(descriptor)
        try:
            os.rename(temporary, path)
        except OSError:
            if not path.exists():
                raise  # else another process built the same store first: keep theirs
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _encoded_batches(conversations: list[Conversation], chat: ChatTokenizer,
                     workers: int | None) -> Iterator[pa.RecordBatch]:
    """Record batches in file order; several processes (spawned: the parent may run JAX threads) for large files."""
    chunks = [conversations[i:i + CHUNK] for i in range(0, len(conversations), CHUNK)]
    workers = min(len(os.sched_getaffinity(0)) if workers is None else workers, len(chunks))
    if workers <= 1:
        yield from (_encode_batch(chat, chunk) for chunk in chunks)
        return
    with multiprocessing.get_context("spawn").Pool(workers, _start_worker, (chat,)) as pool:
        yield from pool.imap(_worker_batch, chunks)


_worker_chat: ChatTokenizer | None = None  # set once per worker process: the tokenizer is pickled once, not per task


def _start_worker(chat: ChatTokenizer) -> None:
    global _worker_chat
    _worker_chat = chat


def _worker_batch(conversations: list[Conversation]) -> pa.RecordBatch:
    return _encode_batch(_worker_chat, conversations)


def _encode_batch(chat: ChatTokenizer, conversations: Sequence[Conversation]) -> pa.RecordBatch:
    """Store rows of `conversations`: `encode(expand_image=False)`'s tokens, or the reason it refused."""
    encoded, skips = [], []
    for conversation in conversations:
        try:
            encoded.append(chat.encode(conversation, expand_image=False))
            skips.append(None)
        except SampleError as e:
            encoded.append(Encoded(np.zeros(0, np.int32), np.zeros(0, np.int32)))
            skips.append(str(e))
    offsets = np.cumsum([0] + [len(e.input_ids) for e in encoded], dtype=np.int32)
    lengths = [0 if skip else len(e.input_ids) + ((chat.num_image_tokens or 1) - 1) * (c.image is not None)
               for c, e, skip in zip(conversations, encoded, skips)]
    return pa.RecordBatch.from_arrays([
        pa.array([c.id for c in conversations], pa.string()),
        pa.array([c.image for c in conversations], pa.string()),
        pa.array([c.metadata.get("source", "") for c in conversations], pa.string()),
        pa.array([_category(c) for c in conversations], pa.string()),
        pa.ListArray.from_arrays(offsets, np.concatenate([e.input_ids for e in encoded]).astype(np.int32)),
        pa.ListArray.from_arrays(offsets, np.concatenate([e.labels for e in encoded]).astype(np.int32)),
        pa.array(lengths, pa.int32()), pa.array(skips, pa.string())], schema=SCHEMA)


def _category(conversation: Conversation) -> str:
    meta = conversation.metadata
    unsafe_image = meta.get("source") == "vlguard" and not meta["safe"]
    return harm_categories.label(meta["category"], meta.get("subcategory")) if unsafe_image else ""


class Store:
    """A built store, memory-mapped. In memory: lengths and skip reasons; ids when a mixture asks for them."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.meta = json.loads((self.path / META).read_text())
        self.dataset = datasets.Dataset.from_file(str(self.path / ROWS))  # memory-mapped, not read
        self.table: pa.Table = self.dataset.data.table
        self.lengths = self.table.column("length").to_numpy()
        skip = self.table.column("skip")
        skipped = np.flatnonzero(np.asarray(pc.is_valid(skip)))
        self.skipped = dict(zip(skipped.tolist(), skip.take(skipped).to_pylist()))  # row → reason

    def __len__(self) -> int:
        return self.table.num_rows

    def __getstate__(self) -> dict:  # Grain worker processes reopen the memory map instead of receiving rows
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"])

    @functools.cached_property
    def ids(self) -> list[str]:
        return self.table.column("id").to_pylist()

    @functools.cached_property
    def categories(self) -> list[str]:
        """Per row, in `ids`' order: its harm category label, "" for all but VLGuard's unsafe images."""
        return self.table.column("category").to_pylist()

    @functools.cached_property
    def _row_of(self) -> dict[str, int]:
        return {i: row for row, i in enumerate(self.ids)}

    @property
    def reader_skips(self) -> list[Skip]:
        return [Skip(**s) for s in self.meta["reader_skips"]]

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        try:
            return np.fromiter((self._row_of[i] for i in ids), np.int64, len(ids))
        except KeyError as e:
            raise DataError(f"{self.meta['built_from']}: no sample with id {e.args[0]!r}") from None

    def row(self, row: int) -> dict:
        """{"id", "image", "source", "encoded"}; the tokens are read-only views of the memory map."""
        one = self.table.slice(row, 1)
        tokens = {name: one.column(name).chunk(0).flatten().to_numpy() for name in ("input_ids", "labels")}
        return {"id": one.column("id")[0].as_py(), "image": one.column("image")[0].as_py(),
                "source": one.column("source")[0].as_py(), "encoded": Encoded(**tokens)}


@dataclasses.dataclass
class Samples:
    """Training samples in order, as (store, row) pairs: what the Grain pipeline reads by index."""

    stores: list[Store]
    store_index: np.ndarray  # int32 [n]: which store
    rows: np.ndarray  # int64 [n]: which row of it
    lengths: np.ndarray  # int32 [n], after image expansion
    image_tokens: np.ndarray | None = None  # int32 [n]: an any-resolution model's image tokens per sample (0: no
    # image), counted in `lengths`; None: every image has the chat's `num_image_tokens`

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.stores[self.store_index[i]].row(int(self.rows[i]))

    def count_images(self, image_tokens: np.ndarray) -> Samples:
        """These samples with each image counted as its own `image_tokens` (int [n], 0: no image) in place of the
        one token the store counts (an any-resolution model's: `data.image_sizes.with_image_tokens`)."""
        image_tokens = np.asarray(image_tokens, np.int32)
        return dataclasses.replace(self, lengths=(self.lengths + np.maximum(image_tokens - 1, 0)).astype(np.int32),
                                   image_tokens=image_tokens)

    def subset(self, kept: np.ndarray) -> Samples:
        """The samples at indices `kept`, in that order."""
        return Samples(self.stores, self.store_index[kept], self.rows[kept], self.lengths[kept],
                       None if self.image_tokens is None else self.image_tokens[kept])

    @classmethod
    def select(cls, parts: Sequence[tuple[Store, Sequence[str]]]) -> tuple[Samples, list[Skip]]:
        """The samples of each (store, ids) part, in order; a sample the tokenizer refused becomes a Skip."""
        stores, index, rows, lengths, skips = [], [], [], [], []
        for store, ids in parts:
            k = next((k for k, known in enumerate(stores) if known is store), len(stores))
            stores += [store] if k == len(stores) else []
            picked = store.rows(ids)
            refused = np.isin(picked, list(store.skipped))
            skips += [Skip(store.ids[r], store.skipped[r]) for r in picked[refused]]
            kept = picked[~refused]
            rows.append(kept)
            index.append(np.full(len(kept), k, np.int32))
            lengths.append(store.lengths[kept])
        if not sum(map(len, rows)):
            raise DataError(f"none of the {len(skips)} samples is usable (first skip: "
                            f"{skips[0].reason if skips else 'none'})")
        return cls(stores, np.concatenate(index), np.concatenate(rows), np.concatenate(lengths)), skips


def open_stores(files: dict[str, SourceFile], chat: ChatTokenizer, cache_dir: str | os.PathLike,
                primary: bool = True, barrier=lambda name: None) -> dict[str, Store]:
    """Every process's stores of `files` (by name). The primary builds what is missing while the others wait at
    `barrier` (multi-host: `multihost_utils.sync_global_devices`); then each process opens them, and one that still
    finds a store missing (the cache on a host-local disk) builds its own copy before the last barrier."""
    built = {name: ensure(file, chat, cache_dir) for name, file in files.items()} if primary else None
    barrier("vlguard-jax: tokenized data built by the primary process")
    built = built or {name: ensure(file, chat, cache_dir) for name, file in files.items()}
    barrier("vlguard-jax: tokenized data ready on every host")
    return {name: Store(path) for name, path in built.items()}
