"""Prompt templates, tokenization and label masks: one path for training samples and evaluation prompts.

Tokens are those LLaVA-1.5 trained on. LLaVA tokenized with the legacy slow LLaMA tokenizer, which splits text at
special tokens (`</s>`, `<s>`) and gives every piece its own word-start `▁`, and `tokenizer_image_token` tokenizes
the text on each side of `<image>` separately. `ChatTokenizer` does the same split for every tokenizer, so a
legacy one, a non-legacy one and a llava-hf `tokenizer.json` give the same ids (`</s>` `▁US` `ER`, never `</s>`
`USER`). A token is supervised when its first character lies in a trained segment (LLaVA's per-round length
arithmetic gives the same masks but masks whole samples when it miscounts). Each piece must decode back to its
text, and a sample with no supervised token is an error, never a silent all-masked sample.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from typing import Sequence

import numpy as np

from vlguard_jax.data.sources import IMAGE_PLACEHOLDER, Conversation, DataError, Turn

IGNORE = -100

_VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                  "The assistant gives helpful, detailed, and polite answers to the user's questions.")
_LLAVA_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the human's questions.")
_LLAMA2_SYSTEM = ("You are a helpful language and vision assistant. You are able to understand the visual content "
                  "that the user provides, and assist the user with a variety of tasks using natural language.")
# Stanford Alpaca's PROMPT_DICT (tatsu-lab/stanford_alpaca train.py), as the harmful-fine-tuning literature's tasks
# use it (git-disl/Lisa and git-disl/Vaccine train.py, pred_eval.py): the answer follows "### Response:" directly
# (Alpaca trains on source + target with no separator) and ends with EOS.
_ALPACA = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
           "request.\n\n### Instruction:\n{instruction}\n\n### Response:")
_ALPACA_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                 "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
                 "{instruction}\n\n### Input:\n{input}\n\n### Response:")
# MiniGPT-v2's task identifiers (its paper, Table 1), written before the instruction: "[vqa] What is …".
MINIGPTV2_TASKS = {"minigptv2": "", "minigptv2_vqa": "[vqa] "}
# LLaVA-OneVision (LLaVA-VL/LLaVA-NeXT `conversation.py` `conv_qwen`, the `qwen_1_5`/`qwen_2` template its training
# scripts pass): ChatML, `<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n` first.
_QWEN_SYSTEM = "You are a helpful assistant."
_IM_START, _IM_END = "<|im_start|>", "<|im_end|>"
# Tokens a template trains wherever they stand, system and user turns included: `train.py` `preprocess_qwen` sets
# `unmask_tokens_idx = [198, im_start, im_end]` (198 is Qwen2's "\n" token) and unmasks every such id.
_ALWAYS_TRAINED = {"qwen": (_IM_START, _IM_END, "\n")}
TEMPLATES = ("vicuna_v1", "llava_v1", "llama2", "mistral_instruct", "qwen", "tokenizer", "alpaca", *MINIGPTV2_TASKS)
TOKENIZATION = "llava_legacy"  # pieces split at <image> and special tokens, each with its word-start `▁`


class SampleError(DataError):
    """A conversation that cannot become a training sample (too long, nothing supervised, …)."""


@dataclasses.dataclass(frozen=True)
class Segment:
    text: str
    trained: bool


def render(turns: Sequence[Turn], template: str, image: bool, eos: str = "</s>",
           add_generation_prompt: bool = False, tokenizer=None) -> list[Segment]:
    """Renders turns as LLaVA's conversation templates do (REFERENCE §3); answers and their EOS are trained.

    `<image>\\n` opens the first user turn when the sample has an image. With `add_generation_prompt` the text
    ends where the model's answer starts (e.g. `… ASSISTANT:`). A turn's Alpaca-style `input` has a section of its
    own in the `alpaca` template; the others put it on a new line after the instruction.
    """
    if template == "alpaca":
        return _render_alpaca(list(turns), image, eos)
    turns = [Turn(t.role, f"{t.text}\n{t.input}" if t.input else t.text) for t in turns]
    if template in MINIGPTV2_TASKS:
        return _render_minigptv2(turns, MINIGPTV2_TASKS[template], image, eos, add_generation_prompt)
    if image:
        turns[0] = Turn(turns[0].role, f"{IMAGE_PLACEHOLDER}\n{turns[0].text}")
    if template in ("vicuna_v1", "llava_v1"):
        return _render_two_sep(turns, _VICUNA_SYSTEM if template == "vicuna_v1" else _LLAVA_SYSTEM, eos)
    if template == "llama2":
        return _render_llama2(turns, eos)
    if template == "mistral_instruct":  # `conv_mistral_instruct`: LLAMA_2 style, no system, sep ""
        return _render_llama2(turns, eos, system="", sep="")
    if template == "qwen":
        return _render_chatml(turns, _QWEN_SYSTEM, add_generation_prompt)
    if template == "tokenizer":
        return _render_chat_template(turns, tokenizer, add_generation_prompt)
    raise ValueError(f"unknown chat template {template!r}; known: {', '.join(TEMPLATES)}")


def _render_two_sep(turns: list[Turn], system: str, eos: str) -> list[Segment]:
    """`SYSTEM USER: q ASSISTANT: a</s>USER: …`; a prompt ends with the last user turn's `ASSISTANT:`."""
    segments = [Segment(system + " ", False)]
    for turn in turns:
        if turn.role == "user":
            segments.append(Segment(f"USER: {turn.text} ASSISTANT:", False))
        else:
            segments.append(Segment(f" {turn.text}{eos}", True))
    return segments


