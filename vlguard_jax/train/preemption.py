"""Preemption: a SIGTERM to any one process stops every process after the same step, so that they save together.

One process: a Python SIGTERM handler sets a flag that the loop reads before each step.

Several processes: a flag per process is not enough — the signalled process would leave the loop while the others
wait for it in the next step's collective. JAX's distributed runtime solves this, and Orbax uses it:
`multihost_utils.reached_preemption_sync_point(i)`. `jax.distributed.initialize` starts TSL's preemption notifier,
a C-level SIGTERM handler polled once a second; on a notice the coordination service tells every process, each
reports the id of its latest call, and the call with id max + 1 returns True on every process. Measured here
(jax 0.10.2, CPU, gloo, coordinator on 127.0.0.1, SIGTERM to one of two processes, either one): both stop at the
same step. What else was measured, and what follows from it:
- A Python `signal.signal(SIGTERM, …)` installed after `jax.distributed.initialize` replaces TSL's handler: the
  notice never reaches the runtime and no process stops. So with several processes we install no handler
  (`signal.getsignal` then says SIG_DFL, although TSL's handler is the active one).
- A notice before the first call gives sync point 1; with absolute step ids a resumed run (first id = its start
  step) would never reach it and would ignore the notice. Every process resumes from the same checkpoint, so we
  count ids from `start` instead: a notice during start-up stops the run after its first step.
- The id is whatever the latest caller passed, and Orbax's `CheckpointManager.save` also calls with the absolute
  step (main thread and finalize thread). With ids counted from `start`, a notice landing between such a call and
  our next one delays the stop by `start` steps (every process still agrees on it); fresh runs are unaffected.
"""

from __future__ import annotations

import signal

import jax
from jax.experimental import multihost_utils


class Preemption:
    """Call `should_stop(step)` once per step on every process, with steps from `start` on; `close()` when done."""

    def __init__(self, start: int = 0):
        self.start = start
        self.stopped = False  # should_stop has returned True
        self._signalled = False
        self._multiprocess = jax.process_count() > 1
        self._previous = None if self._multiprocess else signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self._signalled = True

    def should_stop(self, step: int) -> bool:
        """True (from then on) once the run must stop before this step: the same step on every process."""
        if not self.stopped:
            if self._multiprocess:
                self.stopped = multihost_utils.reached_preemption_sync_point(step - self.start)
            else:
                self.stopped = self._signalled
        return self.stopped

    def close(self) -> None:
        """Puts back the SIGTERM handler that was there before (one process; with several there is none of ours)."""
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
