"""LLaVA-OneVision (`qwen`) and LLaVA-NeXT Mistral (`mistral_instruct`) templates against upstream's own recipes.

The references are written here from LLaVA-VL/LLaVA-NeXT: `llava/conversation.py` (`conv_qwen`, the `qwen_1_5` /
`qwen_2` template, `SeparatorStyle.CHATML`; `conv_mistral_instruct`, `SeparatorStyle.LLAMA_2` with system "",
sep "" and sep2 "</s>", as in haotian-liu/LLaVA) and `llava/train/train.py` (`preprocess_multimodal`,
`preprocess_qwen`: each message tokenized alone with its reset chat template, assistant messages trained whole and
`unmask_tokens_idx = [198, im_start, im_end]` unmasked everywhere; `preprocess_llama_2`: the per-round length
arithmetic on `tokenizer_image_token`). Generation prompts are also checked against transformers'
llava-onevision chat template and the prompts of its llava-next / llava-onevision conversion scripts.

The Qwen2 tokenizer cannot be downloaded here: `qwen_tokenizer()` trains a small byte-level BPE with the
`tokenizers` library on a few sentences and builds transformers' `Qwen2Tokenizer` (Qwen2's own normalizer, split
regex and byte-level pre-tokenizer) from its vocabulary and merges, with Qwen2's special tokens `<|endoftext|>`,
`<|im_start|>`, `<|im_end|>` (its eos, as Qwen2-Instruct's) and llava-hf's added `<image>`; no BOS, as Qwen2 has
none. Its "\\n" token is not necessarily Qwen2's id 198, so the reference unmasks the id this tokenizer gives "\\n".
`mistral_instruct` is checked with the real LLaMA-2 sentencepiece model from ../shared (Mistral's vocabulary
differs; the template mechanics are the same) in the legacy, non-legacy and saved-tokenizer.json forms, and with
the repo's small test tokenizer.
"""

import functools
import json

import numpy as np
import pytest

from data_fixtures import llama_tokenizer_dir, shared_file, tokenizer
from test_chat import legacy_slow
from test_llava_tokens import SlowLegacyTokenizer, convert_to_llava_format, hf_tokenizer, preprocess_multimodal
from vlguard_jax.data.chat import IGNORE, ChatTokenizer, SampleError, render
from vlguard_jax.data.sources import Conversation, Turn, read_vlguard

IMAGE_INDEX = -200  # LLaVA's placeholder id in input_ids
NUM_IMAGE_TOKENS = 5
TURNS = (Turn("user", "What color is the shape?"), Turn("assistant", "The shape is red."),
         Turn("user", "How many shapes are there?"), Turn("assistant", "There are two shapes."))
# Newlines inside a user turn: a lone "\n" token (trained by preprocess_qwen), ".\n" and "\n\n" merged (not).
NEWLINE_TURNS = (Turn("user", "Look at it.\nWhat color is the shape?", "The shape\n\nis red"),
                 Turn("assistant", "It is red.\nSure."), Turn("user", "How many\nshapes are there?"),
                 Turn("assistant", "There are two shapes."))
CONVERSATIONS = {"single": TURNS[:2], "multi": TURNS, "newlines": NEWLINE_TURNS}

QWEN_SYSTEM = "You are a helpful assistant."
# preprocess_qwen's reset template ("so that it won't include system message every time we apply").
PREPROCESS_QWEN_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
                            "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
                            "{{ '<|im_start|>assistant\n' }}{% endif %}")
