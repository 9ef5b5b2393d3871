"""`eval --image-override`: one image shown with every prompt (text-only ones too), recorded in run.json, answered
exactly as a benchmark naming that image itself is, and refused where it cannot be shown."""

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from eval_fixtures import random_checkpoint
from vlguard_jax.cli import main
from vlguard_jax.data.images import ImageSource
from vlguard_jax.data.sources import Skip
from vlguard_jax.evaluate import benchmarks
from vlguard_jax.evaluate.image_override import override_images
from vlguard_jax.evaluate.protocols import protocol
from vlguard_jax.evaluate.runner import EvalConfig, evaluate

PROMPTS = [{"id": f"q{i}", "prompt": f"What is in the picture {i}?"} for i in range(4)]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The tiny random model, two noise images and a text-only JSONL benchmark; the same prompts naming `a.png` (in
    a file of the same name: the subset is named after it)."""
    root, _ = random_checkpoint(tmp_path_factory.mktemp("override"), num_test_images=1)
    folder = root / "override"
    folder.mkdir()
    for seed, name in enumerate(("a.png", "b.png")):
        noise = np.random.RandomState(seed).randint(0, 256, (24, 24, 3), dtype=np.uint8)
        Image.fromarray(noise).save(folder / name)
    (root / "text.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    (root / "native").mkdir()
    (root / "native" / "text.jsonl").write_text("".join(json.dumps({**p, "image": "a.png"}) + "\n" for p in PROMPTS))
    return root, folder


def eval_args(root, out, data, *extra):
    return ["eval", "--model", str(root / "model"), "--benchmark", "jsonl", "--data", str(data), "--out", str(out),
            "--batch-size", "2", "--max-new-tokens", "6", "--dtype", "float32", *extra]


def responses(out, name):
    return {r["id"]: r for r in map(json.loads, (out / name / "responses.jsonl").read_text().splitlines())}


def test_override_replaces_every_image_and_leaves_the_suite_untouched():
    own = benchmarks.Benchmark("own", [benchmarks.Prompt("p0", "x", "img/1.jpg"), benchmarks.Prompt("p1", "y")],
                               "asr", [Skip("bad", "malformed row")], judge="openai:harmful")
    (shown,) = override_images([own], "adv.png")
    assert [(p.id, p.text, p.image) for p in shown.prompts] == [("p0", "x", "adv.png"), ("p1", "y", "adv.png")]
    assert (shown.name, shown.metric, shown.judge, shown.skips) == ("own", "asr", "openai:harmful", own.skips)
    assert [p.image for p in own.prompts] == ["img/1.jpg", None] and shown.skips is not own.skips


def test_override_is_answered_as_the_image_itself_and_recorded(setup, tmp_path, capsys):
    root, folder = setup
    assert main(eval_args(root, tmp_path / "native", root / "native" / "text.jsonl", "--images", str(folder))) == 0
    # --images names another folder: the override wins
    assert main(eval_args(root, tmp_path / "a", root / "text.jsonl", "--image-override", str(folder / "a.png"),
                          "--images", str(root))) == 0
    native, shown_a = responses(tmp_path / "native", "text"), responses(tmp_path / "a", "text")
    assert [r["image"] for r in shown_a.values()] == ["a.png"] * len(PROMPTS)
    assert {k: r["response"] for k, r in shown_a.items()} == {k: r["response"] for k, r in native.items()}
    run = json.loads((tmp_path / "a" / "run.json").read_text())
    sha256 = hashlib.sha256((folder / "a.png").read_bytes()).hexdigest()[:16]
    assert (run["image_override"], run["image_override_sha256"], run["images"]) == (str(folder / "a.png"), sha256,
                                                                                   None)
    assert json.loads((tmp_path / "native" / "run.json").read_text())["image_override"] is None
    capsys.readouterr()
    assert main(eval_args(root, tmp_path / "a", root / "text.jsonl", "--image-override", str(folder / "b.png"))) == 2
    err = capsys.readouterr().err
    assert "other settings (image_override: " in err and f"'{folder / 'b.png'}'" in err
    assert responses(tmp_path / "a", "text") == shown_a  # untouched by the refused run


def test_library_path_with_another_image_answers_otherwise(setup, tmp_path):
    from vlguard_jax.train.trained import load_model_and_tokenizer

    root, folder = setup
    model, tokenizer = load_model_and_tokenizer(root / "model")
    suite = benchmarks.load("jsonl", root / "text.jsonl")
    config = EvalConfig(protocol("vlguard", max_new_tokens=6), batch_size=2)
    for name in ("a.png", "b.png"):
        evaluate(model, tokenizer, override_images(suite, name), tmp_path / name, ImageSource(folder), config,
                 progress=False)
    shown_a, shown_b = (responses(tmp_path / name, "text") for name in ("a.png", "b.png"))
    assert [r["image"] for r in shown_b.values()] == ["b.png"] * len(PROMPTS)
    assert [r["response"] for r in shown_a.values()] != [r["response"] for r in shown_b.values()]
    assert suite[0].prompts[0].image is None


@pytest.mark.parametrize("name, content, reason", [("missing.png", None, "file not found"),
                                                   ("broken.png", b"not a png", "unreadable")])
def test_a_missing_or_unreadable_override_is_refused_before_the_model_loads(setup, tmp_path, capsys, name, content,
                                                                            reason):
    root, _ = setup
    image = tmp_path / name
    if content is not None:
        image.write_bytes(content)
    missing_model = tmp_path / "no-model"  # never read: the image is checked first
    args = eval_args(root, tmp_path / "out", root / "text.jsonl", "--image-override", str(image))
    args[args.index("--model") + 1] = str(missing_model)
    assert main(args) == 2
    assert capsys.readouterr().err.startswith(f"error: image override {image}: {reason}")
    assert not (tmp_path / "out").exists()


def test_a_text_only_model_is_refused(setup, tmp_path, capsys):
    from hf_fixtures import save_llama
    from transformers import AutoTokenizer

    root, folder = setup
    tokenizer = AutoTokenizer.from_pretrained(root / "model")
    save_llama(tmp_path / "llama", tied=True, vocab=len(tokenizer))
    tokenizer.save_pretrained(tmp_path / "llama")
    capsys.readouterr()
    args = eval_args(root, tmp_path / "out", root / "text.jsonl", "--image-override", str(folder / "a.png"))
    args[args.index("--model") + 1] = str(tmp_path / "llama")
    assert main(args) == 2
    assert capsys.readouterr().err == (f"error: {tmp_path / 'llama'}: a text-only model (no vision tower) cannot be "
                                       f"shown the image override {folder / 'a.png'}; evaluate it without one\n")
