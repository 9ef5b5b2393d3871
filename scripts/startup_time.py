"""Start-up time and peak memory of a training run's data path on a 665k-sample LLaVA-1.5 instruction mix.

Linux (reads /proc), needs psutil. Generates once under --root a synthetic `llava_v1_5_mix665k`-like json (image records of 1-6 rounds of a few dozen
words, longer text-only conversations, words from the LLaMA vocabulary) and a VLGuard-format set, then times, each
in a fresh process, what `vlguard-jax train` does with data.mixture=mixed before its first step: load the tokenizer,
open the tokenized stores (the first start parses and tokenizes; the next one memory-maps), replay the mixture and
build the Grain pipeline until the first global batch (128 samples at 336 px) is ready.

    python scripts/startup_time.py --tokenizer DIR [--samples 665000] [--root /tmp/vlguard-startup]

DIR holds LLaMA-2's tokenizer.model (e.g. lmsys/vicuna-7b-v1.5's).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

IMAGES = 64  # distinct image files the records point at


def load_chat(tokenizer_dir: str):
    """The Vicuna / LLaMA-2 tokenizer as LLaVA-1.5 used it (legacy), with its `<image>` token."""
    from transformers import AddedToken, AutoTokenizer

    from vlguard_jax.data.chat import ChatTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, legacy=True)
    tokenizer.add_tokens([AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    return ChatTokenizer(tokenizer, "vicuna_v1", num_image_tokens=576, max_length=2048)


def generate(root: Path, samples: int, tokenizer_dir: str) -> None:
    """mix.json (`samples` records), images/ and vlguard/ (a synthetic VLGuard train split), once."""
    from PIL import Image

    from vlguard_jax.data import synthetic

    if (root / "mix.json").exists():
        return
    root.mkdir(parents=True, exist_ok=True)
    vocab = load_chat(tokenizer_dir).tokenizer.get_vocab()
    words = np.array(sorted(w[1:] for w in vocab if w.startswith("▁") and w[1:].isalpha() and len(w) > 3))
    rng = np.random.default_rng(0)
    text = lambda lo, hi: " ".join(words[rng.integers(0, len(words), rng.integers(lo, hi))]) + "."
    records = []
    for i in range(samples):
        text_only = rng.random() < 0.06  # ~40k ShareGPT conversations in the real mix
        turns = []
        for r in range(int(rng.integers(1, 5 if text_only else 7))):
            answer = text(40, 300) if text_only else text(1, 6) if rng.random() < 0.4 else text(15, 110)
            turns += [{"from": "human", "value": text(6, 30)}, {"from": "gpt", "value": answer}]
        record = {"id": f"{i:012d}", "conversations": turns}
        if not text_only:
            record["image"] = f"coco/train2017/{i % IMAGES:012d}.jpg"
            turns[0]["value"] = "<image>\n" + turns[0]["value"]
        records.append(record)
    (root / "images" / "coco" / "train2017").mkdir(parents=True, exist_ok=True)
    for i in range(IMAGES):
        pixels = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / "coco" / "train2017" / f"{i:012d}.jpg", quality=85)
    synthetic.generate(root / "vlguard", synthetic.SyntheticConfig(image_size=336, num_train_images=2000,
                                                                   num_test_images=1, num_instruct=1, num_helpful=1))
    temporary = root / "mix.json.tmp"
    temporary.write_text(json.dumps(records))
    temporary.rename(root / "mix.json")


class WorkersMemory(threading.Thread):
    """Peak resident memory of this process's children (the tokenizing workers) together, sampled."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak = 0
        self.start()

    def run(self) -> None:
        import psutil

        while True:
            total = 0
            for child in psutil.Process().children(recursive=True):
                try:
                    total += child.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.1)


def own_peak() -> int:
    """VmHWM: this process image's peak resident memory (`ru_maxrss` would count the parent's pages it was forked
    with)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) * 1024


def start(root: Path, tokenizer_dir: str) -> dict:
    """One start of the data path, timed in phases; peak resident memory of this process and of its workers."""
    from vlguard_jax.config import DataConfig
    from vlguard_jax.data.images import ImageConfig
    from vlguard_jax.data.pipeline import PipelineConfig, build_pipeline
    from vlguard_jax.data.recipes import training_data

    workers = WorkersMemory()
    tic = time.perf_counter()
    chat = load_chat(tokenizer_dir)
    loaded = time.perf_counter()
    config = DataConfig(safety=str(root / "vlguard" / "vlguard_train.json"), safety_images=str(root / "vlguard" /
                        "images"), helpful=str(root / "mix.json"), helpful_images=str(root / "images"),
                        mixture="mixed", cache_dir=str(root / "cache"))
    (root / "run").mkdir(exist_ok=True)
    data = training_data(config, root / "run", chat)
    ready = time.perf_counter()
    pipeline = build_pipeline(data.samples, chat, data.images, PipelineConfig(
        global_batch_size=128, buckets=(512, 1024, 2048), image=ImageConfig(size=336)))
    batch = next(iter(pipeline))
    done = time.perf_counter()
    return {"seconds": round(done - tic, 1), "tokenizer_s": round(loaded - tic, 1),
            "data_s": round(ready - loaded, 1), "first_batch_s": round(done - ready, 1),
            "peak_rss_gib": round(own_peak() / 2**30, 2), "peak_rss_workers_gib": round(workers.peak / 2**30, 2),
            "samples": len(data.samples), "skipped": len(data.sample_skips), "batch": list(batch["input_ids"].shape)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="a directory with LLaMA-2's tokenizer.model")
    parser.add_argument("--samples", type=int, default=665_000)
    parser.add_argument("--root", type=Path, default=Path("/tmp/vlguard-startup"))
    parser.add_argument("--start", action="store_true", help=argparse.SUPPRESS)  # one timed start, in a child
    args = parser.parse_args()
    root = args.root / str(args.samples)
    if args.start:
        print(json.dumps(start(root, args.tokenizer)))
        return
    tic = time.perf_counter()
    generate(root, args.samples, args.tokenizer)
    size = (root / "mix.json").stat().st_size / 2**30
    print(f"data: {args.samples} records, {size:.2f} GiB json ({time.perf_counter() - tic:.0f} s to have it)")
    shutil.rmtree(root / "cache", ignore_errors=True)
    shutil.rmtree(root / "run", ignore_errors=True)
    for name in ("first start (builds the stores)", "cached start (memory-maps them)"):
        out = subprocess.run([sys.executable, __file__, "--start", "--samples", str(args.samples), "--root",
                              str(args.root), "--tokenizer", args.tokenizer], check=True, stdout=subprocess.PIPE,
                             text=True).stdout
        print(f"{name}: {out.strip().splitlines()[-1]}")
    store = sum(p.stat().st_size for p in (root / "cache").rglob("*") if p.is_file()) / 2**30
    print(f"stores on disk: {store:.2f} GiB")


if __name__ == "__main__":
    main()
