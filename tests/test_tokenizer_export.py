"""The tokenizer an export writes (`save_tokenizer`, as `export_workdir` and `convert` call it) reloads with
transformers' AutoTokenizer tokenizing exactly as the run's did, on the real LLaMA tokenizer, legacy or not:
transformers 5's own `save_pretrained` loses `legacy=True` (LLaVA-1.5's), turning `</s>USER` into `</s>` `USER`."""

import json
import shutil

import pytest

from data_fixtures import llama_tokenizer_dir
from tests.gcs_fixtures import gcs_bucket  # noqa: F401
from vlguard_jax import storage
from vlguard_jax.checkpoints.tokenizer import add_special, save_tokenizer
from vlguard_jax.config import config_from_dict
from vlguard_jax.data.chat import tokenizer_digest
from vlguard_jax.train.setup import load_tokenizer

TEXTS = ["A chat between a curious user and an artificial intelligence assistant. USER: <image>\nWhat is this? "
         "ASSISTANT: A cat.</s>USER: And that? ASSISTANT:", "a</s>USER:  two  spaces\n<s>x", " leading space",
         "héllo wörld 日本 🙂 <pad>"]


def run_tokenizer(tmp_path, legacy: bool):
    """The tokenizer as a run loads it from a Vicuna / LLaVA-style folder (tokenizer.model + tokenizer_config.json),
    with the `<image>` and `<pad>` a llava-hf model adds."""
    folder = tmp_path / f"legacy_{legacy}"
    folder.mkdir()
    shutil.copy(llama_tokenizer_dir() / "tokenizer.model", folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "legacy": legacy, "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False}))
    tokenizer = load_tokenizer(config_from_dict({"model": {"tokenizer": str(folder)}}, "test"), folder)
    for token in ("<image>", "<pad>"):
        add_special(tokenizer, token)
    return tokenizer


@pytest.mark.parametrize("legacy", [True, False])
def test_an_exported_tokenizer_reloads_with_the_runs_ids(tmp_path, legacy):
    from transformers import AutoTokenizer

    trained = run_tokenizer(tmp_path, legacy)
    save_tokenizer(trained, tmp_path / "export")
    exported = AutoTokenizer.from_pretrained(tmp_path / "export")
    for text in TEXTS:
        for special in (True, False):
            assert exported(text, add_special_tokens=special)["input_ids"] == \
                trained(text, add_special_tokens=special)["input_ids"], (text, special)
    assert tokenizer_digest(exported) == tokenizer_digest(trained)  # a run from the export tokenizes alike
    after_eos = exported("a</s>USER:", add_special_tokens=False)["input_ids"][2:]
    assert after_eos == ([3148, 1001, 29901] if legacy else [11889, 29901])  # `▁US` `ER` `:` legacy, `USER` `:` not


def test_plain_save_pretrained_loses_legacy(tmp_path):
    """Why `save_tokenizer` exists: if this starts failing, transformers keeps the flag itself and the fix can go."""
    from transformers import AutoTokenizer

    trained = run_tokenizer(tmp_path, legacy=True)
    trained.save_pretrained(tmp_path / "plain")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "plain")
    assert reloaded("a</s>USER:", add_special_tokens=False)["input_ids"][2:] == [11889, 29901]


def test_a_tokenizer_exported_to_a_bucket_reloads_alike(tmp_path, gcs_bucket):
    from transformers import AutoTokenizer

    trained = run_tokenizer(tmp_path, legacy=True)
    save_tokenizer(trained, f"{gcs_bucket}/export")
    local = tmp_path / "downloaded"
    local.mkdir()
    for remote in storage.path(f"{gcs_bucket}/export").iterdir():
        (local / remote.name).write_bytes(remote.read_bytes())
    assert AutoTokenizer.from_pretrained(local)(TEXTS[0])["input_ids"] == trained(TEXTS[0])["input_ids"]
