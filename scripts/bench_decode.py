"""Decode throughput of `vlguard_jax.generate` against transformers' `generate`, same model, same machine.

Usage: python scripts/bench_decode.py [--batch 1 8] [--new-tokens 64] [--repeats 3] [--out FILE.json]
The `small` model is LLaVA-shaped with random weights (~118M parameters: CLIP 6 layers × 384 at 224 px /
patch 16, LLaMA 8 layers × 768, 12 heads, MLP 2048, vocab 32064); prompts hold one image (196 tokens) and 24
text tokens. Greedy, no early stop; compile time is excluded and reported apart; pairs run alternately and
medians are reported. Needs the `test` extra (torch).
"""

import argparse
import json
import statistics
import tempfile
import time

import jax
import numpy as np
import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

import vlguard_jax
from vlguard_jax.generate import Generator, SamplingConfig

IMAGE_TOKEN = 32000


def small_model() -> LlavaForConditionalGeneration:
    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=384, intermediate_size=1536, num_hidden_layers=6,
                                       num_attention_heads=6, image_size=224, patch_size=16),
        text_config=LlamaConfig(vocab_size=32064, hidden_size=768, intermediate_size=2048, num_hidden_layers=8,
                                num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=1024),
        image_token_index=IMAGE_TOKEN)
    return LlavaForConditionalGeneration(config).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(2)
    hf = small_model()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        model = vlguard_jax.load_pretrained(tmp)
    rng = np.random.RandomState(0)
    results = []
    for batch in args.batch:
        prompts = [np.concatenate([[1], [IMAGE_TOKEN] * 196, rng.randint(3, 32000, 23)]) for _ in range(batch)]
        images = [rng.randn(3, 224, 224).astype(np.float32) for _ in range(batch)]
        generator = Generator(model, pad_id=0, stop_ids=[-1], batch_size=batch, buckets=(256,))
        sampling = SamplingConfig(max_new_tokens=args.new_tokens)
        start = time.perf_counter()
        generator.generate(prompts, images, sampling)
        compile_s = time.perf_counter() - start
        ids, pixels = torch.tensor(np.stack(prompts)), torch.tensor(np.stack(images))
        ours, theirs = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            generator.generate(prompts, images, sampling)
            ours.append(batch * args.new_tokens / (time.perf_counter() - start))
            start = time.perf_counter()
            with torch.no_grad():
                hf.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=args.new_tokens,
                            min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=0)
            theirs.append(batch * args.new_tokens / (time.perf_counter() - start))
        result = {"batch": batch, "new_tokens": args.new_tokens, "prompt_tokens": 220,
                  "ours_tokens_per_s": round(statistics.median(ours), 1),
                  "transformers_tokens_per_s": round(statistics.median(theirs), 1),
                  "ratio": round(statistics.median(ours) / statistics.median(theirs), 2),
                  "compile_s": round(compile_s, 1)}
        results.append(result)
        print(json.dumps(result))
    print(f"device: {jax.devices()[0].device_kind}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
