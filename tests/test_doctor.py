"""`vlguard-jax env` on this CPU machine (8 virtual devices): backend, devices, each part's attention, the install
check against faked hardware; and `train`'s warning before a 7B model trains on the CPU."""

import json
import os
import subprocess
import sys

import jax
import pytest
import yaml

import vlguard_jax.train.loop
from vlguard_jax.train.loop import RunResult
from vlguard_jax.train.totals import Totals
from vlguard_jax import doctor
from vlguard_jax.cli import main
from vlguard_jax.config import load_config
from vlguard_jax.models.config import KNOWN_ARCHITECTURES

TINY_CONFIG = "configs/tiny_cpu.yaml"


def test_report_names_backend_devices_and_each_parts_attention():
    r = doctor.report()
    assert (r["backend"], r["devices"], r["local_devices"], r["processes"], r["process_index"]) == ("cpu", 8, 8, 1, 0)
    assert r["jax"] == jax.__version__ and r["memory_per_device"] is None
    assert {part: c["implementation"] for part, c in r["attention"].items()} == {
        "decoder": "ours", "vision": "ours", "decode": "ours"}
    assert r["model"]["source"] == "llava-1.5-7b" and not r["model"]["config_given"]
    assert r["model"]["parameters"] == pytest.approx(7.06e9, rel=1e-3)
    text = doctor.format_report(r)
    assert "cpu: 8 × cpu" in text and "decoder: ours; vision: ours; decode: ours (on cpu)" in text


def test_report_follows_the_configs_attention_and_architecture():
    r = doctor.report(TINY_CONFIG, ["model.attention=xla"])
    assert {c["implementation"] for c in r["attention"].values()} == {"xla"}
    assert r["model"]["config_given"] and r["model"]["parameters"] < 1e8
    text_only = doctor.report(None, [], "llama-2-7b")["attention"]
    assert set(text_only) == {"decoder", "decode"}  # no vision tower
    cudnn = doctor.report(TINY_CONFIG, ["model.attention=cudnn"])  # reported, not raised: env is the diagnosis
    assert "needs a GPU" in cudnn["attention"]["error"] and "error:" in doctor.format_report(cudnn)


def test_mismatch_names_the_install_line(monkeypatch):
    monkeypatch.setattr(doctor, "accelerators", lambda: {"gpu": True, "tpu": False})
    monkeypatch.setattr(doctor, "plugins", lambda: {"libtpu": "0.0.42.1"})
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    r = doctor.report(TINY_CONFIG)
    assert r["mismatch"] == "an NVIDIA GPU is present but jaxlib is the CPU build: pip install -e '.[cuda]'"
    assert "mismatch: an NVIDIA GPU" in doctor.format_report(r)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert "JAX_PLATFORMS=cpu keeps jax on the CPU" in doctor.mismatch("cpu", {"gpu": True, "tpu": False}, {})
    monkeypatch.delenv("JAX_PLATFORMS")
    tpu = {"gpu": False, "tpu": True}
    assert doctor.mismatch("cpu", tpu, {}).endswith("pip install -e '.[tpu]'")
    assert "libtpu 0.0.42.1 is installed, but jax fell back" in doctor.mismatch("cpu", tpu, {"libtpu": "0.0.42.1"})
    # libtpu without a TPU only compiles plans; a GPU backend on a GPU machine is what it should be
    assert doctor.mismatch("cpu", {"gpu": False, "tpu": False}, {"libtpu": "0.0.42.1"}) is None
    assert doctor.mismatch("gpu", {"gpu": True, "tpu": False}, {"jax-cuda12-plugin": "0.10.2"}) is None


def seven_b_config(directory):
    path = directory / "llava7b.yaml"
    path.write_text(yaml.safe_dump({"model": {"architecture": KNOWN_ARCHITECTURES["llava-1.5-7b"].to_hf(),
                                              "dtype": "bfloat16"}}))
    return path


def test_cpu_warning_for_a_7b_model_allocates_nothing(tmp_path):
    config = load_config(seven_b_config(tmp_path))
    live = len(jax.live_arrays())
    warning = doctor.cpu_warning(config)
    assert len(jax.live_arrays()) == live
    assert warning.startswith("7.06B parameters on cpu: this will be very slow")
    assert "pip install -e '.[cuda]'" in warning
    assert doctor.cpu_warning(config, backend="gpu") is None
    assert doctor.cpu_warning(load_config(TINY_CONFIG)) is None


def test_train_warns_once_before_training(tmp_path, monkeypatch, capsys):
    ran = []
    done = RunResult(steps=0, total_steps=0, status="finished", workdir=tmp_path, totals=Totals())
    monkeypatch.setattr(vlguard_jax.train.loop, "train", lambda config, workdir: ran.append(workdir) or done)
    assert main(["train", "--config", str(seven_b_config(tmp_path)), "--workdir", str(tmp_path / "run")]) == 0
    assert list(map(str, ran)) == [str(tmp_path / "run")] and capsys.readouterr().err.count("parameters on cpu") == 1
    assert main(["train", "--config", TINY_CONFIG, "--workdir", str(tmp_path / "tiny")]) == 0
    assert "parameters on cpu" not in capsys.readouterr().err


def test_env_command(capsys):
    assert main(["env", "--json", "--config", TINY_CONFIG, "model.attention=xla"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["backend"] == "cpu" and r["attention"]["decoder"]["implementation"] == "xla"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-m", "vlguard_jax.cli", "env"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "backend  cpu: 8 × cpu" in result.stdout and "decoder: ours" in result.stdout
