"""No tensor is replicated whole to be resharded ("Involuntary full rematerialization") in the train step on the
meshes a run uses: full fine-tuning (a trainable embedding table) and LoRA, data × fsdp as two hosts of four
devices split it, and with tensor parallelism, compiled for 8 virtual CPUs and by libtpu for a v5e:2x4 slice.
Each plan runs the CLI in a subprocess without the persistent compile cache (a cached compile logs nothing)."""

import json
import os
import subprocess
import sys

import pytest

from tests.train_fixtures import environment, write_config
from vlguard_jax import reshard_check, topology

WARNING = ("W1203 07:35:34.141555 3356 spmd_partitioner.cc:656] [SPMD] Involuntary full rematerialization. The "
           "compiler cannot go from sharding {devices=[8,1,1]<=[8]} to {devices=[1,1,4,2]<=[2,4]T(1,0) "
           "last_tile_dim_replicate} efficiently for HLO operation %select_n.319 = f32[1,128,128]{2,1,0} select(%a, "
           "%b, %c), sharding={devices=[8,1,1]<=[8]}. As the last resort, SPMD will replicate the tensor")


def test_capture_reads_the_partitioners_warnings_from_the_process_stderr(capfd):
    with reshard_check.captured_reshards() as found:
        os.write(2, f"{WARNING}\nsomething else the compiler said\n".encode())
    assert found == ["{devices=[8,1,1]<=[8]} → {devices=[1,1,4,2]<=[2,4]T(1,0) last_tile_dim_replicate}: "
                     "%select_n.319 = f32[1,128,128]{2,1,0}"]
    assert capfd.readouterr().err == "something else the compiler said\n"  # the rest is passed on


def _plan(tmp_path, target: list[str], mesh: str, mode: str) -> dict:
    out = tmp_path / f"plan_{mode}_{mesh}.json"
    env = environment(8)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    command = [sys.executable, "-m", "vlguard_jax.cli", "plan", "--config", str(write_config(tmp_path)), *target,
               "--mesh", mesh, f"train.mode={mode}", "--out", str(out)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    plan = json.loads(out.read_text())
    assert "involuntary full rematerialization" not in result.stdout
    return plan


@pytest.mark.parametrize("mode,mesh", [("full", "data=2,fsdp=4,tensor=1"), ("full", "data=2,fsdp=2,tensor=2"),
                                       ("lora", "data=2,fsdp=4,tensor=1")])
def test_the_train_step_reshards_nothing_whole_on_8_cpu_devices(tmp_path, mode, mesh):
    plan = _plan(tmp_path, ["--devices", "8"], mesh, mode)
    assert plan["devices"] == 8 and plan["mode"] == mode
    assert plan["involuntary_rematerializations"] == []


@pytest.mark.skipif(not topology.libtpu_available(), reason='libtpu is not installed: pip install -e ".[tpu]"')
def test_the_train_step_reshards_nothing_whole_on_a_v5e_slice(tmp_path):
    plan = _plan(tmp_path, ["--topology", "v5e:2x4"], "data=2,fsdp=4,tensor=1", "full")
    assert plan["device_kind"] == "TPU v5 lite" and plan["fits"] is True
    assert plan["involuntary_rematerializations"] == []
