"""An on-disk cache of judge replies keyed on the full request, so that re-judging the same inputs costs nothing.

One json file per request, named by the sha256 of the request body (model, messages, temperature, max_tokens):
any change to what would be sent is a different key. Files are written whole (temporary file, then rename), so
concurrent writers and an interrupted run leave either a complete reply or none.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path


def request_key(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class ReplyCache:
    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def get(self, key: str) -> dict | None:
        path = self.directory / f"{key}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def put(self, key: str, reply: dict) -> None:
        fd, temporary = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(reply, f)
        os.replace(temporary, self.directory / f"{key}.json")
