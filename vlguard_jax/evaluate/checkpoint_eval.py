"""One model directory evaluated as `vlguard-jax eval` evaluates it, for `eval` and for the commands that evaluate
several models (`table1`): one code path, so their results are the same and resume into each other.

The run's fingerprint (`fingerprint.describe` + the judges) is checked before the model loads, so a directory
holding results of other settings is refused in seconds, not after minutes of loading.
"""

from __future__ import annotations

import os
from typing import Sequence

import jax
import jax.numpy as jnp

from vlguard_jax import hosts, storage
from vlguard_jax.config import ConfigError
from vlguard_jax.data.images import ImageSource
from vlguard_jax.evaluate import judging
from vlguard_jax.evaluate.benchmarks import Benchmark
from vlguard_jax.evaluate.fingerprint import check, describe
from vlguard_jax.evaluate.image_override import override_images, override_source
from vlguard_jax.evaluate.protocols import Protocol
from vlguard_jax.evaluate.runner import EvalConfig, auto_batch_size, eval_mesh, evaluate
from vlguard_jax.train.trained import load_model_and_tokenizer


def evaluate_checkpoint(model_path: storage.PathLike, suite: Sequence[Benchmark], labels: Sequence[str],
                        files: Sequence[os.PathLike], out: storage.PathLike, protocol: Protocol,
                        judge_options: judging.JudgeOptions, *, images: os.PathLike | None = None,
                        image_override: os.PathLike | None = None, dtype: str = "bfloat16",
                        batch_size: int | None = None, mesh: str | None = None, max_skipped: float | None = None,
                        overwrite: bool = False) -> dict:
    """`summary.json`'s content for the checkpoint directory or training workdir `model_path` over `suite` (read
    from `files`; `labels`: the benchmarks as the fingerprint names them). `image_override`: an image file shown
    with every prompt in place of its own, `images` unused (`evaluate.image_override`). `batch_size` None: sized to
    the devices (`auto_batch_size`); `mesh`: `--mesh`'s spec."""
    out = storage.path(out)
    if image_override is not None:  # a missing or unreadable file is refused before the model loads
        source, suite = override_source(image_override), override_images(suite, storage.path(image_override).name)
    else:
        source = ImageSource(images) if images else None
    run = run_record(model_path, suite, labels, files, protocol, judge_options, images=images,
                     image_override=image_override, dtype=dtype)
    if not overwrite:  # before the model loads: a refusal should not cost minutes
        hosts.decide(lambda: check(out, run))
    device_mesh = eval_mesh(mesh, batch_size)
    model, tokenizer = load_model_and_tokenizer(model_path, jnp.dtype(dtype), mesh=device_mesh)
    if image_override is not None and model.config.vision is None:
        raise ConfigError(f"{model_path}: a text-only model (no vision tower) cannot be shown the image override "
                          f"{image_override}; evaluate it without one")
    if batch_size is None:
        sized = auto_batch_size(model, tokenizer, suite, protocol, device_mesh, list(run["judges"].values()))
        batch_size, how = sized.slots, sized.reason
    else:
        how = "--batch-size"
    if jax.process_index() == 0:
        print(f"slots: {batch_size} ({how})", flush=True)
    return evaluate(model, tokenizer, suite, out, source, EvalConfig(protocol, batch_size, max_skipped),
                    fingerprint=run, overwrite=overwrite, mesh=device_mesh, judge_options=judge_options)


def run_record(model_path: storage.PathLike, suite: Sequence[Benchmark], labels: Sequence[str],
               files: Sequence[os.PathLike], protocol: Protocol, judge_options: judging.JudgeOptions, *,
               images: os.PathLike | None = None, image_override: os.PathLike | None = None,
               dtype: str = "bfloat16") -> dict:
    """What OUT/run.json holds for this evaluation (`fingerprint.describe` and each subset's judge), to check a
    directory against before any model loads."""
    assigned = {b.name: judging.assign(b, protocol) for b in suite}
    return {**describe(model_path, labels, files, images, protocol, dtype, image_override),
            **judging.record(assigned, judge_options)}
