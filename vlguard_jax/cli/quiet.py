"""Library log lines a CLI user can neither act on nor needs, dropped so that the output speaks only of the run.

Each filter names its logger and the starts of the messages it drops (the unformatted `record.msg`, as the library
writes it); everything else those loggers say still prints.
"""

from __future__ import annotations

import logging


class _Drop(logging.Filter):
    def __init__(self, logger: str, *prefixes: str):
        super().__init__()
        self.logger, self.prefixes = logger, prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(self.prefixes))


QUIET = (
    # transformers/__init__.py, on import without torch: this package runs its models in JAX and uses
    # transformers for tokenizers only.
    _Drop("transformers", "PyTorch was not found."),
    # orbax/checkpoint/checkpoint_manager.py, through absl: a trained run is opened read-only on purpose (eval,
    # export), and Orbax reports each option it turns off because of that.
    _Drop("absl", "Given directory is read only=", "CheckpointManagerOptions.read_only=True, setting"),
    # gcsfs/extended_gcsfs.py, on every access to a bucket whose layout it may not query (credentials without the
    # storage-layout permission, an emulator): it falls back to plain object access, which is all this package uses.
    _Drop("gcsfs", "Could not determine bucket type for bucket name"),
)


def quiet_libraries() -> None:
    """Install the filters (once however often called); call before the libraries log."""
    import absl.logging  # noqa: F401  (absl makes its "absl" logger, of its own class, on import: before we look it up)

    for drop in QUIET:
        logging.getLogger(drop.logger).addFilter(drop)