# transformers' convert_llava_onevision_weights_to_hf.py `chat_template` (llava-hf/llava-onevision-*-hf).
LLAVA_ONEVISION_HF_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}{# Render all images first #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{# Render all video then #}{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}"
    "{{ '<video>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] }}{% endgeneration %}{% endfor %}{% endif %}{{'<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
QWEN_CORPUS = [QWEN_SYSTEM, "system\nuser\nassistant\n" * 3,
               "What color is the shape?\nThe shape is red.\n\nHow many shapes?",
               "Look at it.\nThere are two shapes.\n\nSure, here it is.\nIt is red.\n\n", "a\n\nb\n\n" * 10]


@functools.lru_cache(maxsize=None)
def qwen_tokenizer():
    """A Qwen2-style tokenizer trained offline (see the module docstring)."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import AddedToken, Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    core = Tokenizer(models.BPE())
    core.normalizer = normalizers.NFC()
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=420, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    core.train_from_iterator(QWEN_CORPUS * 5, trainer)
    model = json.loads(core.to_str())["model"]
    vocab = dict(model["vocab"])
    for token in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):  # Qwen2's order: 151643, 151644, 151645
        vocab[token] = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=[tuple(m) for m in model["merges"]], unk_token=None, bos_token=None,
                         eos_token="<|im_end|>", pad_token="<|endoftext|>",
                         extra_special_tokens=["<|im_start|>", "<|im_end|>"])
    tok.add_tokens([AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    return tok


def qwen_ids(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def upstream_messages(turns, has_image: bool) -> list[tuple[str, str]]:
    """(role, text) as LLaVA's data (`{"from": "human", "value": "<image>\\n…"}` after `preprocess_multimodal`) or
    its eval scripts (`DEFAULT_IMAGE_TOKEN + "\\n" + question`) give them; an Alpaca input on its own line."""
    messages = []
    for i, turn in enumerate(turns):
        text = turn.text + (f"\n{turn.input}" if turn.input else "")
        messages.append((turn.role, ("<image>\n" if i == 0 and has_image else "") + text))
    return messages


def conv_qwen_prompt(messages, add_generation_prompt: bool = False) -> str:
    """`conv_qwen.get_prompt()` (SeparatorStyle.CHATML; an appended (assistant, None) message is the prompt)."""
    system, sep = f"<|im_start|>system\n{QWEN_SYSTEM}", "<|im_end|>"
    roles = {"user": "<|im_start|>user", "assistant": "<|im_start|>assistant"}
    messages = list(messages) + ([("assistant", None)] if add_generation_prompt else [])
    ret = "" if system == "" else system + sep + "\n"
    for role, message in messages:
        ret += roles[role] + "\n" + message + sep + "\n" if message else roles[role] + "\n"
    return ret


def preprocess_qwen(tok, messages, has_image: bool) -> tuple[np.ndarray, np.ndarray]:
    """`preprocess_qwen` transcribed: system message, then each message through the reset chat template."""
    def apply(conv):
        out = tok.apply_chat_template(conv, chat_template=PREPROCESS_QWEN_TEMPLATE, tokenize=True)
        return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)

    image_token_index = tok.convert_tokens_to_ids("<image>")
    im_start, im_end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    unmask_tokens_idx = [qwen_ids(tok, "\n")[0], im_start, im_end]  # upstream: [198, im_start, im_end]
    input_id = apply([{"role": "system", "content": QWEN_SYSTEM}])
    target = [IGNORE] * len(input_id)
    for role, content in messages:
        encode_id = apply([{"role": role, "content": content}])
        input_id += encode_id
        target += [IGNORE] * len(encode_id) if role in ("user", "system") else encode_id
    for idx, encode_id in enumerate(input_id):
        if encode_id in unmask_tokens_idx:
            target[idx] = encode_id
        if encode_id == image_token_index:
            input_id[idx] = IMAGE_INDEX
    assert (IMAGE_INDEX in input_id) == has_image
    return np.asarray(input_id), np.asarray(target)


def to_image_id(ids, chat):
    return np.where(np.asarray(ids) == IMAGE_INDEX, chat.image_token_id, ids)


def expanded(ids, chat):
    ids = np.asarray(ids)
    return np.repeat(ids, np.where(ids == chat.image_token_id, NUM_IMAGE_TOKENS, 1))


# ---------------------------------------------------------------------------------------------------- qwen


def test_qwen_renders_conv_qwen_strings():
    assert "".join(s.text for s in render(TURNS, "qwen", True)) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\nWhat color is the "
        "shape?<|im_end|>\n<|im_start|>assistant\nThe shape is red.<|im_end|>\n<|im_start|>user\nHow many shapes "
        "are there?<|im_end|>\n<|im_start|>assistant\nThere are two shapes.<|im_end|>\n")
    assert "".join(s.text for s in render(TURNS[:1], "qwen", True, add_generation_prompt=True)) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\nWhat color is the "
        "shape?<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("has_image", [True, False])
@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_qwen_tokens_and_labels_equal_preprocess_qwen(name, has_image):
    tok = qwen_tokenizer()
    turns = CONVERSATIONS[name]
    chat = ChatTokenizer(tok, "qwen", num_image_tokens=NUM_IMAGE_TOKENS)
    messages = upstream_messages(turns, has_image)
    ref_ids, ref_labels = preprocess_qwen(tok, messages, has_image)
    encoded = chat.encode(Conversation("c", "a.jpg" if has_image else None, turns), expand_image=False)
    # The conversation as conv_qwen writes it, tokenized whole.
    np.testing.assert_array_equal(encoded.input_ids, qwen_ids(tok, conv_qwen_prompt(messages)))
    np.testing.assert_array_equal(encoded.input_ids, to_image_id(ref_ids, chat))
    np.testing.assert_array_equal(encoded.labels, ref_labels)
    assert tok.bos_token is None and encoded.input_ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    rest = tok.decode(encoded.labels[encoded.labels != IGNORE])
    for answer in (t.text for t in turns if t.role == "assistant"):  # whole assistant messages …
        assert f"<|im_start|>assistant\n{answer}<|im_end|>\n" in rest
        rest = rest.replace(f"<|im_start|>assistant\n{answer}<|im_end|>\n", "", 1)
    assert set(rest.replace("<|im_start|>", "").replace("<|im_end|>", "")) == {"\n"}  # … and always-trained ids
    full = chat.encode(Conversation("c", "a.jpg" if has_image else None, turns))
    assert (full.input_ids == chat.image_token_id).sum() == NUM_IMAGE_TOKENS * has_image
    np.testing.assert_array_equal(full.input_ids, expanded(encoded.input_ids, chat))
    assert (full.labels[full.input_ids == chat.image_token_id] == IGNORE).all()


def test_qwen_unmasks_lone_newlines_in_user_turns_only():
    """What preprocess_qwen's id-based unmasking does to user text (the reference above agrees token for token)."""
    tok = qwen_tokenizer()
    chat = ChatTokenizer(tok, "qwen", num_image_tokens=NUM_IMAGE_TOKENS)
    encoded = chat.encode(Conversation("c", "a.jpg", NEWLINE_TURNS[:2]), expand_image=False)
    pieces = tok.convert_ids_to_tokens(encoded.input_ids.tolist())
    trained = encoded.labels != IGNORE
    user = slice(pieces.index("user"), pieces.index("assistant"))
    assert [p for p, t in zip(pieces[user], trained[user]) if t] == ["Ċ", "Ċ", "<|im_end|>", "Ċ", "<|im_start|>"]
    assert ".Ċ" in pieces[user] and "ĊĊ" in pieces[user]  # merged newlines stay masked
    assert [p for p, t in zip(pieces, trained) if not t and p in ("<|im_start|>", "<|im_end|>", "Ċ")] == []
    assert not trained[pieces.index("system")] and not trained[pieces.index("user")]


@pytest.mark.parametrize("has_image", [True, False])
def test_qwen_generation_prompt_equals_conv_qwen_and_llava_hf(has_image):
    tok = qwen_tokenizer()
    chat = ChatTokenizer(tok, "qwen", num_image_tokens=NUM_IMAGE_TOKENS)
    for turns in (TURNS[:1], TURNS[:3], NEWLINE_TURNS[:3]):
        prompt = conv_qwen_prompt(upstream_messages(turns, has_image), add_generation_prompt=True)
        ids = chat.encode_prompt(turns, image=has_image)
        np.testing.assert_array_equal(ids, expanded(qwen_ids(tok, prompt), chat))
        assert tok.decode(ids[-3:]) == "<|im_start|>assistant\n"
        hf_messages = [{"role": "system", "content": [{"type": "text", "text": QWEN_SYSTEM}]}]
        for role, text in upstream_messages(turns, False):
            image = [{"type": "image"}] if has_image and not len(hf_messages) - 1 else []
            hf_messages.append({"role": role, "content": image + [{"type": "text", "text": text}]})
        assert tok.apply_chat_template(hf_messages, chat_template=LLAVA_ONEVISION_HF_TEMPLATE, tokenize=False,
                                       add_generation_prompt=True) == prompt
    # convert_llava_onevision_weights_to_hf.py's test prompt
    assert "".join(s.text for s in render([Turn("user", "What is shown in this image?")], "qwen", True,
                                          add_generation_prompt=True)) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\nWhat is shown in "
        "this image?<|im_end|>\n<|im_start|>assistant\n")


