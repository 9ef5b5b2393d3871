"""One training step equals transformers + PEFT + torch AdamW; frozen weights never move and hold no state."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from flax import nnx
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model

import vlguard_jax
from hf_fixtures import IMAGE_TOKEN, build_hf, mixed_batch, save_layout
from peft_fixtures import assert_adapters_equal, share_adapters
from vlguard_jax.models.lora import LoraConfig, apply_lora
from vlguard_jax.train.optimizer import OptimizerConfig, build_optimizer
from vlguard_jax.train.step import init_state, make_train_step
from vlguard_jax.train.trainable import split_model

LR, PROJECTOR_LR, WD = 1e-3, 5e-4, 0.01
TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def training_batch(config):
    ids, mask, pixels = mixed_batch(config)
    labels = np.where(mask.astype(bool) & (ids != IMAGE_TOKEN), ids, -100)
    labels[:, :3] = -100  # a prompt that is not trained
    labels[:, 1:][~mask[:, :-1].astype(bool)] = -100  # never predicted from a padded position
    row_pixels = np.zeros((3, *pixels.shape[1:]), np.float32)
    row_pixels[[0, 2]] = pixels  # rows 0 and 2 carry the images
    ours = {"input_ids": ids, "attention_mask": mask.astype(bool), "labels": labels, "pixel_values": row_pixels}
    theirs = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), labels=torch.tensor(labels),
                  pixel_values=torch.tensor(pixels))
    return {k: jnp.asarray(v) for k, v in ours.items()}, theirs


def torch_step(model, params_by_lr, batch):
    optimizer = torch.optim.AdamW([{"params": p, "lr": lr} for lr, p in params_by_lr.items()], betas=(0.9, 0.999),
                                  eps=1e-8, weight_decay=WD)
    loss = model(**batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for ps in params_by_lr.values() for p in ps], 1.0)
    optimizer.step()
    return loss.item()


def our_step(model, mode, batch, accum_steps=1):
    graphdef, trainable, frozen = split_model(model, mode)
    params = nnx.to_pure_dict(trainable)
    tx = build_optimizer(OptimizerConfig(learning_rate=LR, projector_learning_rate=PROJECTOR_LR, weight_decay=WD,
                                         warmup_ratio=0.0), params, total_steps=10)
    state = init_state(params, tx, seed=0)
    step = jax.jit(make_train_step(graphdef, trainable, tx, accum_steps=accum_steps, dropout=False))
    new_state, metrics = step(state, frozen, batch)
    return graphdef, trainable, frozen, state, new_state, metrics


def lora_steps_agree(hf, model, ours_batch, theirs_batch):
    """One LoRA step (rank 4, identical non-zero adapters, projector trained) on our model and on `hf` under PEFT:
    loss, every adapter and the projector agree within 1e-5. Returns (state before, state after, updated model)."""
    apply_lora(model, LoraConfig(rank=4, alpha=8.0, dropout=0.0), nnx.Rngs(0))
    peft_model = get_peft_model(hf, PeftLoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS))
    peft_layers = peft_model.base_model.model.model.language_model.layers
    torch.manual_seed(0)
    share_adapters(model.language_model.model.layers, peft_layers)  # identical, non-zero adapters on both sides
    projector = list(peft_model.base_model.model.model.multi_modal_projector.parameters())
    for p in projector:
        p.requires_grad_(True)
    lora = [p for n, p in peft_model.named_parameters() if "lora_" in n]
    torch_loss = torch_step(peft_model, {LR: lora, PROJECTOR_LR: projector}, theirs_batch)

    graphdef, trainable, frozen, before, after, metrics = our_step(model, "lora", ours_batch)
    assert abs(float(metrics["loss"]) - torch_loss) < 1e-5
    nnx.replace_by_pure_dict(trainable, after.params)
    updated = nnx.merge(graphdef, trainable, frozen)
    assert_adapters_equal(updated.language_model.model.layers, peft_layers)
    hf_projector = peft_model.base_model.model.model.multi_modal_projector
    for i in (1, 2):
        ours = getattr(updated.multi_modal_projector, f"linear_{i}")
        theirs = getattr(hf_projector, f"linear_{i}")
        np.testing.assert_allclose(np.asarray(ours.kernel[...]), theirs.weight.detach().numpy().T, atol=1e-5)
        np.testing.assert_allclose(np.asarray(ours.bias[...]), theirs.bias.detach().numpy(), atol=1e-5)
    moved = jnp.abs(after.params["multi_modal_projector"]["linear_1"]["kernel"]
                    - before.params["multi_modal_projector"]["linear_1"]["kernel"]).max()
    assert float(moved) > 1e-4  # the comparison above is not vacuous
    return before, after, updated


def test_lora_step_matches_peft(tmp_path):
    hf = build_hf("gqa", seed=11)
    model = vlguard_jax.load_pretrained(save_layout(hf, tmp_path, "hf_save"))
    before, after, updated = lora_steps_agree(hf, model, *training_batch(hf.config))

    # Frozen weights are untouched and carry no optimizer state: Adam moments only for trainable leaves.
    trainable_bytes = sum(x.nbytes for x in jax.tree.leaves(before.params))
    opt_bytes = sum(x.nbytes for x in jax.tree.leaves(after.opt_state))
    assert 2 * trainable_bytes <= opt_bytes <= 2 * trainable_bytes + 1024
    after_by_path = dict(nnx.to_flat_state(nnx.state(updated, nnx.Param)))
    base = nnx.state(vlguard_jax.load_pretrained(tmp_path / "hf"), nnx.Param)
    for path, value in nnx.to_flat_state(base):
        if "multi_modal_projector" not in path:
            np.testing.assert_array_equal(np.asarray(value[...]), np.asarray(after_by_path[path][...]),
                                          err_msg=str(path))


def test_full_step_matches_torch(tmp_path):
    hf = build_hf("mha", seed=12)
    ckpt = save_layout(hf, tmp_path, "hf_save")
    ours_batch, theirs_batch = training_batch(hf.config)
    for p in hf.model.vision_tower.parameters():
        p.requires_grad_(False)
    projector = list(hf.model.multi_modal_projector.parameters())
    rest = [p for n, p in hf.named_parameters() if p.requires_grad and "multi_modal_projector" not in n]
    torch_loss = torch_step(hf, {LR: rest, PROJECTOR_LR: projector}, theirs_batch)

    graphdef, trainable, frozen, _, after, metrics = our_step(vlguard_jax.load_pretrained(ckpt), "full", ours_batch)
    assert abs(float(metrics["loss"]) - torch_loss) < 1e-5
    nnx.replace_by_pure_dict(trainable, after.params)
    ours = dict(nnx.to_flat_state(nnx.state(nnx.merge(graphdef, trainable, frozen), nnx.Param)))
    reference = {k: v.detach().numpy() for k, v in hf.state_dict().items()}
    layers = hf.model.language_model.layers
    checks = {
        ("language_model", "model", "embed_tokens", "embedding"): reference["model.language_model.embed_tokens.weight"],
        ("language_model", "lm_head", "kernel"): reference["lm_head.weight"].T,
        ("language_model", "model", "layers", "mlp", "down_proj", "kernel"):
            np.stack([l.mlp.down_proj.weight.detach().numpy().T for l in layers]),
        ("language_model", "model", "layers", "input_layernorm", "scale"):
            np.stack([l.input_layernorm.weight.detach().numpy() for l in layers]),
        ("multi_modal_projector", "linear_2", "kernel"): reference["model.multi_modal_projector.linear_2.weight"].T,
    }
    for path, expected in checks.items():
        np.testing.assert_allclose(np.asarray(ours[path][...]), expected, atol=1e-5, err_msg=str(path))



def step_gradients(ckpt, batch, accum_steps):
    """The step's loss and the gradients it averaged, kept by an optimizer whose state is the last gradient."""
    graphdef, trainable, frozen = split_model(vlguard_jax.load_pretrained(ckpt), "full")
    params = nnx.to_pure_dict(trainable)
    zeros = lambda tree: jax.tree.map(jnp.zeros_like, tree)
    keep = optax.GradientTransformation(zeros, lambda grads, state, params=None: (zeros(grads), grads))
    step = jax.jit(make_train_step(graphdef, trainable, keep, accum_steps=accum_steps, dropout=False))
    after, metrics = step(init_state(params, keep, seed=0), frozen, batch)
    return float(metrics["loss"]), after.opt_state


