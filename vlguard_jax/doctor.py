"""`vlguard-jax env`: what this machine runs on, whether the installed jaxlib matches its hardware, and which
attention each model part gets here; and the warning `train` gives before a large model trains on a CPU.

A jaxlib without the GPU or TPU plugin runs on the CPU without a word, and a 7B model there trains at a crawl, so
the hardware is looked for independently of jax (device nodes, `nvidia-smi`, the PCI bus) and a mismatch names
the install line that fixes it. libtpu without a TPU is fine: it compiles TPU plans (`vlguard-jax plan
--topology`) on any machine.
"""

from __future__ import annotations

import glob
import importlib.metadata
import os
import shutil
from pathlib import Path
from typing import Sequence

import jax
import jaxlib
import numpy as np
from flax import nnx

from vlguard_jax.config import Config, ConfigError, load_config
from vlguard_jax.models import attention
from vlguard_jax.models.config import LlavaConfig

DEFAULT_ARCHITECTURE = "llava-1.5-7b"  # what `env` describes when given no config: the published configs' model
SLOW_ON_CPU = 1e9  # parameters above which `train` warns that a CPU run will be very slow
PLUGINS = ("jax-cuda12-plugin", "jax-cuda13-plugin", "libtpu")
INSTALL = {"gpu": "pip install -e '.[cuda]'", "tpu": "pip install -e '.[tpu]'"}
GOOGLE_PCI_VENDOR = "0x1ae0"  # TPU chips sit on the PCI bus under Google's vendor id


def accelerators() -> dict[str, bool]:
    """Which accelerators this machine has, whatever jax sees: an NVIDIA GPU (`/dev/nvidia0`, or `nvidia-smi` on
    PATH), a TPU (`/dev/accel*` on v2–v4 VMs; on v5e and later, whose chips are VFIO devices, Google's PCI vendor
    id)."""
    vendors = (Path(p).read_text().strip() for p in glob.glob("/sys/bus/pci/devices/*/vendor"))
    return {"gpu": os.path.exists("/dev/nvidia0") or shutil.which("nvidia-smi") is not None,
            "tpu": bool(glob.glob("/dev/accel*")) or GOOGLE_PCI_VENDOR in vendors}


def plugins() -> dict[str, str]:
    """The installed jax plugins (GPU builds, libtpu) and their versions."""
    found = {}
    for name in PLUGINS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def mismatch(backend: str, present: dict[str, bool], installed: dict[str, str]) -> str | None:
    """Why jax runs on the CPU of a machine with a GPU or TPU, and the fix; None when nothing is amiss."""
    if backend != "cpu":
        return None
    forced = os.environ.get("JAX_PLATFORMS", "").strip().lower() == "cpu"
    for kind, name, plugin in (("gpu", "an NVIDIA GPU", "jax-cuda"), ("tpu", "a TPU", "libtpu")):
        if not present[kind]:
            continue
        if forced:
            return f"{name} is present but JAX_PLATFORMS=cpu keeps jax on the CPU: unset it"
        ours = [f"{p} {v}" for p, v in installed.items() if p.startswith(plugin)]
        if not ours:
            return f"{name} is present but jaxlib is the CPU build: {INSTALL[kind]}"
        hint = ("check the driver (nvidia-smi) and that the plugin's version is jaxlib's" if kind == "gpu" else
                "another process may hold the TPU (see /tmp/libtpu_lockfile), or libtpu does not match jaxlib")
        return (f"{name} is present and {', '.join(ours)} is installed, but jax fell back to the CPU: {hint} "
                f"(jaxlib {jaxlib.__version__})")
    return None


