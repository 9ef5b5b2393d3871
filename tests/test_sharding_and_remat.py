"""Loading onto a device mesh places each parameter by its logical axes; remat changes no numbers."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import vlguard_jax
from hf_fixtures import build_hf, hf_logits, mixed_batch, save_layout
from test_hf_parity import assert_logits_match, forward
from vlguard_jax.parallel import make_mesh


def test_load_onto_a_mesh_shards_parameters_and_keeps_logits(tmp_path):
    assert jax.device_count() == 8, "conftest sets 8 virtual CPU devices"
    hf = build_hf("gqa", seed=8)
    ids, mask, pixels = mixed_batch(hf.config, seed=8)
    ids, mask = ids[:2], mask[:2]  # batch 2 over data=2
    pixels = pixels[:1]
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    model = vlguard_jax.load_pretrained(save_layout(hf, tmp_path, "hf_save"), mesh=mesh)
    layers = model.language_model.model.layers
    assert layers.self_attn.q_proj.kernel[...].sharding.spec == P(None, "fsdp", "tensor")
    assert layers.mlp.down_proj.kernel[...].sharding.spec == P(None, "tensor", "fsdp")
    assert model.language_model.lm_head.kernel[...].sharding.spec == P("fsdp", "tensor")
    kernel = layers.mlp.gate_proj.kernel[...]
    assert {s.data.shape for s in kernel.addressable_shards} == {(2, 16, 32)}  # [layers, 32/fsdp, 64/tensor]
    with jax.set_mesh(mesh):
        logits = forward(model, jnp.asarray(ids), jnp.asarray(pixels), jnp.asarray(mask))
    assert_logits_match(logits, hf_logits(hf, ids, mask, pixels), mask)


def test_mesh_that_does_not_match_devices_says_the_numbers():
    with pytest.raises(ValueError, match=r"data=3 × fsdp=2 × tensor=1 = 6 does not match the 8 available devices"):
        make_mesh(data=3, fsdp=2)


@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_policies_give_identical_loss_and_gradients(tmp_path, policy):
    ckpt = save_layout(build_hf("mha", seed=9), tmp_path, "hf_save")
    ids, mask, pixels = mixed_batch(build_hf("mha", seed=9).config)
    batch = tuple(jnp.asarray(a) for a in (ids, pixels, mask))

    def loss_and_grads(model):
        def loss(m):
            logits = m(*batch)
            return jnp.mean(jax.nn.logsumexp(logits, -1) * batch[2])
        return nnx.jit(nnx.value_and_grad(loss))(model)

    plain, plain_grads = loss_and_grads(vlguard_jax.load_pretrained(ckpt))
    remat, remat_grads = loss_and_grads(vlguard_jax.load_pretrained(ckpt, remat=policy))
    np.testing.assert_allclose(remat, plain, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), nnx.to_pure_dict(remat_grads),
                 nnx.to_pure_dict(plain_grads))


def test_package_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None; import vlguard_jax, vlguard_jax.cli; "
            "assert 'transformers' not in sys.modules; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr
