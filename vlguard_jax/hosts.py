"""Process 0 decides, every process follows: what only process 0 may read (the output directory, which on a pod
is on process 0's disk or in a bucket) is read there and its result given to every process.

The result travels as json bytes through `multihost_utils.broadcast_one_to_all` (a sum over the processes' devices,
the others contributing zeros), so every process gets the same value, or the same error: a refusal on process 0
(a fingerprint mismatch, too many skips) stops every process at the same point instead of leaving the others
waiting in a collective.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from vlguard_jax.config import ConfigError


def decide(compute: Callable[[], Any]) -> Any:
    """`compute()` (json-serialisable) run on process 0 alone; every process returns its value as json reads it
    back, or raises: process 0 its own exception, the others a `ConfigError` (for a ConfigError) or a RuntimeError
    with its message."""
    leader = jax.process_index() == 0
    failure = None
    if leader:
        try:
            message = {"value": compute()}
        except Exception as e:  # noqa: BLE001 — handed to every process, then re-raised here
            failure = e
            message = {"error": str(e), "kind": type(e).__name__, "config": isinstance(e, ConfigError)}
        data = json.dumps(message).encode()
    if jax.process_count() > 1:
        size = int(multihost_utils.broadcast_one_to_all(np.int64(len(data) if leader else 0)))
        buffer = np.frombuffer(data, np.uint8) if leader else np.zeros(size, np.uint8)
        data = np.asarray(multihost_utils.broadcast_one_to_all(buffer)).tobytes()
    if failure is not None:
        raise failure
    message = json.loads(data)
    if "error" in message:
        if message["config"]:
            raise ConfigError(message["error"])
        raise RuntimeError(f"process 0 failed: {message['kind']}: {message['error']}")
    return message["value"]
