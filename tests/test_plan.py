"""`plan`: abstract 7B shapes match the published parameter counts, the FLOPs formula matches XLA's count (fixed
and any-resolution models), and per-device bytes on 8 virtual devices are the totals divided by the shards."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.train_fixtures import TINY
from vlguard_jax.config import config_from_dict
from vlguard_jax.data.vision_inputs import VisionInputs
from vlguard_jax.models import anyres
from vlguard_jax.models.config import (KNOWN_ARCHITECTURES, EvaVisionConfig, LlavaConfig, SiglipVisionConfig,
                                       TextConfig, VisionConfig)
from vlguard_jax.models.llava import LlavaForConditionalGeneration
from vlguard_jax.models.lora import DEFAULT_TARGETS, LoraConfig, apply_lora
from vlguard_jax.plan import plan, train_flops
from vlguard_jax.train.setup import make_model
from vlguard_jax.train.optimizer import OptimizerConfig, build_optimizer
from vlguard_jax.train.preference import PreferenceLoss, preference_loss_sums, reference_params
from vlguard_jax.train.step import init_state, make_train_step
from vlguard_jax.train.trainable import split_model


def _count(state) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))


def test_llava15_7b_shapes_have_the_published_parameter_counts():
    model = nnx.eval_shape(lambda: LlavaForConditionalGeneration(KNOWN_ARCHITECTURES["llava-1.5-7b"],
                                                                 rngs=nnx.Rngs(0)))
    assert _count(nnx.state(model.vision_tower)) == 303_507_456
    assert _count(nnx.state(model.multi_modal_projector)) == 20_979_712
    assert _count(nnx.state(model.language_model)) == 6_738_939_904
    apply_lora(model, LoraConfig(rank=128), nnx.Rngs(1))
    assert _count(nnx.state(model, nnx.LoRAParam)) == 319_815_680


def test_minigptv2_shapes_have_upstreams_parameter_counts():
    """EVA-CLIP ViT-g as `create_eva_vit_g(448)` builds it (upstream's definition, on torch's meta device) plus
    `ln_vision`; `llama_proj`; Llama-2-7b; MiniGPT-v2's LoRA (r 64 on q_proj and v_proj)."""
    torch = pytest.importorskip("torch")
    from minigpt_fixtures import EvaReference

    with torch.device("meta"):
        eva = EvaReference(448, 39, patch_size=14, embed_dim=1408, num_heads=16, mlp_ratio=4.3637)
    model = nnx.eval_shape(lambda: LlavaForConditionalGeneration(KNOWN_ARCHITECTURES["minigpt-v2"], rngs=nnx.Rngs(0)))
    assert _count(nnx.state(model.vision_tower)) == sum(p.numel() for p in eva.parameters()) + 2 * 1408
    assert _count(nnx.state(model.multi_modal_projector)) == 4 * 1408 * 4096 + 4096
    assert _count(nnx.state(model.language_model)) == 6_738_415_616
    apply_lora(model, LoraConfig(rank=64, targets=r"language_model\.model\.layers\.self_attn\.(q|v)_proj"),
               nnx.Rngs(1))
    assert _count(nnx.state(model, nnx.LoRAParam)) == 32 * 2 * 64 * (4096 + 4096)


@pytest.mark.parametrize("name,hub_count", [
    ("llava-v1.6-vicuna-7b", 7.06e9), ("llava-v1.6-mistral-7b", 7.57e9),
    ("llava-onevision-qwen2-7b-ov", 8.03e9), ("llava-onevision-qwen2-0.5b-ov", 8.94e8)])
