"""Typed run configuration: YAML in, dotted `KEY=VALUE` overrides, unknown keys and wrong types are errors.

Every section is a frozen dataclass; `load_config("configs/x.yaml", ["train.epochs=1"])` returns a `Config`,
and `dump_config` writes the resolved config that a run stores beside its checkpoints.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from typing import Any

import yaml

from vlguard_jax import storage
from vlguard_jax.models.lora import DEFAULT_TARGETS
from vlguard_jax.train.optimizer import OptimizerConfig


class ConfigError(ValueError):
    """A config that cannot be used; names the file (or override) and the key."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    path: str | None = None  # checkpoint directory (llava-hf or original LLaVA layout), or a LLaMA / Vicuna one
    vision_tower: str | None = None  # CLIP directory, for original LLaVA checkpoints and LLaMA / Vicuna paths
    projector: str | None = None  # LLaVA's stage-1 mm_projector.bin (or .safetensors), for LLaMA / Vicuna paths
    tokenizer: str | None = None  # defaults to `path`; the synthetic data's tokenizer when data.synthetic
    architecture: dict | None = None  # llava-hf config.json dict: random init instead of `path` (tiny models)
    dtype: str = "float32"  # compute dtype and the dtype of frozen weights; trainable weights stay fp32
    remat: str = "none"
    attention_chunk: int = 0  # decoder queries per attention block (0: all); bounds the scores' memory
    attention: str = "auto"  # auto (cuDNN on GPU, splash on TPU, ours on CPU), ours, xla, cudnn or splash


@dataclasses.dataclass(frozen=True)
class DataConfig:
    synthetic: bool = False  # generate the synthetic VLGuard-format dataset into WORKDIR/data when absent
    synthetic_options: dict = dataclasses.field(default_factory=dict)  # SyntheticConfig fields
    safety: str | None = None  # VLGuard train json
    safety_images: str | None = None  # its image directory or zip
    helpful: str | None = None  # helpfulness / instruction data json
    helpful_format: str = "llava"  # llava or alpaca
    helpful_images: str | None = None
    mixture: str = "posthoc"  # posthoc, mixed, safety (its data only), helpful (instruction data only), harmful_finetune,
    # preference (the pairs of data.preference only: train.objective dpo or ipo)
    safety_format: str = "vlguard"  # or alpaca (text refusals: the text models' safety data)
    num_helpful: int = 5000
    safety_count: int | None = None
    safety_fraction: float | None = None
    task: str | None = None  # harmful_finetune: the user's task data, its format and how many samples (n)
    task_format: str = "sst2"  # sst2, ag_news, gsm8k or alpaca
    num_task: int = 5000
    poison: str | None = None  # harmful_finetune: harmful question-answer pairs (BeaverTails-style jsonl)
    poison_ratio: float = 0.0  # p: the fraction of the n samples that are harmful pairs
    # Sample ids removed from every source the mixture draws from, before it draws (VLGuard's "Clean" models: mix665k
    # minus what Llama Guard flagged): `vlguard-jax data audit`'s flagged.jsonl, a json list of ids (or
    # {"ids": [...]}) or a text file of one id per line. See `data.exclusion`.
    exclude: str | None = None
    # VLGuard harm categories removed from the safety data ("privacy", "violence" or "risky behavior/violence"): the
    # paper's held-out category (§4.4); vlguard-format safety data only.
    safety_exclude_categories: tuple[str, ...] = ()
    # Preference pairs (data.mixture: preference): a JSONL of {id, image?, prompt, chosen, rejected} (jsonl), SPA-VL's
    # release (spavl: its parquet file or folder, images embedded or named under preference_images), or VLGuard's
    # train json (vlguard: VLGuard's answer chosen; rejected from data.rejected, else the initial model's own answer,
    # generated once into WORKDIR/rejected). See `data.preference`.
    preference: str | None = None
    preference_format: str = "jsonl"
    preference_images: str | None = None
    num_preference: int | None = None  # pairs drawn (seeded); unset: all
    rejected: str | None = None  # vlguard pairs: a JSONL of {id, rejected} answers instead of generating them
    template: str = "vicuna_v1"
    max_length: int = 2048
    truncation: str = "skip"
    buckets: tuple[int, ...] = (512, 1024, 2048)
    workers: int = 0
    image_mode: str = "pad"
    max_skip_fraction: float = 0.05
    # Before step 0 every image the mixture names is looked up in its part's root (a listing, no decode); more than
    # this fraction missing stops the run. Images allowed missing still fail when read: raise max_image_failures too.
    max_missing_images: float = 0.0
    # Rows whose image fails to load while training carry no loss. The run stops, naming them, once they exceed this
    # fraction of the run's rows (steps × global batch): with every image found before step 0, a failure is a corrupt
    # file, which the reference training (LLaVA's loader) would crash on; raise it to train past known-bad images.
    max_image_failures: float = 0.0
    seed: int = 0
    cache_dir: str | None = None  # tokenized data (default WORKDIR/cache); one shared path serves many runs and hosts


