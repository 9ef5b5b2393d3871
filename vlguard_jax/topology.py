"""Named TPU slices on any machine: libtpu describes a slice's devices and compiles for them, no TPU attached.

`slice_devices("v5e:2x4")` gives the 8 (abstract) devices of a v5e 2×4 slice; a mesh over them lowers and
compiles a jitted function exactly as on the slice, and libtpu checks the program against the chips' HBM.
`compile_verdict(lowered)` turns that compile into a verdict: the compiled program, or the compiler's
"Ran out of memory in memory space hbm" message. Needs libtpu: `pip install -e ".[tpu]"`.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import os
import re

import jax

# Names checked against libtpu 0.0.42 (jax 0.10.2): `GENERATION:SHAPE`, chips per axis; the smallest slice
# is one host (2x2 chips). v2, v3, v4 and tpu7x expose two devices per chip, the others one.
KNOWN_GENERATIONS = ("v2", "v3", "v4", "v5e", "v5p", "v6e", "tpu7x")
EXAMPLES = ("v5e:2x2", "v5e:2x4", "v5e:4x4", "v5e:16x16", "v5p:2x2x1", "v5p:2x2x2", "v6e:2x2", "v6e:2x4",
            "v4:2x2x1", "tpu7x:2x2x1")
_OUT_OF_MEMORY = "RESOURCE_EXHAUSTED"


class TopologyError(ValueError):
    """A slice libtpu cannot describe (bad name, libtpu missing)."""


def libtpu_available() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def _on_tpu_host() -> bool:
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def slice_devices(topology: str) -> list[jax.Device]:
    """The devices of a named TPU slice (e.g. `v5e:2x4`), for meshes that are compiled, never run."""
    if not libtpu_available():
        raise TopologyError(f"planning for TPU topology {topology!r} needs libtpu, which is not installed: "
                            f"pip install -e \".[tpu]\" (jax[tpu] at this jax version)")
    if not _on_tpu_host():  # no chips here to guard or to find hosts for
        os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")  # else libtpu asks GCE's metadata server
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # else one libtpu process at a time (a lockfile)
    os.environ.setdefault("TPU_STDERR_LOG_LEVEL", "1")  # libtpu's warnings (its partitioner's) on stderr, not a file
    from jax.experimental import topologies

    if not re.fullmatch(r"[a-z0-9]+:\d+(x\d+)+", topology):
        raise TopologyError(f"TPU topology {topology!r} is not GENERATION:SHAPE (chips per axis), e.g. "
                            f"{', '.join(EXAMPLES)}")
    try:
        description = topologies.get_topology_desc(topology_name=topology, platform="tpu")
    except jax.errors.JaxRuntimeError as e:
        message = str(e).removeprefix("INVALID_ARGUMENT: ")
        raise TopologyError(f"libtpu rejects TPU topology {topology!r}: {message}. Known generations: "
                            f"{', '.join(KNOWN_GENERATIONS)}; e.g. {', '.join(EXAMPLES)}") from None
    return list(description.devices)


def device_kind(devices) -> str:
    """The device kind as the compiler reports it ("TPU v5 lite" for v5e, "TPU v5" for v5p, "cpu", …)."""
    return devices[0].device_kind


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A compile's outcome: `compiled` when the program fits the devices, else the compiler's `message`."""

    fits: bool
    compiled: jax.stages.Compiled | None = None
    message: str | None = None

    def hbm(self) -> tuple[int, int] | None:
        """(bytes needed, bytes available) per device, as an out-of-memory message states them (None when it
        does not). libtpu words it as "Used 20.5G of 15.75G hbm" (the whole program) or as "the total memory
        required for HLO temporaries (16.68G) exceeds available HBM (15.75G)" (temporaries alone)."""
        if self.message is None:
            return None
        number = r"([\d.]+)([KMGT]?)"
        found = (re.search(rf"Used {number} of {number} hbm", self.message)
                 or re.search(rf"required for HLO temporaries \({number}\) exceeds available HBM \({number}\)",
                              self.message))
        if not found:
            return None
        scale = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
        return int(float(found[1]) * scale[found[2]]), int(float(found[3]) * scale[found[4]])


def compile_verdict(lowered: jax.stages.Lowered) -> Verdict:
    """Compile; an out-of-memory failure (libtpu's HBM check) is a verdict, any other failure an error."""
    try:
        return Verdict(True, compiled=lowered.compile())
    except jax.errors.JaxRuntimeError as e:
        if _OUT_OF_MEMORY not in str(e):
            raise
        return Verdict(False, message=str(e))