def test_anyres_shapes_have_the_published_parameter_counts(name, hub_count):
    """transformers builds the same parameters from the shape's config.json (on torch's meta device), and their
    total rounds to the llava-hf checkpoint page's count (its safetensors' parameters, 3 significant figures)."""
    torch = pytest.importorskip("torch")
    import transformers

    llava = KNOWN_ARCHITECTURES[name]
    ours = _count(nnx.state(nnx.eval_shape(lambda: LlavaForConditionalGeneration(llava, rngs=nnx.Rngs(0)))))
    hf_config = transformers.AutoConfig.for_model(**llava.to_hf())
    with torch.device("meta"):
        theirs = transformers.AutoModelForImageTextToText.from_config(hf_config)
    assert ours == sum(p.numel() for p in theirs.parameters())
    assert float(f"{ours:.3g}") == hub_count


def _one_layer_model(tower: str = "clip") -> LlavaConfig:
    """Matmul-dominated widths, one layer each, the last vision layer read (so the tower runs it). `next` and
    `onevision`: any-resolution layouts (CLIP + Mistral, SigLIP + Qwen2) on canvases of up to 2×2 crops of 64 px,
    5 crops an image at most, the tower and projector about a third of the step (a count of 1 crop a row would be
    25% short); OneVision's budget of one crop's tokens pools the larger grids (4 taps a token)."""
    shape = dict(hidden_size=128, intermediate_size=512, num_layers=1, num_heads=4, image_size=32, patch_size=8)
    text = TextConfig(vocab_size=1024, hidden_size=256, intermediate_size=1024, num_layers=1, num_heads=4,
                      num_kv_heads=2, head_dim=64, max_position_embeddings=512)
    crop = {**shape, "image_size": 64}
    pinpoints = ((64, 128), (128, 64), (128, 128))
    if tower == "next":
        return LlavaConfig(vision=VisionConfig(**crop), text=dataclasses.replace(text, family="mistral"),
                           image_token_id=1000, model_type="llava_next", image_grid_pinpoints=pinpoints)
    if tower == "onevision":
        return LlavaConfig(vision=SiglipVisionConfig(**crop), text=dataclasses.replace(text, family="qwen2",
                                                                                        qkv_bias=True),
                           image_token_id=1000, vision_feature_layer=-1, vision_feature_select_strategy="full",
                           model_type="llava_onevision", image_grid_pinpoints=pinpoints,
                           vision_aspect_ratio="anyres_max_1")
    vision = VisionConfig(**shape) if tower == "clip" else EvaVisionConfig(**shape)
    return LlavaConfig(vision=vision, text=text, image_token_id=1000, vision_feature_layer=-1,
                       projector_type="mlp2x_gelu" if tower == "clip" else "concat4")


@pytest.mark.parametrize("mode,tower,targets,objective,reference", [
    ("lora", "clip", DEFAULT_TARGETS, "sft", "model"), ("full", "clip", DEFAULT_TARGETS, "sft", "model"),
    ("lora", "eva", r"language_model\.model\.layers\.self_attn\.(q|v)_proj", "sft", "model"),
    ("lora", "clip", DEFAULT_TARGETS, "dpo", "model"), ("full", "clip", DEFAULT_TARGETS, "dpo", "model"),
    ("lora", "clip", DEFAULT_TARGETS, "dpo", "precomputed"),
    ("lora", "next", DEFAULT_TARGETS, "sft", "model"), ("lora", "onevision", DEFAULT_TARGETS, "sft", "model"),
    ("full", "onevision", DEFAULT_TARGETS, "sft", "model"), ("lora", "onevision", DEFAULT_TARGETS, "dpo", "model")])
