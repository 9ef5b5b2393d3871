"""A cache of judge replies keyed on the full request, so that re-judging the same inputs costs nothing.

One json file per request, named by the sha256 of the request body (model, messages, temperature, max_tokens):
any change to what would be sent is a different key. The directory is any `storage` path (a local folder,
`gs://…`); a reply is written whole (`storage.write_text`), so concurrent writers and an interrupted run leave
either a complete reply or none.
"""

from __future__ import annotations

import hashlib
import json
import os

from vlguard_jax import storage


def request_key(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class ReplyCache:
    def __init__(self, directory: str | os.PathLike):
        self.directory = storage.path(directory)

    def get(self, key: str) -> dict | None:
        try:
            return json.loads((self.directory / f"{key}.json").read_text())
        except FileNotFoundError:
            return None

    def put(self, key: str, reply: dict) -> None:
        storage.write_text(self.directory / f"{key}.json", json.dumps(reply))
