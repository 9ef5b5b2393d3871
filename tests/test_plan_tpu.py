"""`plan --topology`: the train step compiled by libtpu for a TPU slice (v5e:2x2, 4 chips of 16 GB) on this
machine, no TPU attached. Each plan runs the CLI in a subprocess (a process of its own for libtpu); skipped
when libtpu (the `tpu` extra) is not installed."""

import copy
import json
import subprocess
import sys

import pytest

from tests.train_fixtures import TINY, environment, write_config
from vlguard_jax import topology
from vlguard_jax.config import ConfigError, config_from_dict
from vlguard_jax.models.config import LlavaConfig

needs_libtpu = pytest.mark.skipif(not topology.libtpu_available(),
                                  reason='libtpu is not installed: pip install -e ".[tpu]" to compile for TPU slices')


def _plan(tmp_path, raw: dict, *flags: str) -> tuple[dict, str]:
    out = tmp_path / "plan.json"
    command = [sys.executable, "-m", "vlguard_jax.cli", "plan", "--config", str(write_config(tmp_path, raw)),
               "--topology", "v5e:2x2", "--out", str(out), *flags]
    result = subprocess.run(command, env=environment(1), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text()), result.stdout


@needs_libtpu
def test_tiny_plan_on_v5e_matches_a_hand_count(tmp_path):
    result, stdout = _plan(tmp_path, TINY)
    assert result["fits"] is True and "v5e:2x2 (TPU v5 lite): fits" in stdout
    assert result["topology"] == "v5e:2x2" and result["device_kind"] == "TPU v5 lite" and result["devices"] == 4
    # auto on TPU: the splash kernel in the decoder and the tower, a Mosaic custom call in the compiled program
    assert result["attention"] == "splash" and result["attention_parts"]["vision"]["implementation"] == "splash"
    assert "tpu_custom_call" in result["custom_calls"]

    # Hand count per device, from the config's shapes. fp32 throughout (model.dtype is float32); fsdp=4 splits
    # every matrix 4 ways; 8 rows over 4 devices, no accumulation: 2 rows of 256 tokens per device.
    llava = LlavaConfig.from_hf(TINY["model"]["architecture"])
    text, vision, rank = llava.text, llava.vision, TINY["train"]["lora"]["rank"]
    d, f, V, L = text.hidden_size, text.intermediate_size, text.vocab_size, text.num_layers
    q, kv = text.num_heads * text.head_dim, text.num_kv_heads * text.head_dim
    rows, T, devices, fp32 = 2, TINY["data"]["max_length"], 4, 4
    decoder = 2 * V * d + L * (d * (2 * q + 2 * kv) + 3 * d * f)  # embeddings + head, attention, MLP
    tower = (vision.patch_size ** 2 * vision.num_channels + vision.num_patches + 1) * vision.hidden_size \
        + vision.num_layers * (4 * vision.hidden_size ** 2 + 2 * vision.hidden_size * vision.intermediate_size)
    projector = vision.hidden_size * d + d * d
    adapters = L * rank * ((d + q) + 2 * (d + kv) + (q + d) + 2 * (d + f) + (f + d))  # on q,k,v,o,gate,up,down
    frozen = (decoder + tower) * fp32 / devices
    trainable = (adapters + projector) * fp32 / devices
    adam = 2 * trainable  # two moments per trainable weight
    # Activations (no remat, no loss or attention chunks): the fp32 logits [rows, T, V] (the cross-entropy's
    # backward works in place on them: one copy); per layer, the attention probabilities [rows, heads, T, T]
    # and about 16 vectors of width d per token saved for the backward (residual stream, norms, q/k/v, attention
    # output, and the MLP's gate, up and product at f = 2d each).
    logits = rows * T * V * fp32
    saved = L * rows * (text.num_heads * T * T + 16 * T * d) * fp32
    hand = frozen + trainable + adam + logits + saved
    got = result["per_device_bytes"]
    assert got["frozen_params"] == pytest.approx(frozen, rel=0.2)
    assert got["trainable_params"] == pytest.approx(trainable, rel=0.2)
    assert got["optimizer_state"] == pytest.approx(adam, rel=0.2)
    assert got["peak"] == pytest.approx(hand, rel=0.2), (got, hand)


@needs_libtpu
def test_without_the_kernel_the_program_has_no_mosaic_call(tmp_path):
    raw = copy.deepcopy(TINY)
    raw["model"]["attention"] = "ours"
    result, _ = _plan(tmp_path, raw)
    assert result["attention"] == "ours" and "tpu_custom_call" not in result["custom_calls"]


@needs_libtpu
def test_an_over_full_config_does_not_fit_and_the_search_finds_the_largest_batch(tmp_path):
    # A 2^20-token vocabulary at 2048 positions: 8 GiB of fp32 logits per row. At TINY's 2 rows per device the
    # step needs more than a v5e chip's 16 GB; the search halves to 1 row, which fits, and stops (2 compiles).
    raw = copy.deepcopy(TINY)
    raw["model"]["architecture"]["text_config"].update(vocab_size=2**20, max_position_embeddings=2048)
    raw["data"].update(max_length=2048, buckets=[2048])
    result, stdout = _plan(tmp_path, raw, "--max-batch")
    assert result["fits"] is False and result["per_device_batch"] == 2
    assert "RESOURCE_EXHAUSTED" in result["compiler_message"] and "HBM" in result["compiler_message"]
    assert result["hbm_bytes_needed"] > result["hbm_bytes_available"] > 15 * 2**30
    assert result["per_device_bytes"]["peak"] is None and "does not fit: RESOURCE_EXHAUSTED" in stdout
    best = result["max_per_device_batch"]
    assert best == 1 and result["max_batch_probes"] == {"1": True, "2": False}  # fits; its double does not
    assert "largest per-device batch that fits at seq 2048: 1" in stdout


@needs_libtpu
def test_a_bad_topology_names_itself_and_the_known_ones():
    with pytest.raises(topology.TopologyError, match=r"'v5e:3x3'.*v5e:2x4"):
        topology.slice_devices("v5e:3x3")
    with pytest.raises(topology.TopologyError, match=r"'v5litepod-4' is not GENERATION:SHAPE.*v6e:2x4"):
        topology.slice_devices("v5litepod-4")
    assert len(topology.slice_devices("v5p:2x2x2")) == 8


def test_without_libtpu_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(topology, "libtpu_available", lambda: False)
    with pytest.raises(topology.TopologyError, match=r'pip install -e "\.\[tpu\]"'):
        topology.slice_devices("v5e:2x2")


def test_max_batch_needs_a_topology():
    from vlguard_jax.plan import plan

    with pytest.raises(ConfigError, match="TPU devices only"):
        plan(config_from_dict(TINY, "tiny"), 1, max_batch=True)
