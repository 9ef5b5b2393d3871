"""A random tiny model saved as a checkpoint with the synthetic data's tokenizer, `eval` arguments for it, and
random LoRA runs over a model."""

from __future__ import annotations

from pathlib import Path

import jax
from flax import nnx

from train_fixtures import TINY
from vlguard_jax import save_pretrained
from vlguard_jax.data import synthetic
from vlguard_jax.data.vocab import build_tokenizer
from vlguard_jax.models.llava import LlavaForConditionalGeneration
from vlguard_jax.models.lora import LoraConfig, apply_lora
from vlguard_jax.parallel import variable_sharding
from vlguard_jax.train.setup import architecture_config
from vlguard_jax.train.trainable import trainable_filter


def random_checkpoint(root: Path, num_test_images: int, **sizes: int) -> tuple[Path, dict]:
    """`root/model` (weights + tokenizer) and the synthetic split's paths; `sizes`: other SyntheticConfig counts."""
    sizes = {"num_train_images": 2, "num_instruct": 2, **sizes}
    paths = synthetic.generate(root / "data", synthetic.SyntheticConfig(image_size=16, num_test_images=num_test_images,
                                                                        **sizes))
    tokenizer = build_tokenizer(synthetic.corpus(), vocab_size=500)
    model = LlavaForConditionalGeneration(architecture_config(TINY["model"]["architecture"], tokenizer),
                                          rngs=nnx.Rngs(0))
    save_pretrained(model, root / "model")
    tokenizer.save_pretrained(root / "model")
    return root, paths


def vlguard_eval_args(setup: tuple[Path, dict], out: Path, max_new_tokens: int, *extra: str) -> list[str]:
    root, paths = setup
    return ["eval", "--model", str(root / "model"), "--benchmark", "vlguard", "--data", str(paths["test"]),
            "--images", str(paths["images"]), "--out", str(out), "--batch-size", "2", "--max-new-tokens",
            str(max_new_tokens), *extra]


def random_adapters(model, count: int, mesh=None) -> list[nnx.State]:
    """`count` different LoRA runs over `model` (adapters and projector, as a LoRA run trains), on `mesh`."""
    apply_lora(model, LoraConfig(rank=4, alpha=8.0, dropout=0.0), nnx.Rngs(0))
    template = nnx.state(model, trainable_filter("lora"))
    states = []
    for k in range(count):
        keys = iter(jax.random.split(jax.random.key(k), len(jax.tree.leaves(template))))

        def draw(v):
            value = v[...] + 0.3 * jax.random.normal(next(keys), v.shape, v.dtype)
            return v.replace(value if mesh is None else jax.device_put(value, variable_sharding(v, mesh)))
        states.append(jax.tree.map(draw, template, is_leaf=lambda x: isinstance(x, nnx.Variable)))
    return states
