"""Samples per second of the training input pipeline at LLaVA-1.5's 336 px, in this process (workers=0).

Synthetic VLGuard-format data goes the real path: tokenized stores (memory-mapped), Grain, image decoding,
pad-to-square + CLIP resize/crop/normalise, padding to a length bucket.
"""

from __future__ import annotations

import logging
import tempfile
import time

from vlguard_jax.data import synthetic
from vlguard_jax.data.chat import ChatTokenizer
from vlguard_jax.data.images import ImageConfig, ImageSource
from vlguard_jax.data.pipeline import PipelineConfig, build_pipeline
from vlguard_jax.data.store import Samples, SourceFile, open_stores
from vlguard_jax.data.vocab import build_tokenizer


def samples_per_second(batches: int = 20, batch_size: int = 8, image_size: int = 336, workers: int = 0) -> dict:
    with tempfile.TemporaryDirectory() as root:
        paths = synthetic.generate(root, synthetic.SyntheticConfig(image_size=image_size, num_train_images=200,
                                                                   num_test_images=2, num_instruct=200))
        chat = ChatTokenizer(build_tokenizer(synthetic.corpus(), vocab_size=800), "vicuna_v1", 576, max_length=1024)
        files = {"train": SourceFile.of("vlguard", paths["train"]),
                 "instruct": SourceFile.of("llava", paths["instruct"])}
        stores = open_stores(files, chat, f"{root}/cache").values()
        samples, _ = Samples.select([(store, store.ids) for store in stores])
        config = PipelineConfig(global_batch_size=batch_size, buckets=(1024,), num_epochs=100, workers=workers,
                                image=ImageConfig(size=image_size))
        iterator = iter(build_pipeline(samples, chat, ImageSource(paths["images"]), config))
        next(iterator)  # start-up excluded
        start = time.perf_counter()
        for _ in range(batches):
            next(iterator)
        seconds = time.perf_counter() - start
        logging.getLogger("vlguard_jax.data.pipeline").setLevel(logging.ERROR)  # prefetch threads outlive the data
    return {"samples_per_s": batches * batch_size / seconds, "batch_size": batch_size, "image_size": image_size,
            "workers": workers}
