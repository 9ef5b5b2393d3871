"""K LoRA runs evaluated in one pass over their base write, run by run, the files each run evaluated alone writes."""

import json

from eval_fixtures import random_adapters, random_checkpoint
from vlguard_jax.data.images import ImageSource
from vlguard_jax.evaluate import benchmarks
from vlguard_jax.evaluate.protocols import protocol
from vlguard_jax.evaluate.runner import EvalConfig, evaluate, evaluate_adapters, with_adapter
from vlguard_jax.train.trained import load_model_and_tokenizer


def test_adapters_in_one_pass_write_each_runs_own_files(tmp_path):
    root, paths = random_checkpoint(tmp_path, num_test_images=6)
    model, tokenizer = load_model_and_tokenizer(root / "model")
    adapters = random_adapters(model, 3)
    suite = benchmarks.load("vlguard", paths["test"])
    config = EvalConfig(protocol("llava", max_new_tokens=10), batch_size=2)
    images = ImageSource(paths["images"])
    together = evaluate_adapters(model, adapters, tokenizer, suite, [tmp_path / f"one_pass{k}" for k in range(3)],
                                 images, config, progress=False)
    answers = set()
    for k, adapter in enumerate(adapters):
        alone = evaluate(with_adapter(model, adapter), tokenizer, suite, tmp_path / f"alone{k}", images, config,
                         progress=False)
        assert together[k] == alone
        for benchmark in suite:
            ours = (tmp_path / f"one_pass{k}" / benchmark.name / "responses.jsonl").read_text()
            assert ours == (tmp_path / f"alone{k}" / benchmark.name / "responses.jsonl").read_text()
            answers.add(tuple(json.loads(line)["response"] for line in ours.splitlines()))
    assert len(answers) > len(suite)  # the runs answer differently: each row met its own adapter
