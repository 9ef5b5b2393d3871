"""Samples per second of the training input pipeline at 336 px (LLaVA-1.5 preprocessing), per worker count.

Usage: python scripts/bench_pipeline.py [--workers 0 2] [--batches 20] [--image-size 336] [--out FILE.json]
Synthetic VLGuard-format data at 336 px goes through the real path: tokenization, Grain, image decoding,
pad-to-square + CLIP resize/crop/normalise, padding to length buckets.
"""

import argparse
import logging
import json
import tempfile
import time

from vlguard_jax.data import synthetic
from vlguard_jax.data.chat import ChatTokenizer
from vlguard_jax.data.images import ImageConfig, ImageSource
from vlguard_jax.data.pipeline import PipelineConfig, build_pipeline, prepare
from vlguard_jax.data.sources import read_llava, read_vlguard
from vlguard_jax.data.vocab import build_tokenizer


def measure(workers: int, batches: int, batch_size: int, root: str, image_size: int) -> dict:
    paths = synthetic.generate(root, synthetic.SyntheticConfig(image_size=image_size, num_train_images=200,
                                                               num_test_images=2, num_instruct=200))
    chat = ChatTokenizer(build_tokenizer(synthetic.corpus(), vocab_size=800), "vicuna_v1", 576, max_length=1024)
    conversations = read_vlguard(paths["train"]).conversations + read_llava(paths["instruct"]).conversations
    samples, _ = prepare(conversations, chat)
    config = PipelineConfig(global_batch_size=batch_size, buckets=(1024,), num_epochs=100, workers=workers,
                            image=ImageConfig(size=image_size))
    iterator = iter(build_pipeline(samples, chat, ImageSource(paths["images"]), config))
    next(iterator)  # worker start-up excluded
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    seconds = time.perf_counter() - start
    return {"workers": workers, "batch_size": batch_size, "image_size": image_size,
            "samples_per_s": round(batches * batch_size / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=336)
    parser.add_argument("--out")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        results = [measure(w, args.batches, args.batch_size, root, args.image_size) for w in args.workers]
        logging.getLogger("vlguard_jax.data.pipeline").setLevel(logging.ERROR)  # prefetch threads outlive the data
    for r in results:
        print(f"workers={r['workers']}: {r['samples_per_s']} samples/s (batch {r['batch_size']}, {r['image_size']} px)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