def _render_llama2(turns: list[Turn], eos: str, system: str = _LLAMA2_SYSTEM, sep: str = "<s>") -> list[Segment]:
    """LLaVA's `llava_llama_2`: `[INST] <<SYS>>…<</SYS>>\n\nq [/INST] a </s><s>[INST] q2 [/INST] …`.

    `mistral_instruct` (LLaVA-NeXT Mistral) is the same `SeparatorStyle.LLAMA_2` with an empty system (no `<<SYS>>`
    block) and sep "": `[INST] <image>\nq [/INST] a </s>[INST] q2 [/INST] a2 </s>`, no `<s>` between rounds.
    """
    segments = []
    for i, turn in enumerate(turns):
        if turn.role == "user":
            text = f"<<SYS>>\n{system}\n<</SYS>>\n\n{turn.text}" if i == 0 and system else turn.text
            segments.append(Segment(("" if i == 0 else sep) + f"[INST] {text} [/INST]", False))
        else:
            segments.append(Segment(f" {turn.text} {eos}", True))
    return segments


def _render_chatml(turns: list[Turn], system: str, add_generation_prompt: bool) -> list[Segment]:
    """LLaVA-OneVision's ChatML (LLaVA-NeXT `conv_qwen`, `SeparatorStyle.CHATML`; `preprocess_qwen`), no BOS:
    `<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n<image>\nq<|im_end|>\n`
    `<|im_start|>assistant\na<|im_end|>\n`.

    `preprocess_qwen` tokenizes each message alone and trains an assistant message whole, its
    `<|im_start|>assistant\n` header and closing `<|im_end|>\n` included; `<|im_start|>`, `<|im_end|>` and a lone
    "\n" token are trained everywhere (`_ALWAYS_TRAINED`). A prompt ends with `<|im_start|>assistant\n`.
    """
    segments = [Segment(f"{_IM_START}system\n{system}{_IM_END}\n", False)]
    for turn in turns:
        trained = turn.role == "assistant"
        segments.append(Segment(f"{_IM_START}{turn.role}\n{turn.text}{_IM_END}\n", trained))
    if add_generation_prompt:
        segments.append(Segment(f"{_IM_START}assistant\n", False))
    return segments


