"""Every output path is a URI: a local folder, `gs://bucket/…` or any store `etils.epath` reaches (fsspec's gcsfs,
s3fs). One atomic write, one JSONL append and one figure writer, used by every caller.

Stores differ in two ways that matter here. A local folder renames atomically, so a write goes to a temporary
sibling and is renamed over the target; an object store has no rename but an object put is atomic (readers see the
old object or the new one, never half), so a write is a single put. An object store has no append either (gcsfs
silently overwrites in mode "a"), so `append_lines` rewrites the object with the new lines after the old ones:
O(size) a call, which is why callers append by chunk.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import tempfile
import threading
from typing import Callable, Iterable, Union

from etils import epath

Path = epath.Path
PathLike = Union[str, os.PathLike]


def path(value: PathLike) -> epath.Path:
    """`value` as a path; `gs://b/x` stays a URI (a `pathlib.Path` would make it the local folder `gs:/b/x`)."""
    return epath.Path(value)


def is_local(value: PathLike) -> bool:
    return "://" not in os.fspath(value)


def write_file(target: PathLike, write: Callable[[str], None]) -> None:
    """`write(filename)` makes the file (a library writer that takes a file name); `target` then holds it whole,
    or what it held before: never a torn file, whatever kills the process. A remote target is one object put of
    the finished file (held in memory for the put)."""
    target = path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not is_local(target):
        with tempfile.TemporaryDirectory() as folder:
            staged = os.path.join(folder, target.name)
            write(staged)
            with open(staged, "rb") as f:
                target.write_bytes(f.read())
        return
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # per writer
    try:
        write(os.fspath(temporary))
        with open(temporary, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(temporary, target)
    finally:
        if temporary.exists():
            temporary.unlink()


def write_bytes(target: PathLike, data: bytes) -> None:
    if not is_local(target):
        path(target).parent.mkdir(parents=True, exist_ok=True)
        path(target).write_bytes(data)  # one object put: atomic
        return
    write_file(target, lambda name: pathlib.Path(name).write_bytes(data))


def write_text(target: PathLike, text: str) -> None:
    write_bytes(target, text.encode())


def write_json(target: PathLike, value, indent: int | None = 1) -> None:
    write_text(target, json.dumps(value, indent=indent) + ("\n" if indent is not None else ""))


def read_json(source: PathLike):
    return json.loads(path(source).read_text())


def append_lines(target: PathLike, lines: Iterable[str]) -> None:
    """Appends `lines` (each without its newline) to `target`, made if absent. Local: one write of the chunk, synced;
    an object store: the object rewritten whole, old lines first."""
    chunk = "".join(line + "\n" for line in lines)
    if not chunk:
        return
    target = path(target)
    if not is_local(target):
        old = target.read_text() if target.exists() else ""
        write_text(target, old + chunk)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "a") as f:
        f.write(chunk)
        f.flush()
        os.fsync(f.fileno())


def move(source: PathLike, target: PathLike) -> None:
    """Renames `source` over `target` (an object store copies, then deletes `source`)."""
    path(source).replace(path(target))


def copy_folder(folder: PathLike, target: PathLike) -> None:
    """Every file under the local `folder` to the same relative path under `target` (each write atomic)."""
    folder = pathlib.Path(folder)
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        write_bytes(path(target) / file.relative_to(folder).as_posix(), file.read_bytes())


def read_lines(source: PathLike) -> list[str]:
    """The non-empty lines of `source`; none when it does not exist."""
    source = path(source)
    return [line for line in source.read_text().splitlines() if line.strip()] if source.exists() else []


def save_figure(figure, target: PathLike, dpi: int = 120) -> epath.Path:
    """A matplotlib figure, laid out tight, as a PNG at `target` (no timestamp in its metadata: the same plot, the
    same bytes), then closed."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(figure)
    write_bytes(target, buffer.getvalue())
    return path(target)


def figure(width: float = 6, height: float = 3.5, columns: int = 1):
    """A new figure and its axes, drawn off-screen (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, columns, figsize=(width, height))
