"""One DPO step equals transformers + PEFT with TRL's loss written out; the reference is the adapters-off model and
at step 0 the loss is ln 2; accumulation normalises over the global batch's pairs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F
from flax import nnx
from peft import LoraConfig as PeftLoraConfig
from peft import get_peft_model

import vlguard_jax
from hf_fixtures import IMAGE_TOKEN, build_hf, save_layout
from peft_fixtures import assert_adapters_equal, share_adapters
from test_train_step import LR, PROJECTOR_LR, TARGETS, WD
from vlguard_jax.models.lora import LoraConfig, apply_lora
from vlguard_jax.train.optimizer import OptimizerConfig, build_optimizer
from vlguard_jax.train.preference import PreferenceLoss, preference_loss_sums, reference_params
from vlguard_jax.train.step import init_state, make_train_step
from vlguard_jax.train.trainable import split_model

BETA = 0.5


def pair_batch(config, pairs: int = 2, seed: int = 0):
    """`pairs` right-padded pairs, the even ones with an image: per side a prompt (masked) and an answer of its own
    length. Ours as `[pairs, 2, len]`; torch's as `2·pairs` rows (chosen, rejected, …) with one image per image row."""
    rng = np.random.RandomState(seed)
    v = config.vision_config
    per_image = (v.image_size // v.patch_size) ** 2 + (config.vision_feature_select_strategy == "full")
    length = per_image + 16
    ids = np.zeros((pairs, 2, length), np.int64)
    labels = np.full((pairs, 2, length), -100, np.int64)
    mask = np.zeros((pairs, 2, length), np.int64)
    pixels = np.zeros((pairs, 3, v.image_size, v.image_size), np.float32)
    for p in range(pairs):
        image = p % 2 == 0
        prompt = [1] + [IMAGE_TOKEN] * per_image * image + list(rng.randint(3, IMAGE_TOKEN, 4))
        if image:
            pixels[p] = rng.randn(3, v.image_size, v.image_size)
        for side in range(2):
            answer = list(rng.randint(3, IMAGE_TOKEN, 3 + 2 * side + p)) + [2]
            row = prompt + answer
            ids[p, side, :len(row)] = row
            labels[p, side, len(prompt):len(row)] = answer
            mask[p, side, :len(row)] = 1
    ours = {"input_ids": ids.astype(np.int32), "labels": labels.astype(np.int32), "attention_mask": mask.astype(bool),
            "pixel_values": pixels}
    image_rows = [pixels[p] for p in range(pairs) for _ in range(2) if p % 2 == 0]
    theirs = dict(input_ids=torch.tensor(ids.reshape(2 * pairs, length)),
                  attention_mask=torch.tensor(mask.reshape(2 * pairs, length)),
                  pixel_values=torch.tensor(np.stack(image_rows)))
    return {k: jnp.asarray(v) for k, v in ours.items()}, theirs, torch.tensor(labels.reshape(2 * pairs, length))


def torch_logps(model, batch, labels):
    """TRL's `get_batch_logps`: the sum of each row's answer-token log-probabilities."""
    logits = model(**batch).logits[:, :-1].float()
    targets = labels[:, 1:]
    valid = targets != -100
    picked = torch.gather(F.log_softmax(logits, -1), 2, targets.clamp(min=0).unsqueeze(2)).squeeze(2)
    return (picked * valid).sum(-1).view(-1, 2)


def our_dpo_step(model, mode, batch, accum_steps=1, loss=PreferenceLoss("dpo", BETA), tx=None):
    graphdef, trainable, frozen = split_model(model, mode)
    params = nnx.to_pure_dict(trainable)
    tx = tx or build_optimizer(OptimizerConfig(learning_rate=LR, projector_learning_rate=PROJECTOR_LR,
                                               weight_decay=WD, warmup_ratio=0.0), params, total_steps=10)
    reference = reference_params(trainable, params, jnp.float32)
    objective = preference_loss_sums(graphdef, trainable, loss, dropout=False)
    step = jax.jit(make_train_step(graphdef, trainable, tx, accum_steps=accum_steps, dropout=False,
                                   loss_sums=objective))
    state = init_state(params, tx, seed=0)
    new_state, metrics = step(state, (frozen, reference), batch)
    return graphdef, trainable, frozen, state, new_state, metrics


def test_lora_dpo_step_matches_peft_with_trl_loss(tmp_path, rpo_alpha=0.5):
    """With RPO's NLL term on (α 0.5): TRL's `rpo_alpha` adds it to the same sigmoid loss, so both terms are checked."""
    hf = build_hf("gqa", seed=21)
    model = vlguard_jax.load_pretrained(save_layout(hf, tmp_path, "hf_save"))
    apply_lora(model, LoraConfig(rank=4, alpha=8.0, dropout=0.0), nnx.Rngs(0))
    peft_model = get_peft_model(hf, PeftLoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS))
    peft_layers = peft_model.base_model.model.model.language_model.layers
    torch.manual_seed(0)
    share_adapters(model.language_model.model.layers, peft_layers)  # the policy differs from the reference
    projector = list(peft_model.base_model.model.model.multi_modal_projector.parameters())
    for p in projector:
        p.requires_grad_(True)
    lora = [p for n, p in peft_model.named_parameters() if "lora_" in n]
    ours_batch, theirs_batch, labels = pair_batch(hf.config)

    with torch.no_grad(), peft_model.disable_adapter():  # TRL's reference for a PEFT model
        reference = torch_logps(peft_model, theirs_batch, labels)
    policy = torch_logps(peft_model, theirs_batch, labels)
    logits = (policy[:, 0] - policy[:, 1]) - (reference[:, 0] - reference[:, 1])
    chosen_tokens = (labels[:, 1:] != -100).sum(-1).view(-1, 2)[:, 0]
    torch_loss = (-F.logsigmoid(BETA * logits) + rpo_alpha * -policy[:, 0] / chosen_tokens).mean()
    rewards = BETA * (policy - reference).detach()
    optimizer = torch.optim.AdamW([{"params": lora, "lr": LR}, {"params": projector, "lr": PROJECTOR_LR}],
                                  betas=(0.9, 0.999), eps=1e-8, weight_decay=WD)
    torch_loss.backward()
    torch.nn.utils.clip_grad_norm_(lora + projector, 1.0)
    optimizer.step()

    graphdef, trainable, frozen, before, after, metrics = our_dpo_step(
        model, "lora", ours_batch, loss=PreferenceLoss("dpo", BETA, rpo_alpha=rpo_alpha))
    assert abs(float(metrics["loss"]) - torch_loss.item()) < 1e-5
    assert abs(torch_loss.item() - math.log(2)) > 1e-2  # adapters on: not the step-0 value
    np.testing.assert_allclose(float(metrics["reward_chosen"]), rewards[:, 0].mean().item(), atol=1e-5)
    np.testing.assert_allclose(float(metrics["reward_rejected"]), rewards[:, 1].mean().item(), atol=1e-5)
    np.testing.assert_allclose(float(metrics["reward_accuracy"]),
                               (rewards[:, 0] > rewards[:, 1]).float().mean().item(), atol=1e-6)
    nnx.replace_by_pure_dict(trainable, after.params)
    assert_adapters_equal(nnx.merge(graphdef, trainable, frozen).language_model.model.layers, peft_layers)
    hf_projector = peft_model.base_model.model.model.multi_modal_projector
    for i in (1, 2):
        np.testing.assert_allclose(np.asarray(after.params["multi_modal_projector"][f"linear_{i}"]["kernel"]),
                                   getattr(hf_projector, f"linear_{i}").weight.detach().numpy().T, atol=1e-5)
    moved = jnp.abs(after.params["multi_modal_projector"]["linear_1"]["kernel"]
                    - before.params["multi_modal_projector"]["linear_1"]["kernel"]).max()
    assert float(moved) > 1e-4  # the comparison is not vacuous