def _render_minigptv2(turns: list[Turn], task: str, image: bool, eos: str, prompt: bool) -> list[Segment]:
    """MiniGPT-v2 (Vision-CAIR/MiniGPT-4), whose training and generation prompts differ, both reproduced:

    - training (`minigpt_base.py` `prompt_wrap` + `tokenize_conversation`, datasets writing
      `"<Img><ImageHere></Img> {} "`, `prompt_template` "[INST] {} [/INST]", end_sym `</s>`): BOS, then
      `[INST] <Img><image></Img> q  [/INST]`, each answer tokenized on its own and ending in `</s>`, each later
      question as `<s>[INST] q  [/INST]` (the dataset's trailing space makes the two spaces);
    - generation (`CONV_VISION_minigptv2`, `Chat.ask`, `get_context_emb`): `<s>[INST] <Img><image></Img> q [/INST]`
      tokenized with BOS added, so the prompt starts with two BOS tokens, as MiniGPT-v2's own does; earlier answers
      follow their ` [/INST]` directly.
    `task` (e.g. `[vqa] `) precedes the first instruction.
    """
    segments = []
    for i, turn in enumerate(turns):
        text = (f"<Img>{IMAGE_PLACEHOLDER}</Img> " if i == 0 and image else "") + (task if i == 0 else "") + turn.text
        if turn.role == "assistant":
            segments.append(Segment(turn.text if prompt else f" {turn.text}{eos}", not prompt))
        elif prompt:
            segments.append(Segment(f"<s>[INST] {text} [/INST]", False))
        else:
            segments.append(Segment(("<s>" if i else "") + f"[INST] {text}  [/INST]", False))
    return segments


def _render_alpaca(turns: list[Turn], image: bool, eos: str) -> list[Segment]:
    """One instruction, its optional input and the answer, as Stanford Alpaca trained them."""
    if image or len(turns) > 2 or turns[0].role != "user":
        raise SampleError("the alpaca template takes one text-only instruction (and its answer)")
    user = turns[0]
    prompt = (_ALPACA_INPUT if user.input else _ALPACA).format(instruction=user.text, input=user.input)
    return [Segment(prompt, False)] + [Segment(f"{t.text}{eos}", True) for t in turns[1:]]