def test_accumulation_is_the_token_mean_of_the_whole_batch(tmp_path):
    """Micro-batches with 3 and many more supervised tokens: the accumulated loss and gradients are those of one
    batch (the mean over all its tokens), which the mean of the two micro-batches' means is clearly not."""
    hf = build_hf("mha", seed=12)
    ckpt = save_layout(hf, tmp_path, "hf_save")
    full, _ = training_batch(hf.config)
    labels = np.asarray(full["labels"])
    thin = np.full_like(labels, -100)
    for row, targets in enumerate(labels):
        kept = np.flatnonzero(targets[1:] != -100)[-1:] + 1  # one supervised token per row
        thin[row, kept] = targets[kept]
    thin = {**full, "labels": jnp.asarray(thin)}
    tokens = [int((b["labels"][:, 1:] != -100).sum()) for b in (full, thin)]
    assert tokens[1] == 3 and tokens[0] > 4 * tokens[1]
    # micro-batch i takes rows i, i + 2, …: the full rows are micro-batch 0, the thin rows micro-batch 1
    batch = jax.tree.map(lambda a, b: jnp.stack([a, b], 1).reshape(-1, *a.shape[1:]), full, thin)

    loss, grads = step_gradients(ckpt, batch, accum_steps=1)
    accumulated, accumulated_grads = step_gradients(ckpt, batch, accum_steps=2)
    np.testing.assert_allclose(accumulated, loss, rtol=1e-6)
    scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6 * scale), accumulated_grads, grads)

    (full_loss, full_grads), (thin_loss, thin_grads) = (step_gradients(ckpt, b, accum_steps=1) for b in (full, thin))
    np.testing.assert_allclose((tokens[0] * full_loss + tokens[1] * thin_loss) / sum(tokens), loss, rtol=1e-5)
    assert abs((full_loss + thin_loss) / 2 - loss) > 1e-3 * loss  # a mean of means would fail the checks above
    mean_of_means = jax.tree.map(lambda a, b: (a + b) / 2, full_grads, thin_grads)
    assert max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(mean_of_means),
                                                             jax.tree.leaves(grads))) > 1e-3 * scale