@dataclasses.dataclass(frozen=True)
class LoraSection:
    rank: int = 128
    alpha: float = 256.0
    dropout: float = 0.05
    targets: str = DEFAULT_TARGETS
    rslora: bool = False


@dataclasses.dataclass(frozen=True)
class PreferenceSection:
    """DPO / IPO (`train.objective`): the policy's log-probability margin over the reference's, β scaling it."""

    beta: float = 0.1  # DPO's β; IPO's τ
    label_smoothing: float = 0.0  # cDPO: the assumed fraction of pairs whose labels are flipped (sigmoid loss only)
    # RPO (TRL's rpo_alpha): this weight × the chosen answer's token-mean NLL added to each pair's loss, an SFT anchor
    # that keeps the chosen answers likely while the margin grows
    rpo_alpha: float = 0.0
    # model: the reference forward runs in every step; precomputed: once over all pairs before step 0, stored in
    # WORKDIR/reference_logps.npy (`train.reference_pass`), each step then a forward over both answers fewer
    reference: str = "model"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    mode: str = "lora"  # lora (adapters + projector), full (all but the vision tower), projector
    objective: str = "sft"  # sft (masked cross-entropy), dpo or ipo (preference pairs: data.mixture preference)
    preference: PreferenceSection = PreferenceSection()
    lora: LoraSection = LoraSection()
    optimizer: OptimizerConfig = OptimizerConfig()
    epochs: int = 3
    max_steps: int | None = None  # stop earlier than `epochs` (smoke runs)
    global_batch_size: int = 128
    accum_steps: int = 1
    loss_chunk: int = 0  # > 0: cross-entropy this many positions at a time (no full [batch, len, vocab] logits)
    seed: int = 0
    log_every: int = 1
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    max_consecutive_nonfinite: int = 5


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    data: int = 1
    fsdp: int = -1  # -1: every device not used by data and tensor
    tensor: int = 1


@dataclasses.dataclass(frozen=True)
class HftSection:
    """`vlguard-jax hft`: a grid of harmful fine-tunes (`data.mixture: harmful_finetune`) over poison ratios ×
    defences, each scored by fine-tune accuracy on the task's test split and harmful score on harmful questions."""

    poison_ratios: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2)
    defences: tuple[str, ...] = ("none", "vlguard")  # and posthoc: VLGuard post-hoc fine-tuning after the attack
    safety_count: int = 1000  # samples of data.safety that a defence uses
    posthoc_helpful: int = 1000  # posthoc: task samples trained beside the safety data
    test: str | None = None  # the task's test split (the benchmark named by data.task_format)
    test_limit: int | None = None  # its first N prompts (Vaccine scores 500, Lisa 1,000)
    fa_rule: str = "contains"  # SST-2 / AG News: the label word contained (Vaccine), or exact (the answer: Lisa)
    harmful: str | None = None  # harmful questions (`harmful_score` benchmark formats)
    harmful_limit: int | None = None
    judge: str = "keywords"  # of the harmful score: beaver_dam, llama_guard, openai[:RUBRIC]; keywords is offline
    judge_model: str | None = None  # beaver_dam / llama_guard: the checkpoint directory; openai: the model's name
    judge_url: str | None = None  # openai: the server's base URL
    max_new_tokens: int = 128
    batch_size: int = 8


@dataclasses.dataclass(frozen=True)
class Config:
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    mesh: MeshConfig = MeshConfig()
    hft: HftSection = HftSection()


def load_config(path: str | os.PathLike | None, overrides: list[str] = ()) -> Config:
    raw: dict = {}
    if path is not None:
        try:
            raw = yaml.safe_load(storage.path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep:
            raise ConfigError(f"override {override!r} is not KEY=VALUE (e.g. train.epochs=1)")
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return config_from_dict(raw, str(path or "overrides"))


def config_from_dict(raw: dict, source: str) -> Config:
    """A `Config` from plain data; `source` names where it came from in error messages."""
    return _build(Config, raw, source, "")


def _build(cls, raw: Any, source: str, prefix: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or 'top level'}' must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown key {prefix}{unknown[0]} (known in this section: "
                          f"{', '.join(sorted(fields))})")
    hints = typing.get_type_hints(cls)
    values = {name: _convert(hints[name], value, source, prefix + name) for name, value in raw.items()}
    return cls(**values)


def _convert(hint, value, source: str, key: str):
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, source, key + ".")
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, source, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {key} must be a list, got {type(value).__name__} {value!r}")
        return tuple(_convert(args[0], v, source, key) for v in value)
    expected = origin or hint
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
        raise ConfigError(f"{source}: {key} must be {expected.__name__}, got {type(value).__name__} {value!r}")
    return value


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def dump_config(config: Config, path: str | os.PathLike) -> None:
    storage.write_text(path, yaml.safe_dump(_plain(to_dict(config)), sort_keys=False))


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
