"""Orbax checkpoints of a run: trainable params, optimizer state, step and RNG, metadata. No data iterator state:
batch k is a function of k (`data.pipeline.build_pipeline(start=…)`), so a resume reads on from its step with any
number of data workers.

Only the `TrainState` is saved (for LoRA: adapters + projector); frozen weights are reloaded from their source.
The parameters are an item of their own, so `eval` and `export` read them alone (never the Adam moments), onto
whatever mesh they run on: a restore places each array on the sharding of its target, not the saved one.
Orbax writes each step into a temporary directory and renames it when complete (in a bucket, which has no
rename, a step counts once its commit marker is written), so a crash mid-save leaves the previous checkpoint intact; saves are asynchronous and the newest `keep` are kept.
"""

from __future__ import annotations

import jax
import orbax.checkpoint as ocp

from vlguard_jax import storage
from vlguard_jax.train.step import TrainState


ITEMS = ("params", "optimizer", "meta")


class Checkpointer:
    def __init__(self, directory: storage.PathLike, keep: int = 2, read_only: bool = False):
        """`directory`: local, or a bucket URI (`gs://…`) that Orbax writes through tensorstore."""
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=not read_only,
                                               create=not read_only, read_only=read_only)
        directory = storage.path(directory)
        self.directory = directory.absolute() if storage.is_local(directory) else directory
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: TrainState, meta: dict) -> None:
        self.manager.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(state.params), optimizer=ocp.args.StandardSave(_optimizer_part(state)),
            meta=ocp.args.JsonSave(meta)), force=True)

    def restore(self, step: int, abstract_state: TrainState) -> tuple[TrainState, dict]:
        """The state at `step` placed on the shardings of `abstract_state`."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(_target(abstract_state.params)),
            optimizer=ocp.args.StandardRestore(_target(_optimizer_part(abstract_state))),
            meta=ocp.args.JsonRestore()))
        return abstract_state.replace(params=restored.params, **restored.optimizer), restored.meta

    def restore_params(self, step: int, abstract_params):
        """The trainable parameters alone, on the shardings of `abstract_params` (any mesh)."""
        return self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(_target(abstract_params)))).params

    def read_meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def _optimizer_part(state: TrainState) -> dict:
    return {"step": state.step, "opt_state": state.opt_state, "rng": state.rng,
            "nonfinite_steps": state.nonfinite_steps}


def _target(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), tree)
