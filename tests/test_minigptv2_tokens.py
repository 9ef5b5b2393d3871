"""MiniGPT-v2's prompts and training samples become exactly the tokens MiniGPT-v2's own code makes of them.

The reference is written here from Vision-CAIR/MiniGPT-4: generation from `conversation.py` (`CONV_VISION_minigptv2`:
roles `<s>[INST] ` / ` [/INST]`, no system, no separator; `Chat.ask` joins the question to the image message) and
`minigpt_base.py` `get_context_emb` (the prompt split at `<ImageHere>`, the first piece tokenized with BOS); training
from `llava_dataset.py` `LlavaConversationDataset` (`'<Img><ImageHere></Img> {} '` around the first question,
later ones + " "), `minigpt_base.py` `prompt_wrap`, `tokenize_conversation` and `forward` (BOS, the wrapped
prompt, each answer + `</s>` and each later `<s>` + question tokenized alone, only answers supervised), with
`prompt_template` "[INST] {} [/INST]". Raw sentencepiece stands in for the legacy slow tokenizer MiniGPT-v2 used.
"""

import json

import numpy as np
import pytest

from data_fixtures import llama_tokenizer_dir, shared_file
from test_llava_tokens import SlowLegacyTokenizer, convert_to_llava_format, hf_tokenizer
from vlguard_jax.data.chat import IGNORE, ChatTokenizer
from vlguard_jax.data.sources import Turn, read_vlguard

IMAGE = -1  # stands for the 256 image features MiniGPT-v2 splices in
TEMPLATE = "[INST] {} [/INST]"


def tokenize(tok: SlowLegacyTokenizer, text: str, add_special_tokens: bool) -> list[int]:
    ids = tok(text)
    return ids if add_special_tokens else ids[1:]


def generation_ids(question: str, task: str, tok) -> list[int]:
    """`prepare_texts` + `get_context_emb` for one image and one question."""
    roles = ("<s>[INST] ", " [/INST]")
    prompt = "" + "" + roles[0] + "<Img><ImageHere></Img> " + task + question + "" + roles[1]
    before, after = prompt.split("<ImageHere>")
    return tokenize(tok, before, True) + [IMAGE] + tokenize(tok, after, False)


def training_ids(conversation: list[dict], task: str, tok) -> tuple[list[int], list[int]]:
    """`LlavaConversationDataset.__getitem__` → `preparing_embedding` → `forward`'s ids and targets."""
    first = conversation[0]["value"].replace("<image>", "").replace("\n", "").strip()
    questions = ["<Img><ImageHere></Img> {} ".format(task + first)]
    answers = []
    for i, item in enumerate(conversation[1:]):
        if i % 2 == 0:
            answers.append(item["value"])
        else:
            questions.append(item["value"] + " ")
    questions = [TEMPLATE.format(q) for q in questions]
    before, after = questions[0].split("<ImageHere>")
    cond = tokenize(tok, before, False) + [IMAGE] + tokenize(tok, after, False)
    later = [tokenize(tok, "<s>" + q, False) for q in questions[1:]]
    said = [tokenize(tok, a + "</s>", False) for a in answers]
    ids, targets = [], []
    for i, question in enumerate(later):
        ids += said[i] + question
        targets += said[i] + [IGNORE] * len(question)
    ids += said[-1]
    targets += said[-1]
    return [1] + cond + ids, [IGNORE] * (1 + len(cond)) + targets


@pytest.fixture(scope="module")
def vlguard():
    path = shared_file("vlguard/train.json")
    records = json.loads(path.read_text())
    return path, convert_to_llava_format(records)


@pytest.mark.parametrize("kind", ["legacy", "non_legacy"])
@pytest.mark.parametrize("template,task", [("minigptv2", ""), ("minigptv2_vqa", "[vqa] ")])
def test_training_samples_equal_minigptv2s(kind, template, task, vlguard, tmp_path):
    path, upstream = vlguard
    tok = SlowLegacyTokenizer(llama_tokenizer_dir() / "tokenizer.model")
    chat = ChatTokenizer(hf_tokenizer(kind, tmp_path), template, num_image_tokens=256, max_length=2**31 - 1)
    conversations = read_vlguard(path).conversations
    two_round = 0
    for conversation, expected in list(zip(conversations, upstream, strict=True))[:400]:
        two_round += len(expected) == 4
        ids, targets = training_ids(expected, task, tok)
        encoded = chat.encode(conversation, expand_image=False)
        ids = np.where(np.asarray(ids) == IMAGE, chat.image_token_id, ids)
        np.testing.assert_array_equal(encoded.input_ids, ids, err_msg=conversation.id)
        np.testing.assert_array_equal(encoded.labels, targets, err_msg=conversation.id)
    assert two_round > 150  # both shapes of sample were compared


@pytest.mark.parametrize("kind", ["legacy", "non_legacy"])
def test_generation_prompt_equals_minigptv2s(kind, vlguard, tmp_path):
    """Two BOS tokens (the added one and the template's `<s>`), `▁</` opening the text after the image."""
    _, upstream = vlguard
    tok = SlowLegacyTokenizer(llama_tokenizer_dir() / "tokenizer.model")
    chat = ChatTokenizer(hf_tokenizer(kind, tmp_path), "minigptv2_vqa", num_image_tokens=256)
    for conversation in upstream[:100]:
        question = conversation[0]["value"].replace("<image>", "").strip()
        expected = generation_ids(question, "[vqa] ", tok)
        ids = chat.encode_prompt([Turn("user", question)], image=True)
        assert (ids == chat.image_token_id).sum() == 256
        compact = [IMAGE if i == chat.image_token_id else int(i) for i in ids]
        compact = [t for n, t in enumerate(compact) if t != IMAGE or compact[n - 1] != IMAGE]
        assert compact == expected
    assert expected[:2] == [1, 1] and tok.sp.id_to_piece(expected[expected.index(IMAGE) + 1]) == "▁</"
