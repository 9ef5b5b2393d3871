"""A random tiny model saved as a checkpoint with the synthetic data's tokenizer, and `eval` arguments for it."""

from __future__ import annotations

from pathlib import Path

from flax import nnx

from train_fixtures import TINY
from vlguard_jax import save_pretrained
from vlguard_jax.data import synthetic
from vlguard_jax.data.vocab import build_tokenizer
from vlguard_jax.models.llava import LlavaForConditionalGeneration
from vlguard_jax.train.setup import architecture_config


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