def test_train_flops_formula_matches_xla_cost_analysis(mode, tower, targets, objective, reference):
    """Any-resolution rows: every one of the 5 crop slots through the tower (zeros run too), the packing's taps."""
    llava, rows, length, rank = _one_layer_model(tower), 4, 128, 16
    model = LlavaForConditionalGeneration(llava, rngs=nnx.Rngs(0))
    if mode == "lora":
        apply_lora(model, LoraConfig(rank=rank, dropout=0.0, targets=targets), nnx.Rngs(1))
    graphdef, trainable, frozen = split_model(model, mode)
    params = nnx.to_pure_dict(trainable)
    tx = build_optimizer(OptimizerConfig(), params, total_steps=10)
    state = jax.eval_shape(lambda p: init_state(p, tx, 0), params)
    tokens = (rows, length) if objective == "sft" else (rows, 2, length)
    batch = {"input_ids": jax.ShapeDtypeStruct(tokens, jnp.int32),
             "labels": jax.ShapeDtypeStruct(tokens, jnp.int32),
             "attention_mask": jax.ShapeDtypeStruct(tokens, jnp.bool_),
             **{name: jax.ShapeDtypeStruct((rows, *empty.shape[1:]), empty.dtype)  # the pipeline's image arrays
                for name, empty in VisionInputs.of(llava).batch(0).items()}}
    weights, objective_sums = frozen, None
    if objective != "sft":
        weights = (frozen, reference_params(trainable, params, jnp.float32) if reference == "model" else {})
        objective_sums = preference_loss_sums(graphdef, trainable, PreferenceLoss(objective, reference=reference),
                                              dropout=False)
        if reference == "precomputed":
            batch["reference_logps"] = jax.ShapeDtypeStruct((rows, 2), jnp.float32)
    step = make_train_step(graphdef, trainable, tx, dropout=False, loss_sums=objective_sums)
    xla = jax.jit(step).lower(state, weights, batch).compile().cost_analysis()["flops"]
    ours = train_flops(llava, mode, rows, length, rank, targets, objective, reference)
    assert abs(ours - xla) / xla < 0.10, (ours, xla)


