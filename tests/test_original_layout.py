"""Original LLaVA checkpoints (+ a separate CLIP directory) load and convert to their llava-hf twin."""

import jax.numpy as jnp
import numpy as np
from transformers import AutoTokenizer
from transformers import LlavaForConditionalGeneration as HFLlava

import vlguard_jax
from hf_fixtures import IMAGE_TOKEN, hf_logits, mixed_batch, original_twin, save_original
from test_hf_parity import assert_logits_match, forward
from vlguard_jax.cli import main


def test_original_layout_gives_the_llava_hf_logits(tmp_path):
    twin = original_twin("mha")
    llava_dir, clip_dir = save_original(twin, tmp_path)
    ids, mask, pixels = mixed_batch(twin.config)
    model = vlguard_jax.load_pretrained(llava_dir, vision_tower=clip_dir)
    assert model.config.image_token_id == IMAGE_TOKEN and model.config.text.vocab_size == 128
    assert_logits_match(forward(model, jnp.asarray(ids), jnp.asarray(pixels), jnp.asarray(mask)),
                        hf_logits(twin, ids, mask, pixels), mask)


def test_convert_cli_writes_a_transformers_checkpoint(tmp_path, capsys):
    twin = original_twin("gqa", seed=5)
    llava_dir, clip_dir = save_original(twin, tmp_path)
    out = tmp_path / "converted"
    assert main(["convert", str(llava_dir), str(out), "--vision-tower", str(clip_dir)]) == 0
    converted, info = HFLlava.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ids, mask, pixels = mixed_batch(twin.config)
    np.testing.assert_allclose(hf_logits(converted.eval(), ids, mask, pixels)[mask.astype(bool)],
                               hf_logits(twin, ids, mask, pixels)[mask.astype(bool)], atol=1e-4, rtol=0)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.convert_tokens_to_ids("<image>") == IMAGE_TOKEN
    assert tokenizer.pad_token_id == IMAGE_TOKEN + 1
    assert tokenizer("w5 <image> w7")["input_ids"][-2:] == [IMAGE_TOKEN, 7]
    assert "wrote the tokenizer" in capsys.readouterr().out
