"""Gradient accumulation moves no batch row between devices: each device splits its own rows into micro-batches.

Splitting the global batch into contiguous blocks made the partitioner all-gather every batch input over `data`
and permute activations, masks and labels between devices in every micro-step (data 2 × fsdp 4, accum_steps 2)."""

import re

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding

from train_fixtures import TINY
from vlguard_jax.config import config_from_dict
from vlguard_jax.parallel import logical_to_spec, make_mesh
from vlguard_jax.train.setup import build
from vlguard_jax.train.step import split_micro_batches

COLLECTIVE = re.compile(r"= (\([^()]*\)|\w+\[[\d,]*\]\S*) (all-to-all|collective-permute|all-gather)(?:-start)?\(")


def collectives(hlo: str) -> list[tuple[str, list[list[int]]]]:
    """(op, dims of each result array) of every all-to-all, collective-permute and all-gather."""
    return [(op, [[int(d) for d in dims.split(",") if d] for dims in re.findall(r"\[([\d,]*)\]", shape)])
            for shape, op in COLLECTIVE.findall(hlo)]


def moves_rows(op: str, shapes: list[list[int]], length: int, image: int) -> bool:
    """A permute or all-to-all of anything, or an all-gather of positions or pixels (parameters have neither)."""
    batch_like = lambda d: length in d or length - 1 in d or d[-3:] == [3, image, image]
    return op != "all-gather" or any(batch_like(d) for d in shapes)


def test_accumulation_keeps_each_devices_rows_on_that_device():
    rows, accum = 16, 2
    config = config_from_dict({**TINY, "train": {**TINY["train"], "accum_steps": accum, "global_batch_size": rows}},
                              "tiny")
    mesh = make_mesh(data=2, fsdp=4)
    run = build(config, mesh, values="abstract")
    length, image = config.data.max_length, run.llava.vision.image_size
    sharded = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(
        mesh, logical_to_spec(("batch",))))
    batch = {"input_ids": sharded((rows, length), jnp.int32), "labels": sharded((rows, length), jnp.int32),
             "attention_mask": sharded((rows, length), jnp.bool_),
             "pixel_values": sharded((rows, 3, image, image), jnp.float32)}
    with jax.set_mesh(mesh):
        hlo = run.train_step(accum).lower(run.abstract_state(), run.frozen, batch).compile().as_text()
    found = collectives(hlo)
    assert any(op == "all-gather" for op, _ in found)  # fsdp gathers the parameters: the parsing sees collectives
    moved = [(op, shapes) for op, shapes in found if moves_rows(op, shapes, length, image)]
    assert moved == []


def test_micro_batch_i_takes_rows_i_i_plus_accum_and_so_on():
    rows = jnp.arange(8)
    assert split_micro_batches({"x": rows}, 2)["x"].tolist() == [[0, 2, 4, 6], [1, 3, 5, 7]]
    with jax.set_mesh(make_mesh(data=2, fsdp=4)):
        with pytest.raises(ValueError, match=r"8 rows over data × fsdp = 8 devices give 1 rows per device, which do "
                                             r"not split into accum_steps = 2 micro-batches"):
            jax.eval_shape(lambda b: split_micro_batches(b, 2), {"x": rows})