def test_qwen_pieces_keep_their_spaces():
    """Byte-level BPE has no word-start `▁`: a piece that starts with a space is tokenized as it is."""
    tok = qwen_tokenizer()
    chat = ChatTokenizer(tok, "qwen", num_image_tokens=NUM_IMAGE_TOKENS)
    assert not chat._drops_space
    for piece in (" The shape", "  two", "\nWhat"):
        assert chat._tokenize_piece(piece, first=True)[0] == qwen_ids(tok, piece)  # no BOS either


def test_qwen_truncated_answers_are_not_a_sample():
    tok = qwen_tokenizer()
    chat = ChatTokenizer(tok, "qwen", num_image_tokens=NUM_IMAGE_TOKENS, truncation="truncate")
    conversation = Conversation("c", "a.jpg", TURNS[:2])
    ids = chat.encode(conversation, expand_image=False).input_ids
    answer_start = int(np.flatnonzero(ids == tok.convert_tokens_to_ids("<|im_start|>"))[-1])
    chat.max_length = answer_start + NUM_IMAGE_TOKENS - 1 + 1  # keeps the assistant message's <|im_start|> only
    assert chat.encode(conversation).labels[-1] == ids[answer_start]
    chat.max_length -= 1  # the cut keeps only always-trained tokens of the system and user messages
    with pytest.raises(SampleError, match="no supervised token"):
        chat.encode(conversation)
    with pytest.raises(ValueError, match="<\\|im_start\\|>"):
        ChatTokenizer(tokenizer(), "qwen", num_image_tokens=NUM_IMAGE_TOKENS)