def _render_chat_template(turns: list[Turn], tokenizer, add_generation_prompt: bool) -> list[Segment]:
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("template 'tokenizer' needs a tokenizer that has a chat_template")
    messages = [{"role": t.role, "content": t.text} for t in turns]
    apply = lambda msgs, gen: tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
    segments, done = [], ""
    for i, turn in enumerate(turns):
        if turn.role != "assistant":
            continue
        prompt, full = apply(messages[:i], True), apply(messages[: i + 1], False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise ValueError("the tokenizer's chat template does not render conversations prefix by prefix")
        segments += [Segment(prompt[len(done):], False), Segment(full[len(prompt):], True)]
        done = full
    if add_generation_prompt or len(turns) % 2:
        tail = apply(messages, True)
        segments.append(Segment(tail[len(done):], False))
    return segments


@dataclasses.dataclass(frozen=True)
class Encoded:
    input_ids: np.ndarray  # int32 [len], image token expanded
    labels: np.ndarray  # int32 [len], IGNORE where not trained


class ChatTokenizer:
    """Turns conversations into (input_ids, labels) and prompts into input_ids, with the model's image tokens
    (`num_image_tokens=0`: a text-only model's, whose tokenizer needs no `<image>` and whose samples have no image;
    None: an any-resolution model's, whose count is each image's own, given to `expand` and `encode_prompt`)."""

    def __init__(self, tokenizer, template: str = "vicuna_v1", num_image_tokens: int | None = 576,
                 max_length: int = 2048, truncation: str = "skip"):
        if template not in TEMPLATES:
            raise ValueError(f"unknown chat template {template!r}; known: {', '.join(TEMPLATES)}")
        if truncation not in ("skip", "truncate"):
            raise ValueError(f"truncation must be 'skip' or 'truncate', got {truncation!r}")
        self.tokenizer = tokenizer
        self.template = template
        self.num_image_tokens = num_image_tokens
        self.max_length = max_length
        self.truncation = truncation
        self.image_token_id = None if num_image_tokens == 0 else tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
        if num_image_tokens != 0 and self.image_token_id in (None, tokenizer.unk_token_id):
            raise ValueError(f"the tokenizer has no {IMAGE_PLACEHOLDER} token; use the llava-hf tokenizer "
                             f"(vlguard-jax convert adds it)")
        specials = [IMAGE_PLACEHOLDER] if num_image_tokens != 0 else []
        if template != "tokenizer":  # native chat templates write their own special tokens
            specials += [t for t in (tokenizer.eos_token, tokenizer.bos_token) if t]
        if template == "qwen":
            specials += [_IM_START, _IM_END]
        self._special_ids = {t: tokenizer.convert_tokens_to_ids(t) for t in specials}
        if template == "qwen" and {self._special_ids[t] for t in (_IM_START, _IM_END)} & {None, tokenizer.unk_token_id}:
            raise ValueError(f"template 'qwen' needs a tokenizer with {_IM_START} and {_IM_END} tokens (Qwen2's)")
        self._split = re.compile("(" + "|".join(map(re.escape, dict.fromkeys(specials) or ["(?!)"])) + ")")
        ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]
        # A non-legacy SentencePiece tokenizer folds a leading space into the word-start `▁` (" a" is "a": `▁a`);
        # legacy SentencePiece (`▁` `▁a`) and byte-level BPE (`Ġa`, Qwen2) keep it.
        self._drops_space = ids(" a") == ids("a")
        self._always_trained = []
        for token in _ALWAYS_TRAINED.get(template, ()):
            token_ids = ids(token)
            if len(token_ids) != 1:
                raise ValueError(f"template {template!r} trains the token {token!r}, which this tokenizer splits "
                                 f"into {len(token_ids)}")
            self._always_trained += token_ids

    def segments(self, turns: Sequence[Turn], image: bool, add_generation_prompt: bool = False) -> list[Segment]:
        return render(turns, self.template, image, self.tokenizer.eos_token, add_generation_prompt,
                      self.tokenizer)

    def encode(self, conversation: Conversation, expand_image: bool = True) -> Encoded:
        """A training sample; raises SampleError (with the reason) for samples that must be skipped.

        Over-long samples are skipped, or with `truncation="truncate"` cut at `max_length` when the cut keeps
        the image and at least one supervised token. `expand_image=False` keeps one image token (compact
        storage; `expand` restores it). With a count per image, the image counts as one token here: the sample's
        length with its image is checked where the image's size is known (`data.image_sizes`).
        """
        has_image = conversation.image is not None
        ids, trained = self._tokenize(self.segments(conversation.turns, has_image))
        labels = np.where(trained | np.isin(ids, self._always_trained), ids, IGNORE).astype(np.int32)
        self._check_image_tokens(ids, has_image)
        extra = ((self.num_image_tokens or 1) - 1) * has_image
        if len(ids) + extra > self.max_length:
            if self.truncation == "skip":
                raise SampleError(f"{len(ids) + extra} tokens, more than max_length {self.max_length}")
            keep = self.max_length - extra
            if has_image and np.flatnonzero(ids == self.image_token_id)[0] >= keep:
                raise SampleError(f"truncating to max_length {self.max_length} would cut the image")
            ids, labels = ids[:keep], labels[:keep]
        if not trained[:len(ids)].any():  # an answer token, not only _ALWAYS_TRAINED ones
            raise SampleError("no supervised token (every answer was masked or truncated away)")
        encoded = Encoded(ids, labels)
        return self.expand(encoded) if expand_image else encoded

    def expand(self, encoded: Encoded, image_tokens: int | None = None) -> Encoded:
        """Repeats the image token once per image feature (the HF convention), `image_tokens` times where the
        count is the image's own; image positions are untrained."""
        if self.image_token_id is None:
            return encoded
        count = self._image_count(image_tokens)
        is_image = encoded.input_ids == self.image_token_id
        repeat = np.where(is_image, count, 1)
        return Encoded(np.repeat(encoded.input_ids, repeat),
                       np.where(np.repeat(is_image, repeat), IGNORE, np.repeat(encoded.labels, repeat)).astype(np.int32))

    def encode_prompt(self, turns: Sequence[Turn], image: bool, image_tokens: int | None = None) -> np.ndarray:
        """A generation prompt (ends where the answer starts), image token expanded (`image_tokens`: see `expand`)."""
        ids, _ = self._tokenize(self.segments(turns, image, add_generation_prompt=True))
        self._check_image_tokens(ids, image)
        return self.expand(Encoded(ids, np.zeros_like(ids)), image_tokens if image else 1).input_ids

    def encode_text(self, text: str) -> list[int]:
        """`text` tokenized alone, without BOS or EOS, as the legacy tokenizer does whatever this one's mode (a
        leading space keeps its own `▁`): Qi et al.'s targets, `tokenizer(target).input_ids[1:]`."""
        return self._tokenize_piece(text, first=False)[0]

    def _image_count(self, image_tokens: int | None) -> int:
        if image_tokens is not None:
            return image_tokens
        if self.num_image_tokens is None:
            raise ValueError("this model's image-token count is each image's own (any resolution): pass "
                             "image_tokens (data.vision_inputs.VisionInputs.tokens of the image's size)")
        return self.num_image_tokens

    def fingerprint(self) -> dict:
        """What decides the tokens of a sample: a run records it, and caches of tokenized data are keyed on it."""
        return {"tokenization": "native" if self.template == "tokenizer" else TOKENIZATION,
                "template": self.template, "tokenizer": tokenizer_digest(self.tokenizer),
                "num_image_tokens": self.num_image_tokens, "max_length": self.max_length,
                "truncation": self.truncation}

    def _tokenize(self, segments: list[Segment]) -> tuple[np.ndarray, np.ndarray]:
        """Tokenizes piece by piece (see the module docstring); returns ids and whether each is trained."""
        text = "".join(s.text for s in segments)
        ids, starts, offset = [], [], 0
        for i, piece in enumerate(self._split.split(text)):
            if i % 2:
                ids.append(self._special_ids[piece])
                starts.append(offset)
            elif piece or i == 0:
                piece_ids, piece_starts = self._tokenize_piece(piece, first=i == 0)
                ids += piece_ids
                starts += [offset + s if s >= 0 else -1 for s in piece_starts]
            offset += len(piece)
        ids, starts = np.asarray(ids, np.int32), np.asarray(starts)
        bounds = np.cumsum([0] + [len(s.text) for s in segments])
        trained = np.zeros(len(ids), bool)
        for segment, lo, hi in zip(segments, bounds[:-1], bounds[1:]):
            if segment.trained:
                trained |= (starts >= lo) & (starts < hi)
        return ids, trained

    def _tokenize_piece(self, piece: str, first: bool) -> tuple[list[int], list[int]]:
        """One piece with its word-start `▁`, as the legacy tokenizer encodes it; BOS before the first piece of
        LLaVA's templates whether or not the tokenizer's config adds it (LLaVA's tokenizers all do).

        Non-legacy tokenizers add no `▁` to text that starts with a space: one more space gives the legacy tokens.
        Byte-level BPE (Qwen2) adds no word-start: a piece is tokenized as it stands, as the template joins it.
        """
        shift = int(piece.startswith(" ") and self._drops_space)
        encoding = self.tokenizer(" " * shift + piece, return_offsets_mapping=True, add_special_tokens=False)
        ids = list(encoding["input_ids"])
        starts = [lo - shift if hi > lo and lo >= shift else -1 for lo, hi in encoding["offset_mapping"]]
        decoded = self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if decoded.split() != piece.split():
            raise SampleError(f"the tokens of {piece[:60]!r} decode to {decoded[:60]!r}: the tokenizer does not "
                              f"round-trip this text")
        if first and self.template not in ("tokenizer", "qwen") and self.tokenizer.bos_token_id is not None:
            return [self.tokenizer.bos_token_id, *ids], [-1, *starts]
        return ids, starts

    def _check_image_tokens(self, ids: np.ndarray, image: bool) -> None:
        if self.image_token_id is None:
            if image:
                raise SampleError("a sample with an image, but the model is text-only (no vision tower)")
            return
        found = int((ids == self.image_token_id).sum())
        if found != int(image):
            raise SampleError(f"{found} {IMAGE_PLACEHOLDER} tokens for a sample with {int(image)} image; "
                              f"remove {IMAGE_PLACEHOLDER} from the text (the template places it)")


def tokenizer_digest(tokenizer) -> str:
    """sha256 of everything that decides a tokenizer's ids: vocabulary, merges, normalizer, added tokens, mode."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    state = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    extra = [type(tokenizer).__name__, getattr(tokenizer, "legacy", None), tokenizer.bos_token,
             tokenizer.eos_token, getattr(tokenizer, "chat_template", None)]
    return hashlib.sha256((state + json.dumps(extra)).encode()).hexdigest()
