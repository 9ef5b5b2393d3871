"""Each config field's part in a run's result, field by field: what a resumed run must keep, and what a finished
result (an `hft` or `sweep` cell) records as its settings.

- PINNED: changes the math or the data (model identity, trainable set, optimizer, schedule, batch, seeds, how the
  data is drawn and tokenized). A resume that changes one is refused, naming it (`check_workdir`).
- CONTENT: a file whose content, not its path, is what counts. A resume may move it: the run's own records pin the
  content (mixture.json the data files' and the exclude list's sha256, tokenization.json the tokenizer's digest). A
  result records its content digest.
- EXTENT: how far the run goes. A resume may extend a run; a finished result depends on it.
- FREE: performance, location, cadence and tolerance knobs, and other commands' sections: no result depends on them
  beyond rounding (a run may resume with another attention kernel, remat policy, mesh or worker count).
A nested dict field (`model.architecture`, `data.synthetic_options`) counts as one field; every field of
`config.Config` has exactly one role (tests/test_pins.py checks it), and an unknown one is treated as pinned.
"""

from __future__ import annotations

import json
from typing import Callable

import yaml

from vlguard_jax import storage
from vlguard_jax.config import Config, ConfigError, to_dict

PINNED = frozenset({
    "model.path", "model.vision_tower", "model.projector",  # the weights it starts from
    "model.architecture", "model.dtype",  # a random-init model's shape; the compute dtype
    "data.synthetic", "data.synthetic_options",  # generated data: its options are its content
    "data.mixture", "data.num_helpful", "data.safety_count", "data.safety_fraction", "data.num_task",
    "data.poison_ratio", "data.num_preference", "data.seed", "data.safety_exclude_categories",  # the draw
    "data.helpful_format", "data.safety_format", "data.task_format", "data.preference_format",  # how records are read
    "data.template", "data.max_length", "data.truncation",  # how samples are tokenized (tokenization.json too)
    "data.buckets", "data.image_mode",  # which samples share a batch; the pixels of each image
    "train.mode", "train.lora", "train.optimizer",  # the trainable set, its adapters, optimizer and schedule
    "train.objective", "train.preference",  # the loss
    "train.global_batch_size", "train.accum_steps", "train.seed",
})
CONTENT = frozenset({"data.safety", "data.helpful", "data.task", "data.poison", "data.exclude", "data.preference",
                     "data.rejected", "model.tokenizer"})
EXTENT = frozenset({"train.epochs", "train.max_steps"})
FREE = frozenset({
    "model.remat", "model.attention", "model.attention_chunk", "train.loss_chunk",  # the same math, other kernels
    "data.workers", "data.cache_dir",  # throughput
    "data.safety_images", "data.helpful_images", "data.preference_images",  # where the images are
    "data.max_skip_fraction", "data.max_missing_images", "data.max_image_failures",
    "train.max_consecutive_nonfinite",  # tolerances: when to stop, not what is computed
    "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",  # cadence
    "mesh.data", "mesh.fsdp", "mesh.tensor",  # layout: a checkpoint reshards onto any mesh
    *(f"hft.{name}" for name in ("poison_ratios", "defences", "safety_count", "posthoc_helpful", "test",
                                 "test_limit", "fa_rule", "harmful", "harmful_limit", "judge", "judge_model",
                                 "judge_url", "max_new_tokens", "batch_size")),  # the hft grid's (its cells record)
})


def role(key: str) -> str | None:
    """The role of a flattened key (`model.architecture.text_config.hidden_size` is `model.architecture`'s)."""
    parts = key.split(".")
    for end in range(len(parts), 0, -1):
        field = ".".join(parts[:end])
        for name, fields in (("pinned", PINNED), ("content", CONTENT), ("extent", EXTENT), ("free", FREE)):
            if field in fields:
                return name
    return None


def check_workdir(config: Config, workdir: storage.PathLike) -> None:
    """Refuses to resume a workdir whose run differs from `config` in a pinned field, naming each (old → new).
    Says nothing when it resumes: the other fields may change freely."""
    saved_path = storage.path(workdir) / "config.yaml"
    if not saved_path.exists():
        return
    saved, current = _flatten(yaml.safe_load(saved_path.read_text()) or {}), flat(config)
    saved = {**{k: v for k, v in flat(Config()).items() if k in current}, **saved}  # a field since added: its default
    differ = [k for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)
              and (role(k) == "pinned" or (role(k) is None and k in current))]  # a field since removed: not compared
    if differ:
        details = "; ".join(f"{k}: {saved.get(k)!r} → {current.get(k)!r}" for k in differ[:8])
        more = f"; and {len(differ) - 8} more" if len(differ) > 8 else ""
        raise ConfigError(f"{workdir} holds a run of a different configuration ({details}{more}); these fields "
                          f"change the math or the data of the run, so use their original values or a new --workdir")


def result_settings(config: Config, digest: Callable[[str], str]) -> dict:
    """What a finished run's result depends on, flattened: its pinned and extent fields, and each given CONTENT
    file's digest (`digest(path)`, e.g. `content_digest`) in place of its path."""
    settings = {}
    for key, value in flat(config).items():
        kind = role(key)
        if kind in ("pinned", "extent", None):
            settings[key] = value
        elif kind == "content" and value is not None:
            settings[key] = digest(value)
    return settings


def content_digest(path: str) -> str:
    """A data file's sha256 (of a directory: of its files' names and sha256s), shortened."""
    from vlguard_jax.evaluate.fingerprint import sha256

    return f"sha256 {sha256(path)[:16]}"


def flat(config: Config) -> dict:
    """The config as JSON values keyed by dotted field name (what config.yaml holds, read back)."""
    return _flatten(json.loads(json.dumps(to_dict(config))))


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