@pytest.fixture(scope="module")
def vlguard():
    path = shared_file("vlguard/train.json")
    records = json.loads(path.read_text())
    return path, [preprocess_multimodal(c) for c in convert_to_llava_format(records)]


def test_qwen_vlguard_train_equals_preprocess_qwen(vlguard):
    path, upstream = vlguard
    tok = qwen_tokenizer()
    chat = ChatTokenizer(tok, "qwen", num_image_tokens=729, max_length=2**31 - 1)
    for conversation, expected in list(zip(read_vlguard(path).conversations, upstream, strict=True))[:300]:
        messages = [("user" if s["from"] == "human" else "assistant", s["value"]) for s in expected]
        ref_ids, ref_labels = preprocess_qwen(tok, messages, True)
        encoded = chat.encode(conversation, expand_image=False)
        np.testing.assert_array_equal(encoded.input_ids, to_image_id(ref_ids, chat), err_msg=conversation.id)
        np.testing.assert_array_equal(encoded.labels, ref_labels, err_msg=conversation.id)


# ---------------------------------------------------------------------------------------- mistral_instruct


def conv_mistral_instruct_prompt(messages, add_generation_prompt: bool = False) -> str:
    """`conv_mistral_instruct.get_prompt()`: SeparatorStyle.LLAMA_2, system "", sep "", sep2 "</s>"."""
    system, sep, sep2 = "", "", "</s>"
    wrap_sys = lambda msg: f"<<SYS>>\n{msg}\n<</SYS>>\n\n" if len(msg) > 0 else msg
    wrap_inst = lambda msg: f"[INST] {msg} [/INST]"
    messages = list(messages) + ([("assistant", None)] if add_generation_prompt else [])
    ret = ""
    for i, (role, message) in enumerate(messages):
        if message:
            if i == 0:
                message = wrap_sys(system) + message
            if i % 2 == 0:
                ret += sep + wrap_inst(message)
            else:
                ret += " " + message + " " + sep2
    return ret.lstrip(sep)


def tokenizer_image_token(prompt: str, encode) -> list[int]:
    chunks = [encode(chunk) for chunk in prompt.split("<image>")]
    ids = [chunks[0][0]]
    for i, chunk in enumerate(chunks):
        ids += ([IMAGE_INDEX] if i else []) + chunk[1:]
    return ids


def preprocess_llama_2(prompt: str, encode, has_image: bool) -> tuple[np.ndarray, np.ndarray]:
    """`preprocess_llama_2`'s masking (sep "[/INST] ", rounds split at sep2), with the legacy slow tokenizer."""
    tokenize = (lambda text: tokenizer_image_token(text, encode)) if has_image else encode
    input_ids = tokenize(prompt)
    target = list(input_ids)
    sep, cur_len = "[/INST] ", 1
    target[:cur_len] = [IGNORE]
    for rou in prompt.split("</s>"):
        if rou == "":
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break
        parts[0] += sep
        round_len, instruction_len = len(tokenize(rou)), len(tokenize(parts[0])) - 2
        target[cur_len: cur_len + instruction_len] = [IGNORE] * instruction_len
        cur_len += round_len
    target[cur_len:] = [IGNORE] * (len(target) - cur_len)
    assert cur_len == len(input_ids), "tokenization mismatch: LLaVA would mask this sample"
    return np.asarray(input_ids), np.asarray(target)


