"""The run setup loads straight into shards: sampled through setup (and through eval's restore), no device ever
holds more than 1.3 × its share of the run's arrays + the largest single tensor; restore reads parameters only."""

import gc
import threading
import time

import jax
import numpy as np
import pytest

from hf_fixtures import build_hf, save_layout, tiny_tokenizer
from vlguard_jax.config import config_from_dict, dump_config
from vlguard_jax.parallel import make_mesh
from vlguard_jax.train.checkpointing import Checkpointer
from vlguard_jax.train.setup import build
from vlguard_jax.train.trained import load_trained


def device_bytes() -> dict:
    """Bytes each device holds for every live array, from shardings alone (no data is touched)."""
    held = {}
    for array in jax.live_arrays():
        try:
            shard = int(np.prod(array.sharding.shard_shape(array.shape))) * array.dtype.itemsize
            devices = array.sharding.device_set
        except Exception:  # deleted or donated while we looked
            continue
        for device in devices:
            held[device] = held.get(device, 0) + shard
    return held


class PeakSampler:
    """Samples `device_bytes()` on a thread (and at each `probe()`), keeping each device's peak above a baseline."""

    def __init__(self):
        gc.collect()
        self.baseline = device_bytes()
        self.peak = {}
        self._running = False

    def probe(self, *_):
        for device, held in device_bytes().items():
            grown = held - self.baseline.get(device, 0)
            self.peak[device] = max(self.peak.get(device, 0), grown)

    def __enter__(self):
        self._running = True
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self):
        while self._running:
            self.probe()
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._running = False
        self._thread.join()
        self.probe()


def share(tree) -> int:
    """One device's bytes of the arrays (or `ShapeDtypeStruct`s with shardings) of `tree`: its slices."""
    return sum(int(np.prod(a.sharding.shard_shape(a.shape))) * a.dtype.itemsize for a in jax.tree.leaves(tree))


def largest(tree, itemsize=None) -> int:
    return max(int(np.prod(a.shape)) * (itemsize or a.dtype.itemsize) for a in jax.tree.leaves(tree))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = save_layout(build_hf("mha", seed=41), tmp_path_factory.mktemp("ckpt"), "hf_save")
    tiny_tokenizer(path)
    return path


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_training_setup_holds_only_each_devices_share(checkpoint, mode, tmp_path):
    assert jax.device_count() == 8, "conftest sets 8 virtual CPU devices"
    config = config_from_dict({"model": {"path": str(checkpoint)}, "train": {"mode": mode, "lora": {"rank": 8}},
                               "mesh": {"fsdp": 8}}, "test")
    mesh = make_mesh(fsdp=8)
    with PeakSampler() as sampler:
        setup = build(config, mesh, on_tensor=sampler.probe)
        state = setup.init_state()
    allowed = share(setup.frozen) + share(state.params) + share(state.opt_state)
    bound = 1.3 * allowed + max(largest(setup.frozen), largest(state.params))
    unsharded = sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in jax.tree.leaves((setup.frozen, state)))
    assert unsharded > 2 * bound, "the model must be big enough that an unsharded copy would break the bound"
    assert len(sampler.peak) == 8
    assert max(sampler.peak.values()) <= bound, (sampler.peak, bound)
    kernel = state.params["language_model"]["model"]["layers"]["mlp"]["up_proj"]["kernel"] if mode == "full" else \
        state.params["language_model"]["model"]["layers"]["mlp"]["up_proj"]["lora_a"]
    assert kernel.dtype == np.float32 and len(kernel.sharding.device_set) == 8
    assert {s.data.shape[1] for s in kernel.addressable_shards} == {kernel.shape[1] // 8}  # split along embed


def test_eval_restore_reads_parameters_only_onto_any_mesh(checkpoint, tmp_path):
    config = config_from_dict({"model": {"path": str(checkpoint)}, "train": {"mode": "full"},
                               "mesh": {"fsdp": 8}}, "test")
    workdir = tmp_path / "run"
    workdir.mkdir()
    dump_config(config, workdir / "config.yaml")
    setup = build(config, make_mesh(fsdp=8))
    state = setup.init_state()
    state = state.replace(params=jax.tree.map(lambda p: p + 1.0, state.params))  # trained: unlike the base
    checkpointer = Checkpointer(workdir / "checkpoints")
    checkpointer.save(3, state, {"step": 3})
    checkpointer.wait()
    checkpointer.close()
    saved_up = np.asarray(state.params["language_model"]["model"]["layers"]["mlp"]["up_proj"]["kernel"])
    frozen_share, params_share = share(setup.frozen), share(setup.params)
    biggest = max(largest(setup.frozen), largest(setup.params))
    del setup, state

    with PeakSampler() as sampler:
        model, _ = load_trained(workdir, mesh=make_mesh(fsdp=8))
    assert max(sampler.peak.values()) <= 1.3 * (frozen_share + params_share) + biggest, sampler.peak
    assert max(sampler.peak.values()) < frozen_share + 2 * params_share  # no Adam moments were read
    up = model.language_model.model.layers.mlp.up_proj.kernel[...]
    assert len(up.sharding.device_set) == 8
    np.testing.assert_array_equal(np.asarray(up), saved_up)

    for devices in (4, 1):  # saved on 8 devices, restored on fewer
        mesh = make_mesh(fsdp=devices, devices=jax.devices()[:devices])
        model, _ = load_trained(workdir, mesh=mesh)
        up = model.language_model.model.layers.mlp.up_proj.kernel[...]
        assert len(up.sharding.device_set) == devices
        np.testing.assert_array_equal(np.asarray(up), saved_up)
