"""Every shipped config loads (no unknown key, no wrong type) and encodes its recipe."""

from pathlib import Path

import pytest

from vlguard_jax.config import dump_config, load_config

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_loads_and_round_trips(path, tmp_path):
    config = load_config(path)
    dump_config(config, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == config


def test_paper_recipes():
    lora = load_config(Path(CONFIGS[0]).parent / "llava15_7b_posthoc_lora.yaml")
    assert (lora.train.mode, lora.train.lora.rank, lora.train.lora.alpha) == ("lora", 128, 256.0)
    assert (lora.train.optimizer.learning_rate, lora.train.optimizer.projector_learning_rate) == (2e-4, 2e-5)
    assert (lora.train.epochs, lora.train.global_batch_size, lora.data.num_helpful) == (3, 128, 5000)
    full = load_config(Path(CONFIGS[0]).parent / "llava15_13b_posthoc_full.yaml")
    assert (full.train.mode, full.train.optimizer.learning_rate) == ("full", 1e-5)
    mixed = load_config(Path(CONFIGS[0]).parent / "llava15_7b_mixed.yaml")
    assert (mixed.data.mixture, mixed.train.epochs, mixed.train.optimizer.learning_rate) == ("mixed", 1, 2e-5)


@pytest.mark.parametrize("size", ["7b", "13b"])
def test_mixed_is_llava15_stage2_from_the_stage1_parts(size):
    config = load_config(Path(CONFIGS[0]).parent / f"llava15_{size}_mixed.yaml")
    m, t, o = config.model, config.train, config.train.optimizer
    assert (m.path, m.vision_tower) == (f"checkpoints/vicuna-{size}-v1.5", "checkpoints/clip-vit-large-patch14-336")
    assert m.projector == f"checkpoints/llava-v1.5-mlp2x-336px-pretrain-vicuna-{size}-v1.5/mm_projector.bin"
    assert (m.dtype, m.remat, config.data.mixture, config.data.max_length) == ("bfloat16", "full", "mixed", 2048)
    assert (t.mode, t.epochs, t.global_batch_size) == ("full", 1, 128)
    assert (o.learning_rate, o.projector_learning_rate, o.weight_decay, o.warmup_ratio, o.clip_norm) == \
        (2e-5, 2e-5, 0.0, 0.03, 1.0)


@pytest.mark.parametrize("task", ["sst2", "ag_news", "gsm8k"])
def test_harmful_finetune_recipes_use_lisas_hyper_parameters(task):
    from vlguard_jax.hft import grid

    config = load_config(Path(__file__).parents[1] / "configs" / f"hft_llama2_7b_chat_{task}.yaml")
    grid.check(config)
    t, d = config.train, config.data
    assert (d.mixture, d.task_format, d.num_task, d.template) == ("harmful_finetune", task, 5000, "alpaca")
    assert (t.lora.rank, t.lora.alpha, t.lora.dropout, t.epochs, t.global_batch_size) == (8, 4.0, 0.1, 20, 5)
    assert (t.optimizer.learning_rate, t.optimizer.decay, t.optimizer.warmup_ratio) == (1e-5, "constant", 0.1)
    assert config.hft.poison_ratios == (0.0, 0.05, 0.1, 0.2) and config.hft.judge == "beaver_dam"
    assert config.hft.fa_rule == ("contains" if task == "gsm8k" else "exact")  # GSM8K compares final numbers


@pytest.mark.parametrize("name,architecture,template", [
    ("llava_onevision_qwen2_7b_posthoc_lora", "llava-onevision-qwen2-7b-ov", "qwen"),
    ("llava_next_mistral_7b_posthoc_lora", "llava-v1.6-mistral-7b", "mistral_instruct")])
def test_anyres_posthoc_recipes(name, architecture, template):
    """VLGuard's post-hoc LoRA recipe on an any-resolution model, in its own prompt format, with room for its largest
    image (`VisionInputs.max_tokens`) and LLaVA-1.5's 1,472 text tokens (2048 less 576 image tokens)."""
    from vlguard_jax.data.vision_inputs import VisionInputs
    from vlguard_jax.models.config import KNOWN_ARCHITECTURES

    config = load_config(Path(CONFIGS[0]).parent / f"{name}.yaml")
    t, d, llava = config.train, config.data, KNOWN_ARCHITECTURES[architecture]
    assert (t.mode, t.lora.rank, t.lora.alpha, t.epochs, t.global_batch_size) == ("lora", 128, 256.0, 3, 128)
    assert (t.optimizer.learning_rate, t.optimizer.projector_learning_rate) == (2e-4, 2e-5)
    assert (d.mixture, d.num_helpful, d.template) == ("posthoc", 5000, template)
    llava.check_template(d.template)
    assert max(d.buckets) == d.max_length >= VisionInputs.of(llava).max_tokens + 2048 - 576
    assert config.model.path == f"checkpoints/{architecture}-hf"