def test_step_zero_loss_is_ln2_for_lora_and_full(tmp_path):
    """B = 0 (LoRA) or a frozen copy of the start (full): policy and reference agree, so every implicit reward is 0,
    the DPO loss ln 2 and no pair counts as ranked right; IPO's is (1 / 2β)²."""
    hf = build_hf("mha", seed=22)
    ckpt = save_layout(hf, tmp_path, "hf_save")
    batch, _, _ = pair_batch(hf.config, pairs=4, seed=1)
    for mode in ("lora", "full"):
        model = vlguard_jax.load_pretrained(ckpt)
        if mode == "lora":
            apply_lora(model, LoraConfig(rank=4, alpha=8.0, dropout=0.0), nnx.Rngs(0))
        *_, after, metrics = our_dpo_step(model, mode, batch)
        np.testing.assert_allclose(float(metrics["loss"]), math.log(2), atol=1e-6, err_msg=mode)
        assert float(metrics["reward_accuracy"]) == 0.0
        np.testing.assert_allclose([float(metrics["reward_chosen"]), float(metrics["reward_margin"])], 0, atol=1e-6)
        assert float(metrics["logp_chosen"]) < -1  # real log-probabilities, not zeros
        assert float(metrics["grad_norm"]) > 0
    *_, metrics = our_dpo_step(vlguard_jax.load_pretrained(ckpt), "full", batch, loss=PreferenceLoss("ipo", BETA))
    np.testing.assert_allclose(float(metrics["loss"]), (1 / (2 * BETA)) ** 2, rtol=1e-6)