def _tiny_config(mode: str, fsdp: int):
    train = {**TINY["train"], "mode": mode, "lora": {"rank": 8, "alpha": 16.0}}  # a rank the 8 shards divide
    raw = {**TINY, "train": train, "mesh": {"data": 1, "fsdp": fsdp, "tensor": 1}}
    return config_from_dict(raw, "tests/test_plan.py")


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_plan_on_8_devices_divides_parameter_bytes_by_the_shards(mode):
    if jax.device_count() < 8:
        pytest.skip("needs 8 (virtual) devices: XLA_FLAGS=--xla_force_host_platform_device_count=8")
    config = _tiny_config(mode, fsdp=8)
    llava = LlavaConfig.from_hf(config.model.architecture)
    _, trainable, frozen = split_model(nnx.eval_shape(lambda: make_model(llava, config)), mode)
    nbytes = lambda x, itemsize=None: int(np.prod(x.shape)) * (itemsize or x.dtype.itemsize)
    trainable_total = sum(nbytes(x, 4) for x in jax.tree.leaves(trainable))  # trained in fp32
    frozen_total = sum(nbytes(x) for x in jax.tree.leaves(frozen))
    # Only vectors (norm scales, some biases; one per layer when stacked) may stay whole on every device;
    # every matrix is split 8 ways.
    def vector_bytes(state, itemsize=None):
        leaves = jax.tree_util.tree_leaves_with_path(state)
        is_vector = lambda path, x: x.ndim - ("'layers'" in jax.tree_util.keystr(path)) <= 1
        return sum(nbytes(x, itemsize) for path, x in leaves if is_vector(path, x))

    trainable_vectors, frozen_vectors = vector_bytes(trainable, 4), vector_bytes(frozen)

    one, eight = plan(_tiny_config(mode, fsdp=1), 1), plan(config, 8)
    assert one["per_device_bytes"]["trainable_params"] == trainable_total
    assert one["per_device_bytes"]["frozen_params"] == frozen_total
    for name, total, vectors in (("trainable_params", trainable_total, trainable_vectors),
                                 ("frozen_params", frozen_total, frozen_vectors)):
        assert total / 8 <= eight["per_device_bytes"][name] <= total / 8 + vectors, name
    adam = eight["per_device_bytes"]["optimizer_state"]  # two moments per trainable weight, plus step counts
    assert 2 * trainable_total / 8 <= adam <= 2 * (trainable_total / 8 + trainable_vectors) + 64
    assert eight["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
    assert eight["model_flops_per_step"] == one["model_flops_per_step"] > 0
    assert eight["attention"] == "ours" and "tpu_custom_call" not in eight["custom_calls"]  # auto on CPU
    assert eight["per_device_bytes"]["peak"] < one["per_device_bytes"]["peak"]


def _tiny_onevision(fsdp: int):
    """TINY with a SigLIP + Qwen2 any-resolution model: 16-px crops of 2×2 patches on canvases of up to 2×2 crops."""
    architecture = TINY["model"]["architecture"]
    raw = {**TINY, "model": {"architecture": {
        "model_type": "llava_onevision", "image_grid_pinpoints": [[16, 32], [32, 16], [32, 32]],
        "vision_aspect_ratio": "anyres_max_1",
        "vision_config": {**architecture["vision_config"], "model_type": "siglip_vision_model"},
        "text_config": {**architecture["text_config"], "model_type": "qwen2"}}},
        "mesh": {"data": 1, "fsdp": fsdp, "tensor": 1}}
    return config_from_dict(raw, "tests/test_plan.py")


@pytest.mark.parametrize("devices", [1, 8])
def test_anyres_plan_holds_every_crop_slot_of_its_rows(devices):
    """The planned step takes the pipeline's any-resolution batch (`VisionInputs.batch`: every row padded to the
    model's 5 crops and its most image tokens), split by rows over the devices, and counts every crop slot."""
    if jax.device_count() < devices:
        pytest.skip("needs 8 (virtual) devices: XLA_FLAGS=--xla_force_host_platform_device_count=8")
    config = _tiny_onevision(devices)
    llava = LlavaConfig.from_hf(config.model.architecture)
    rows, length, rank = config.train.global_batch_size, config.data.max_length, config.train.lora.rank
    images = VisionInputs.of(llava).batch(rows)
    assert images["pixel_values"].shape == (rows, 5, 3, 16, 16)
    batch_bytes = rows * length * (4 + 4 + 1) + sum(a.nbytes for a in images.values())  # ids, labels, mask

    result = plan(config, devices)
    per_device = result["per_device_bytes"]
    assert per_device["batch"] == batch_bytes / devices
    assert (result["tokens_per_step"], result["image_crops_per_step"]) == (rows * length, rows * 5)
    assert result["max_image_tokens"] == images["image_index"].shape[1] == anyres.max_image_tokens(llava)
    assert result["model_flops_per_step"] == train_flops(llava, "lora", rows, length, rank)
    held = sum(per_device[k] for k in ("frozen_params", "trainable_params", "optimizer_state", "batch"))
    assert per_device["peak"] > held


def test_minigptv2_recipe_plans_on_8_devices():
    """`plan --config configs/minigptv2_posthoc_lora.yaml --architecture minigpt-v2 --devices 8`: the 7B step,
    compiled for 8 devices, holds an eighth of the weights, adapters and llama_proj on each."""
    if jax.device_count() < 8:
        pytest.skip("needs 8 (virtual) devices: XLA_FLAGS=--xla_force_host_platform_device_count=8")
    from pathlib import Path

    from vlguard_jax.config import load_config

    config = load_config(Path(__file__).parents[1] / "configs" / "minigptv2_posthoc_lora.yaml")
    result = plan(config, 8, "minigpt-v2")
    per_device = result["per_device_bytes"]
    trainable = 32 * 2 * 64 * (4096 + 4096) + 4 * 1408 * 4096 + 4096  # LoRA on q, v and llama_proj, in fp32
    assert trainable * 4 / 8 <= per_device["trainable_params"] < trainable * 4 / 8 * 1.01
    frozen_bf16 = (6_738_415_616 + 1_010_000_000) * 2  # Llama-2-7b and the 39-block EVA-g, about
    assert 0.95 < per_device["frozen_params"] * 8 / frozen_bf16 < 1.05
    assert per_device["peak"] > per_device["frozen_params"] + per_device["optimizer_state"]
    assert result["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
