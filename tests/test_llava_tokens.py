"""VLGuard's train split becomes exactly the tokens and labels LLaVA-1.5 + VLGuard trained on.

The reference is written here from the upstream code: VLGuard's `convert_to_llava_format.py` (`random.seed(0)`,
one `random.shuffle` per two-pair record in file order, `<image>` + the first instruction), LLaVA's
`preprocess_multimodal` (`<image>\\n` + the stripped text), the `vicuna_v1` (and `llava_llama_2`) template,
`tokenizer_image_token` and `preprocess_v1`'s (`preprocess_llama_2`'s) per-round label arithmetic, with raw
sentencepiece standing in for the legacy slow LLaMA tokenizer of transformers 4.31 (text split at special tokens,
every piece encoded with its word-start `▁`).
"""

import json
import random
import re

import numpy as np
import pytest

from data_fixtures import llama_tokenizer_dir, shared_file
from vlguard_jax.data.chat import IGNORE, ChatTokenizer, tokenizer_digest
from vlguard_jax.data.sources import read_vlguard

spm = pytest.importorskip("sentencepiece")
IMAGE_INDEX = -200  # LLaVA's placeholder id
LLAMA_2_SYSTEM = ("You are a helpful language and vision assistant. You are able to understand the visual content "
                  "that the user provides, and assist the user with a variety of tasks using natural language.")
SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the user's questions.")


def convert_to_llava_format(records: list[dict]) -> list[list[dict]]:
    random.seed(0)
    conversations = []
    for item in records:
        pairs = list(item["instr-resp"])
        if len(pairs) > 1:
            random.shuffle(pairs)
            turns = [(list(pairs[0])[0], pairs[0], True), (list(pairs[1])[0], pairs[1], False)]
        else:
            turns = [("instruction", pairs[0], True)]
        conversation = []
        for key, pair, first in turns:
            conversation += [{"from": "human", "value": ("<image>" if first else "") + pair[key]},
                             {"from": "gpt", "value": pair["response"]}]
        conversations.append(conversation)
    return conversations


def preprocess_multimodal(conversation: list[dict]) -> list[dict]:
    out = []
    for sentence in conversation:
        value = sentence["value"]
        if "<image>" in value:
            value = ("<image>\n" + value.replace("<image>", "").strip()).strip()
        out.append({**sentence, "value": value})
    return out


class SlowLegacyTokenizer:
    """transformers 4.31's `LlamaTokenizer(legacy=True)`: special tokens split out, each piece sp-encoded."""

    def __init__(self, model_file):
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        self.specials = {"<s>": 1, "</s>": 2, "<unk>": 0}

    def __call__(self, text: str) -> list[int]:
        ids = [1]
        for i, piece in enumerate(re.split("(<s>|</s>|<unk>)", text)):
            ids += [self.specials[piece]] if i % 2 else self.sp.encode(piece)
        return ids


def tokenizer_image_token(prompt: str, tok) -> list[int]:
    chunks = [tok(chunk) for chunk in prompt.split("<image>")]
    ids = [chunks[0][0]]
    for i, chunk in enumerate(chunks):
        ids += ([IMAGE_INDEX] if i else []) + chunk[1:]
    return ids


def vicuna_v1_prompt(conversation: list[dict]) -> str:
    prompt = SYSTEM + " "
    for j, sentence in enumerate(conversation):
        prompt += ("USER" if j % 2 == 0 else "ASSISTANT") + ": " + sentence["value"] + (" " if j % 2 == 0 else "</s>")
    return prompt


def llama_2_prompt(conversation: list[dict]) -> str:
    """`conv_llava_llama_2.get_prompt()` (sep `<s>`, sep2 `</s>`)."""
    prompt = ""
    for j, sentence in enumerate(conversation):
        message = sentence["value"]
        if j == 0:
            message = f"<<SYS>>\n{LLAMA_2_SYSTEM}\n<</SYS>>\n\n" + message
        prompt += "<s>" + f"[INST] {message} [/INST]" if j % 2 == 0 else " " + message + " " + "</s>"
    return prompt.lstrip("<s>")


def preprocess(conversation: list[dict], tok, template: str) -> tuple[np.ndarray, np.ndarray]:
    """`preprocess_v1` (`vicuna_v1`) or `preprocess_llama_2` (`llama2`): the same arithmetic, other separators."""
    prompt = (vicuna_v1_prompt if template == "vicuna_v1" else llama_2_prompt)(conversation)
    input_ids = tokenizer_image_token(prompt, tok)
    target = list(input_ids)
    sep = " ASSISTANT: " if template == "vicuna_v1" else "[/INST] "
    cur_len = 1
    target[:cur_len] = [IGNORE]
    for rou in prompt.split("</s>"):
        if rou == "":
            break
        parts = rou.split(sep)
        assert len(parts) == 2
        parts[0] += sep
        round_len = len(tokenizer_image_token(rou, tok))
        instruction_len = len(tokenizer_image_token(parts[0], tok)) - 2
        target[cur_len: cur_len + instruction_len] = [IGNORE] * instruction_len
        cur_len += round_len
    target[cur_len:] = [IGNORE] * (len(target) - cur_len)
    assert cur_len == len(input_ids), "LLaVA's tokenization mismatch: it would mask this sample"
    return np.asarray(input_ids), np.asarray(target)