def keep_gradients():
    zeros = lambda tree: jax.tree.map(jnp.zeros_like, tree)
    return optax.GradientTransformation(zeros, lambda grads, state, params=None: (zeros(grads), grads))


def test_accumulation_is_the_mean_over_the_global_batch_pairs(tmp_path):
    """Four pairs, one of which carries no loss (its image failed: no supervised tokens), scanned as two
    micro-batches of two: the loss and gradients are the mean over the three valid pairs of the whole batch, which the
    mean of the micro-batches' means (1 valid pair and 2) is not."""
    hf = build_hf("mha", seed=23)
    ckpt = save_layout(hf, tmp_path, "hf_save")
    batch, _, _ = pair_batch(hf.config, pairs=4, seed=2)
    batch["labels"] = batch["labels"].at[0].set(-100)  # micro-batch i holds pairs i and i + 2

    def run(accum, b=batch):
        model = vlguard_jax.load_pretrained(ckpt)
        apply_lora(model, LoraConfig(rank=4, alpha=8.0, dropout=0.0), nnx.Rngs(0))
        lora_b = [m for _, m in nnx.iter_graph(model) if getattr(m, "lora_b", None) is not None]
        for k, m in enumerate(lora_b):  # B ≠ 0: a loss away from ln 2
            m.lora_b[...] = 0.1 * jax.random.normal(jax.random.key(k), m.lora_b.shape)
        *_, after, metrics = our_dpo_step(model, "lora", b, accum_steps=accum, tx=keep_gradients())
        return float(metrics["loss"]), after.opt_state, metrics

    whole, grads, metrics = run(1)
    accumulated, accumulated_grads, accumulated_metrics = run(2)
    np.testing.assert_allclose(accumulated, whole, rtol=1e-6)
    scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5 * scale), accumulated_grads, grads)
    np.testing.assert_allclose(float(accumulated_metrics["reward_margin"]), float(metrics["reward_margin"]),
                               rtol=1e-5, atol=1e-7)
    halves = [run(1, jax.tree.map(lambda x: x[i::2], batch))[0] for i in (0, 1)]
    np.testing.assert_allclose((halves[0] * 1 + halves[1] * 2) / 3, whole, rtol=1e-5)
    assert abs(sum(halves) / 2 - whole) > 1e-3 * whole


def test_losses_are_trls_sigmoid_cdpo_and_ipo():
    """`PreferenceLoss.losses` against TRL's `dpo_loss` written out in numpy (sigmoid with label smoothing, ipo)."""
    rng = np.random.default_rng(0)
    policy, reference = -rng.uniform(5, 40, (16, 2)), -rng.uniform(5, 40, (16, 2))
    logits = (policy[:, 0] - policy[:, 1]) - (reference[:, 0] - reference[:, 1])
    log_sigmoid = lambda x: -np.logaddexp(0, -x)
    for beta, smoothing in ((0.1, 0.0), (0.5, 0.2)):
        ours, rewards = PreferenceLoss("dpo", beta, smoothing).losses(jnp.asarray(policy), jnp.asarray(reference))
        theirs = -log_sigmoid(beta * logits) * (1 - smoothing) - log_sigmoid(-beta * logits) * smoothing
        np.testing.assert_allclose(ours, theirs, rtol=1e-5)
        np.testing.assert_allclose(rewards, beta * (policy - reference), rtol=1e-5)
    ours, _ = PreferenceLoss("ipo", 0.25).losses(jnp.asarray(policy), jnp.asarray(reference))
    np.testing.assert_allclose(ours, (logits - 1 / (2 * 0.25)) ** 2, rtol=1e-5)
    for bad in (dict(objective="kto"), dict(objective="dpo", beta=0.0), dict(objective="ipo", label_smoothing=0.1)):
        with pytest.raises(ValueError):
            PreferenceLoss(**bad)
