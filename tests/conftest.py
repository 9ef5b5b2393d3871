"""Test session set-up: 8 virtual CPU devices (must precede the first jax import), offline hub, compile cache."""

import os
import tempfile

# CPU unless told otherwise: with libtpu installed (the `tpu` extra) jax would otherwise probe for a TPU first.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "vlguard-jax-test-cache"))

import jax  # noqa: E402

jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

try:
    import torch  # noqa: E402

    torch.set_num_threads(max(1, os.cpu_count() or 1))
except ImportError:
    pass
