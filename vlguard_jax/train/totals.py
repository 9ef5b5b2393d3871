"""What a run trained on: rows, supervised tokens, rows whose image failed to load, steps with nothing supervised.

A run can consume every batch and learn nothing (every image missing, every label masked): the loss of an empty
batch is 0 and its gradient zero, so only these counts tell. They are kept in each checkpoint's meta, so a resumed
run reports the whole run, and printed as one line at its end.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Totals:
    samples: int = 0  # rows of the global batches its steps consumed
    tokens: int = 0  # supervised tokens
    image_failures: int = 0  # rows whose image failed to load (they carried no loss)
    empty_steps: int = 0  # steps whose global batch had no supervised token (no update)
    since_step: int = 0  # the step these count from: 0, or a resume from a checkpoint saved without totals

    @classmethod
    def restored(cls, meta: dict | None, step: int) -> Totals:
        """The totals a checkpoint at `step` saved (`meta`: its meta; None for a fresh run)."""
        if meta is None:
            return cls()
        return cls(**meta["totals"]) if "totals" in meta else cls(since_step=step)

    def plus(self, window: dict, rows: int) -> Totals:
        """These plus a metrics window read from the device (`loop._window`) that held `rows` rows."""
        return dataclasses.replace(self, samples=self.samples + rows, tokens=self.tokens + int(window["tokens"]),
                                   image_failures=self.image_failures + int(window["image_failures"]),
                                   empty_steps=self.empty_steps + int(window["empty_steps"]))

    def line(self) -> str:
        since = f" since step {self.since_step}" if self.since_step else ""
        return (f"totals{since}: {self.samples} samples, {self.tokens} supervised tokens, {self.image_failures} "
                f"image failures, {self.empty_steps} empty steps")