def hf_tokenizer(kind: str, tmp_path):
    from transformers import AddedToken, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(llama_tokenizer_dir(), legacy=kind == "legacy")
    tokenizer.add_tokens([AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    if kind == "saved_tokenizer_json":  # like llava-hf's tokenizer.json, which tokenizes non-legacy
        tokenizer.save_pretrained(tmp_path)
        tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    return tokenizer


@pytest.fixture(scope="module")
def reference():
    path = shared_file("vlguard/train.json")
    records = json.loads(path.read_text())
    tok = SlowLegacyTokenizer(llama_tokenizer_dir() / "tokenizer.model")
    conversations = [preprocess_multimodal(c) for c in convert_to_llava_format(records)]
    return path, records, {template: [preprocess(c, tok, template) for c in conversations]
                           for template in ("vicuna_v1", "llama2")}


def test_round_order_is_convert_to_llava_formats(reference):
    path, records, _ = reference
    upstream = [preprocess_multimodal(c) for c in convert_to_llava_format(records)]
    ours = read_vlguard(path)
    assert not ours.skips and len(ours.conversations) == 2000 and ours.duplicate_ids == ["Ads_303871"]
    two_round = 0
    for conversation, expected in zip(ours.conversations, upstream):
        two_round += len(expected) == 4
        assert [t.text for t in conversation.turns] == [s["value"].removeprefix("<image>\n") for s in expected]
    assert two_round == 977


@pytest.mark.parametrize("kind,template", [("legacy", "vicuna_v1"), ("non_legacy", "vicuna_v1"),
                                           ("saved_tokenizer_json", "vicuna_v1"), ("non_legacy", "llama2")])
def test_vlguard_train_tokens_and_labels_equal_llavas(kind, template, reference, tmp_path):
    path, _, expected = reference
    tokenizer = hf_tokenizer(kind, tmp_path)
    chat = ChatTokenizer(tokenizer, template, num_image_tokens=576, max_length=2**31 - 1)
    image_id = chat.image_token_id
    conversations = read_vlguard(path).conversations
    for conversation, (ref_ids, ref_labels) in zip(conversations, expected[template], strict=True):
        encoded = chat.encode(conversation, expand_image=False)  # raises on a rejected conversation
        np.testing.assert_array_equal(encoded.input_ids, np.where(ref_ids == IMAGE_INDEX, image_id, ref_ids),
                                      err_msg=conversation.id)
        np.testing.assert_array_equal(encoded.labels, ref_labels, err_msg=conversation.id)


def test_ids_after_eos_are_the_legacy_ones(tmp_path):
    """`</s>USER` is `</s>` `▁US` `ER` (2 3148 1001) for every tokenizer form, never `USER` (11889)."""
    for kind in ("legacy", "non_legacy", "saved_tokenizer_json"):
        tokenizer = hf_tokenizer(kind, tmp_path / kind)
        own = tokenizer("a</s>USER", add_special_tokens=False)["input_ids"]
        assert own[-1] == (1001 if kind == "legacy" else 11889)  # what each tokenizer does left alone
        chat = ChatTokenizer(tokenizer, "vicuna_v1", num_image_tokens=576)
        ids, _ = chat._tokenize(chat.segments(
            [_turn("user", "Hi"), _turn("assistant", "Hello"), _turn("user", "Bye"), _turn("assistant", "Ok")], False))
        eos = int(np.flatnonzero(ids == 2)[0])
        assert ids[eos: eos + 3].tolist() == [2, 3148, 1001], kind


def test_fingerprint_tells_tokenizers_and_templates_apart(tmp_path):
    legacy, non_legacy = hf_tokenizer("legacy", tmp_path / "a"), hf_tokenizer("non_legacy", tmp_path / "b")
    assert tokenizer_digest(legacy) == tokenizer_digest(hf_tokenizer("legacy", tmp_path / "c"))
    assert tokenizer_digest(legacy) != tokenizer_digest(non_legacy)
    vicuna = ChatTokenizer(legacy, "vicuna_v1", 576).fingerprint()
    assert vicuna["tokenization"] == "llava_legacy" and vicuna["template"] == "vicuna_v1"
    assert ChatTokenizer(legacy, "llava_v1", 576).fingerprint() != vicuna


def _turn(role, text):
    from vlguard_jax.data.sources import Turn

    return Turn(role, text)
