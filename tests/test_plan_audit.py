"""`plan --audit`: the planned prefill is the judge's own (same numbers on 8 virtual devices), its FLOPs formula
matches XLA's count, the Llama Guard 3 shapes have Meta's parameter counts, and (with libtpu) Llama Guard 3 8B
compiles within a v5e:2x4 slice's HBM at 64 × 512 while an absurd batch does not."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from hf_fixtures import save_llama
from tests.train_fixtures import environment
from vlguard_jax import topology
from vlguard_jax.checkpoints.hf import load_language_model
from vlguard_jax.cli import main
from vlguard_jax.generate import Generator
from vlguard_jax.models.config import KNOWN_ARCHITECTURES, LlavaConfig, TextConfig
from vlguard_jax.models.llama import LlamaForCausalLM
from vlguard_jax.parallel import place_rows
from vlguard_jax.plan_audit import audit_mesh, lower_prefill, plan_audit, prefill_flops_per_token

needs_libtpu = pytest.mark.skipif(not topology.libtpu_available(),
                                  reason='libtpu is not installed: pip install -e ".[tpu]" to compile for TPU slices')


def test_the_planned_prefill_is_the_judges_on_8_devices(tmp_path):
    if jax.device_count() < 8:
        pytest.skip("needs 8 (virtual) devices: XLA_FLAGS=--xla_force_host_platform_device_count=8")
    save_llama(tmp_path, tied=False, seed=3)
    mesh = audit_mesh(8, jax.devices())
    assert dict(mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 1}
    model = load_language_model(tmp_path, mesh=mesh)  # the judge's loader, fp32 here
    generator = Generator(model, pad_id=0, stop_ids=[2], batch_size=8, buckets=(64,), mesh=mesh)
    rng = np.random.RandomState(3)
    prompts = [rng.randint(3, 128, n) for n in (64, 17, 40, 5, 33)]
    expected = generator.next_token_log_probs(prompts, [None] * len(prompts))

    lowered, weights = lower_prefill(model.config, mesh, 8, 64, "float32")
    ids, mask = np.zeros((8, 64), np.int32), np.zeros((8, 64), bool)
    for row, prompt in enumerate(prompts):  # left-padded to the bucket; filler rows see one token
        ids[row, 64 - len(prompt):], mask[row, 64 - len(prompt):] = prompt, True
    mask[len(prompts):, -1] = True
    got = lowered.compile()(generator.graphdef, generator.state, place_rows(ids, mesh), place_rows(mask, mesh), None)
    assert np.abs(expected).max() > 1.0
    np.testing.assert_array_equal(np.asarray(got)[:len(prompts)], expected)
    held = sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(nnx.state(model)))
    assert weights == held  # the bytes of weights each device of the loaded judge holds


def test_prefill_flops_match_xla_on_one_layer():
    """XLA counts a scanned layer once, so one layer; its dense attention also computes the masked half of the
    causal square, which the formula (a lower bound) leaves out."""
    text = TextConfig(vocab_size=1024, hidden_size=256, intermediate_size=1024, num_layers=1, num_heads=4,
                      num_kv_heads=2, head_dim=64, max_position_embeddings=512)
    rows, length = 4, 128
    lowered, _ = lower_prefill(text, audit_mesh(rows, jax.devices()[:1]), rows, length, "float32")
    xla = lowered.compile().cost_analysis()["flops"]
    masked_half = 2 * length * text.num_heads * text.head_dim * text.num_layers
    ours = rows * length * (prefill_flops_per_token(text, length) + masked_half)
    assert abs(ours - xla) / xla < 0.05, (ours, xla)


@pytest.mark.parametrize("name,params", [("llama-guard-3-8b", 8_030_261_248), ("llama-guard-3-1b", 1_235_814_400)])
def test_llama_guard_3_shapes_have_the_published_parameter_counts(name, params):
    text = KNOWN_ARCHITECTURES[name].text
    model = nnx.eval_shape(lambda: LlamaForCausalLM(text, rngs=nnx.Rngs(0)))
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model))) == params
    assert (text.rope_type, text.rope_theta, KNOWN_ARCHITECTURES[name].vision) == ("llama3", 500000.0, None)


def test_plan_needs_a_config_or_audit_but_not_both(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["plan", "--devices", "8"])
    assert exit.value.code == 2 and "one of the arguments --config --audit is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["plan", "--audit", "--config", "c.yaml", "--devices", "8"])
    assert "argument --config: not allowed with argument --audit" in capsys.readouterr().err


@needs_libtpu
def test_llama_guard_3_8b_fits_a_v5e_2x4_slice_at_64_by_512(tmp_path):
    out = tmp_path / "audit.json"
    command = [sys.executable, "-m", "vlguard_jax.cli", "plan", "--audit", "--architecture", "llama-guard-3-8b",
               "--topology", "v5e:2x4", "--batch", "64", "--prompt-length", "512", "--out", str(out)]
    run = subprocess.run(command, env=environment(1), capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout)
    assert result == json.loads(out.read_text())
    assert result["fits"] is True and result["device_kind"] == "TPU v5 lite" and result["devices"] == 8
    assert result["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    assert "tpu_custom_call" in result["custom_calls"]  # the splash kernel, as the judge runs on TPU
    weights, peak = result["per_device_bytes"]["weights"], result["per_device_bytes"]["peak"]
    assert 8_030_261_248 * 2 / 8 <= weights < 8_030_261_248 * 2 / 8 * 1.001  # bf16, an eighth each
    assert weights < peak < 16 * 2**30
    flops = prefill_flops_per_token(KNOWN_ARCHITECTURES["llama-guard-3-8b"].text, 512)
    assert result["model_flops_per_token"] == flops
    assert result["seconds_per_million_tokens_at_peak"] == pytest.approx(flops * 1e6 / (8 * 197e12))


@needs_libtpu
def test_an_absurd_batch_does_not_fit():
    result = plan_audit("llama-guard-3-8b", "v5e:2x4", batch=16384, prompt_length=512)
    assert result["fits"] is False and "RESOURCE_EXHAUSTED" in result["compiler_message"]
    assert result["hbm_bytes_needed"] > result["hbm_bytes_available"] > 15 * 2**30
    assert result["per_device_bytes"]["peak"] is None


@needs_libtpu
def test_the_largest_batch_fits_and_one_more_row_per_device_does_not():
    """A one-layer judge over 32768-token prompts with a 32768-wide MLP (about 4 GiB of fp32 activations a row): 2
    rows per device of a v5e:2x2 slice fit (the plan's own compile), 4 do not, 3 do. The search answers in
    --batch-size units, a multiple of the 4 devices."""
    text = TextConfig(vocab_size=256, hidden_size=256, intermediate_size=32768, num_layers=1, num_heads=2,
                      num_kv_heads=1, head_dim=128, max_position_embeddings=32768)
    probes = []
    result = plan_audit(LlavaConfig.text_only(text), "v5e:2x2", batch=8, prompt_length=32768, dtype="float32",
                        max_batch=True, log=probes.append)
    assert result["fits"] is True and result["max_batch"] == 12
    assert result["max_batch_probes"] == {8: True, 12: True, 16: False}
    assert len(probes) == 2 and probes[0].startswith("4 rows per device: does not fit")
