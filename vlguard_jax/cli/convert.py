"""`vlguard-jax convert`: a checkpoint to llava-hf (or minigpt_v2) layout."""

from __future__ import annotations

import argparse
from pathlib import Path

from vlguard_jax import storage
from vlguard_jax.cli.common import DTYPES


def register(commands: argparse._SubParsersAction) -> None:
    convert = commands.add_parser(
        "convert", help="convert a checkpoint (original LLaVA + CLIP, any llava-hf layout, LLaVA's stage-1 parts or "
                        "MiniGPT-v2's released parts) to llava-hf layout (MiniGPT-v2: its minigpt_v2 layout)")
    convert.add_argument("source", type=Path, help="checkpoint directory (config.json + weights)")
    convert.add_argument("out", type=storage.path, help="output directory (local or gs://…)")
    convert.add_argument("--vision-tower", type=Path,
                         help="the separate tower: a CLIP checkpoint directory, or MiniGPT-v2's eva_vit_g.pth")
    convert.add_argument("--projector", type=Path,
                         help="the separate projector: LLaVA's stage-1 mm_projector.bin, or MiniGPT-v2's checkpoint")
    convert.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype of the written weights")
    convert.add_argument("--max-shard-gb", type=float, default=5.0, help="largest safetensors shard, in GiB")
    convert.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import jax
    import jax.numpy as jnp

    from vlguard_jax.checkpoints.hf import load_pretrained, save_pretrained
    from vlguard_jax.checkpoints.tokenizer import convert_tokenizer
    from vlguard_jax.parallel import make_mesh

    dtype = jnp.dtype(args.dtype)
    mesh = make_mesh(fsdp=jax.local_device_count(), devices=jax.local_devices())  # a 13B fp32 model on many chips
    model = load_pretrained(args.source, dtype=dtype, vision_tower=args.vision_tower, projector=args.projector,
                            mesh=mesh)
    out = save_pretrained(model, args.out, max_shard_bytes=int(args.max_shard_gb * 2**30))
    print(f"wrote {model.config.layout} weights and config.json to {out}")
    print(convert_tokenizer(args.source, out, model.config))
    return 0
