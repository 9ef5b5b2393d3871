"""`train.preference.reference: precomputed`: the reference's log-probabilities of every pair, computed in one pass
before step 0 and stored with the run, so that each step runs the policy alone (a forward over both answers fewer).

The pass walks the run's pairs in their order, a global batch at a time, through the pipeline's own batch builder
(`HostBatch`: the same tokens, padding and pixels a step sees), every process its rows on the run's mesh. The
reference is the one the step would use (`preference.reference_logps`); the values are gathered whole on every
process and process 0 writes WORKDIR/reference_logps.npy (`[pairs, 2]` float32, chosen then rejected). A later start
of the run reads the file back; one whose shape does not match the run's pairs is refused.
"""

from __future__ import annotations

import io

import jax
import numpy as np
from jax.experimental import multihost_utils

from vlguard_jax import storage
from vlguard_jax.config import ConfigError
from vlguard_jax.data.pipeline import HostBatch, PipelineConfig
from vlguard_jax.data.recipes import TrainingData
from vlguard_jax.data.vision_inputs import TILED_KEYS
from vlguard_jax.train.preference import base_logps
from vlguard_jax.train.setup import RunSetup

FILE = "reference_logps.npy"
KEYS = ("input_ids", "labels", "attention_mask", "pixel_values", *TILED_KEYS)


def reference_logps(setup: RunSetup, data: TrainingData, chat, pipeline: PipelineConfig,
                    workdir: storage.Path) -> np.ndarray:
    """`[pairs, 2]` reference log-probabilities of the run's pairs, in the order of `data.samples`: read from
    WORKDIR/reference_logps.npy, else computed (every process takes part) and written there by process 0."""
    path, pairs = workdir / FILE, len(data.samples)
    if not path.exists():
        values = _compute(setup, data, chat, pipeline)
        if jax.process_index() == 0:
            buffer = io.BytesIO()
            np.save(buffer, values)
            storage.write_bytes(path, buffer.getvalue())
        multihost_utils.sync_global_devices("vlguard-jax: reference log-probabilities written")
    values = np.load(io.BytesIO(path.read_bytes()))
    if values.shape != (pairs, 2):
        raise ConfigError(f"{path} holds reference log-probabilities of shape {values.shape}, but this run has "
                          f"{pairs} pairs: it belongs to another run; delete it or use a new --workdir")
    return values


def _compute(setup: RunSetup, data: TrainingData, chat, pipeline: PipelineConfig) -> np.ndarray:
    size, pairs = pipeline.global_batch_size, len(data.samples)
    build = HostBatch(data.samples, chat, data.images, pipeline, jax.process_index(), jax.process_count(),
                      data.rejected)
    score = jax.jit(lambda frozen, reference, batch: base_logps(setup.graphdef, setup.template, frozen, reference,
                                                                batch, setup.preference),
                    in_shardings=(setup.frozen_shardings, jax.tree.map(lambda a: a.sharding, setup.reference),
                                  setup.batch_sharding),
                    out_shardings=setup.replicated)
    values = []
    for start in range(0, pairs, size):
        indices = np.arange(start, start + size) % pairs  # the last batch filled up with the first pairs
        local = build(indices)
        batch = {k: jax.make_array_from_process_local_data(setup.batch_sharding, local[k]) for k in KEYS if k in local}
        with jax.set_mesh(setup.mesh):
            values.append(np.asarray(score(setup.frozen, setup.reference, batch)))
    return np.concatenate(values)[:pairs].astype(np.float32)