def mistral_tokenizers(kind, tmp_path):
    """(our tokenizer, the legacy slow encoding upstream used)."""
    if kind == "small":
        tok = tokenizer()
        return tok, legacy_slow(tok)
    return hf_tokenizer(kind, tmp_path), SlowLegacyTokenizer(llama_tokenizer_dir() / "tokenizer.model")


KINDS = ["small", "legacy", "non_legacy", "saved_tokenizer_json"]


def test_mistral_instruct_renders_conv_mistral_instruct_strings():
    assert "".join(s.text for s in render(TURNS, "mistral_instruct", True)) == (
        "[INST] <image>\nWhat color is the shape? [/INST] The shape is red. </s>[INST] How many shapes are there? "
        "[/INST] There are two shapes. </s>")
    # convert_llava_next_weights_to_hf.py's prompt for liuhaotian/llava-v1.6-mistral-7b
    assert "".join(s.text for s in render([Turn("user", "What is shown in this image?")], "mistral_instruct", True,
                                          add_generation_prompt=True)) == (
        "[INST] <image>\nWhat is shown in this image? [/INST]")


@pytest.mark.parametrize("has_image", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_mistral_instruct_tokens_and_labels_equal_preprocess_llama_2(kind, has_image, tmp_path):
    tok, encode = mistral_tokenizers(kind, tmp_path)
    chat = ChatTokenizer(tok, "mistral_instruct", num_image_tokens=NUM_IMAGE_TOKENS)
    for name, turns in CONVERSATIONS.items():
        messages = upstream_messages(turns, has_image)
        prompt = conv_mistral_instruct_prompt(messages)
        ref_ids, ref_labels = preprocess_llama_2(prompt, encode, has_image)
        encoded = chat.encode(Conversation(name, "a.jpg" if has_image else None, turns), expand_image=False)
        np.testing.assert_array_equal(encoded.input_ids, to_image_id(ref_ids, chat), err_msg=name)
        np.testing.assert_array_equal(encoded.labels, ref_labels, err_msg=name)
        assert encoded.input_ids[0] == tok.bos_token_id and (encoded.input_ids == tok.bos_token_id).sum() == 1
        supervised = tok.decode(encoded.labels[encoded.labels != IGNORE]).replace(" ", "")
        assert supervised == "".join(t.text.replace(" ", "") + "</s>" for t in turns if t.role == "assistant")
        full = chat.encode(Conversation(name, "a.jpg" if has_image else None, turns))
        np.testing.assert_array_equal(full.input_ids, expanded(encoded.input_ids, chat))


@pytest.mark.parametrize("kind", KINDS)
def test_mistral_instruct_generation_prompt_equals_llavas(kind, tmp_path):
    tok, encode = mistral_tokenizers(kind, tmp_path)
    chat = ChatTokenizer(tok, "mistral_instruct", num_image_tokens=NUM_IMAGE_TOKENS)
    for turns in (TURNS[:1], TURNS[:3], NEWLINE_TURNS[:3]):
        for has_image in (True, False):
            prompt = conv_mistral_instruct_prompt(upstream_messages(turns, has_image), add_generation_prompt=True)
            assert prompt.endswith(" [/INST]")
            reference = tokenizer_image_token(prompt, encode) if has_image else encode(prompt)
            ids = chat.encode_prompt(turns, image=has_image)
            np.testing.assert_array_equal(ids, expanded(to_image_id(reference, chat), chat))


@pytest.mark.parametrize("kind", ["legacy", "non_legacy"])
def test_mistral_instruct_vlguard_train_equals_preprocess_llama_2(kind, vlguard, tmp_path):
    path, upstream = vlguard
    tok, encode = mistral_tokenizers(kind, tmp_path)
    chat = ChatTokenizer(tok, "mistral_instruct", num_image_tokens=576, max_length=2**31 - 1)
    for conversation, expected in list(zip(read_vlguard(path).conversations, upstream, strict=True))[:300]:
        messages = [("user" if s["from"] == "human" else "assistant", s["value"]) for s in expected]
        ref_ids, ref_labels = preprocess_llama_2(conv_mistral_instruct_prompt(messages), encode, True)
        encoded = chat.encode(conversation, expand_image=False)
        np.testing.assert_array_equal(encoded.input_ids, to_image_id(ref_ids, chat), err_msg=conversation.id)
        np.testing.assert_array_equal(encoded.labels, ref_labels, err_msg=conversation.id)
