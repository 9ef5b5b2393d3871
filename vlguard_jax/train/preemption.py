"""Preemption: a SIGTERM to any one process stops every process after the same step, so they can save together.

Each process catches SIGTERM in a flag. With one process the loop reads the flag before each step; with
several, every process all-gathers the flags at the loop's sync points (log steps: the host waits for the device
there anyway; an all-gather before every step would stall the step queue each time), and all of them stop as soon
as any flag is set: the same step everywhere, whichever host was signalled. The handler is installed when a run starts, so a signal during
the minutes of data loading and model setup stops the run before its first step.

JAX's own `multihost_utils.reached_preemption_sync_point` was tried first (CPU, gloo, two processes): it stops
a fresh run correctly, but its sync point is one past the last step id any caller passed (a call with 500,
then a notice: sync point 501), and Orbax's `CheckpointManager` passes its own absolute step ids, from the
main thread and from its asynchronous finalize thread; a notice before the first call sets it to 1, which a
resumed run never reaches. Whether the loop then stops depends on who called last. The all-gather does not.
(`jax.distributed.initialize` installs the runtime's C-level SIGTERM handler; ours replaces it.)
"""

from __future__ import annotations

import signal

import jax
import numpy as np
from jax.experimental import multihost_utils


class Preemption:
    """Create at the start of a run (main thread); call `should_stop(poll)` once per step on every process, with
    `poll` true at the same steps everywhere (the sync points)."""

    def __init__(self):
        self.stopped = False  # should_stop has returned True
        self._signalled = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self._signalled = True

    def should_stop(self, poll: bool = True) -> bool:
        """True (and from then on) once any process was signalled; the same step on every process. With several
        processes the flags are gathered only when `poll`."""
        if not self.stopped:
            if jax.process_count() == 1:
                self.stopped = self._signalled
            elif poll:
                self.stopped = bool(np.any(multihost_utils.process_allgather(np.int32(self._signalled))))
        return self.stopped

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