def test_nonfinite_loss_skips_the_update(tmp_path):
    hf = build_hf("mha", seed=13)
    model = vlguard_jax.load_pretrained(save_layout(hf, tmp_path, "hf_save"))
    batch, _ = training_batch(hf.config)
    batch["pixel_values"] = batch["pixel_values"].at[0, 0, 0, 0].set(jnp.nan)
    _, _, _, before, after, metrics = our_step(model, "projector", batch)
    assert not bool(metrics["finite"]) and int(after.nonfinite_steps) == 1 and int(after.step) == 0
    jax.tree.map(np.testing.assert_array_equal, before.params, after.params)


def test_chunked_loss_equals_the_full_loss_and_gradient():
    from vlguard_jax.train.step import chunked_cross_entropy_sums, cross_entropy_sums

    keys = jax.random.split(jax.random.key(0), 3)
    hidden = jax.random.normal(keys[0], (2, 37, 16))
    kernel = jax.random.normal(keys[1], (16, 50))
    labels = jax.random.randint(keys[2], (2, 37), 0, 50).at[:, :5].set(-100)

    def loss(kernel, chunk):
        project = lambda h: h @ kernel
        nll, count = (chunked_cross_entropy_sums(hidden, labels, project, chunk) if chunk
                      else cross_entropy_sums(project(hidden), labels))
        return nll / count

    full, full_grad = jax.value_and_grad(loss)(kernel, 0)
    for chunk in (8, 12, 36):
        value, grad = jax.value_and_grad(loss)(kernel, chunk)
        np.testing.assert_allclose(value, full, rtol=1e-6)
        np.testing.assert_allclose(grad, full_grad, rtol=1e-5, atol=1e-7)