def parameters(llava: LlavaConfig) -> int:
    """The model's parameter count, from its abstract shapes (nothing is allocated)."""
    from vlguard_jax.models.llava import LlavaForConditionalGeneration

    model = nnx.eval_shape(lambda: LlavaForConditionalGeneration(llava, rngs=nnx.Rngs(0)))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def report(config_path: str | os.PathLike | None = None, overrides: Sequence[str] = (),
           architecture: str | None = None) -> dict:
    """This process's backend, devices, versions and install check, and each model part's attention here for the
    model of the config at `config_path` (with `overrides`), or the known `architecture`. Without a config:
    llava-1.5-7b's shapes in bfloat16 (the published configs' model), `overrides` applied."""
    from vlguard_jax.generate.capacity import memory_limit
    from vlguard_jax.plan import model_config
    from vlguard_jax.train.setup import attention_choices

    given = config_path is not None
    config = load_config(config_path, list(overrides) if given else ["model.dtype=bfloat16", *overrides])
    has_model = config.model.path is not None or config.model.architecture is not None
    architecture = architecture or (None if has_model else DEFAULT_ARCHITECTURE)
    source = architecture or config.model.path or f"{config_path}'s model.architecture"
    backend, devices, installed = jax.default_backend(), jax.devices(), plugins()
    present = accelerators()
    llava = model_config(config, architecture)
    try:
        parts = attention_choices(config, llava, backend)
    except ConfigError as e:
        parts = {"error": str(e)}
    return {
        "backend": backend, "device_kind": devices[0].device_kind, "devices": len(devices),
        "local_devices": jax.local_device_count(), "processes": jax.process_count(),
        "process_index": jax.process_index(), "memory_per_device": memory_limit(jax.local_devices()),
        "jax": jax.__version__, "jaxlib": jaxlib.__version__, "plugins": installed, "hardware": present,
        "mismatch": mismatch(backend, present, installed),
        "model": {"source": source, "config_given": given,
                  "dtype": config.model.dtype, "attention": config.model.attention,
                  "parameters": parameters(llava)},
        "attention": parts, "auto_attention": dict(attention.AUTO),
    }


def format_report(r: dict) -> str:
    """`report`'s dict as `vlguard-jax env` prints it."""
    gib = lambda b: "not reported" if b is None else f"{b / 2**30:.1f} GiB"
    m = r["model"]
    found = [name for name, here in (("NVIDIA GPU", r["hardware"]["gpu"]), ("TPU", r["hardware"]["tpu"])) if here]
    model = (f"{m['source']}{'' if m['config_given'] else ' (no config given)'}: {_count(m['parameters'])} "
             f"parameters, {m['dtype']}, model.attention={m['attention']}")
    if "error" in r["attention"]:
        parts = f"error: {r['attention']['error']}"
    else:
        parts = "; ".join(f"{part}: {c['implementation']}" + (f" ({c['fallback_reason']})" if c["fallback_reason"]
                                                             else "") for part, c in r["attention"].items())
    lines = [
        ("backend", f"{r['backend']}: {r['devices']} × {r['device_kind']} ({r['local_devices']} local), process "
                    f"{r['process_index']} of {r['processes']}"),
        ("memory", f"{gib(r['memory_per_device'])} per device"),
        ("jax", f"{r['jax']}, jaxlib {r['jaxlib']}"
                + "".join(f", {name} {version}" for name, version in r["plugins"].items())),
        ("hardware", " and ".join(found) + " found" if found else "no NVIDIA GPU or TPU found"),
        ("install", f"mismatch: {r['mismatch']}" if r["mismatch"] else "jaxlib matches the hardware"),
        ("model", model),
        ("attention", f"{parts} (on {r['backend']})"),
        ("auto picks", ", ".join(f"{platform}: {name}" for platform, name in r["auto_attention"].items())),
    ]
    if "libtpu" in r["plugins"] and r["backend"] != "tpu":
        lines.append(("note", "libtpu compiles TPU plans on this machine (vlguard-jax plan --topology v5e:2x2); "
                              "its start-up warnings about TPU hosts are harmless here"))
    return "\n".join(f"{name:>10}  {value}" for name, value in lines)


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def cpu_warning(config: Config, backend: str | None = None) -> str | None:
    """The warning `train` prints before a model of over `SLOW_ON_CPU` parameters trains on the CPU (its shapes
    only are built: nothing is allocated); None otherwise, or when the model cannot be resolved (`train` then says
    why, in its own order)."""
    from vlguard_jax.checkpoints.tensors import CheckpointError
    from vlguard_jax.train.setup import model_config

    backend = backend or jax.default_backend()
    if backend != "cpu":
        return None
    try:
        count = parameters(model_config(config))
    except (ConfigError, CheckpointError, OSError):
        return None
    if count <= SLOW_ON_CPU:
        return None
    fix = mismatch(backend, accelerators(), plugins()) or (f"install the GPU/TPU build ({INSTALL['gpu']} on an "
                                                            f"NVIDIA GPU, {INSTALL['tpu']} on a TPU VM)")
    return f"{_count(count)} parameters on cpu: this will be very slow; {fix}"
