"""The attack's targets: sentences whose likelihood the adversarial image raises (Qi et al.'s harmful corpus).

Each target row is the prompt (the chat template's user turn holding the image, ending where the answer starts)
followed by the sentence's tokens, which alone are supervised; rows are right-padded to one length, so every step
has one shape. Step t's minibatch is drawn from (seed, t) alone, without replacement within the step (upstream's
`random.sample`): a resumed attack, and every process of a multi-host one, draws the same rows.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np

from vlguard_jax.data.chat import IGNORE, ChatTokenizer
from vlguard_jax.data.sources import DataError, Turn


def read_corpus(path: str | Path) -> list[str]:
    """The sentences of a CSV (first column of every row, no header: upstream's `derogatory_corpus.csv`) or a JSONL
    file (a string, or an object with `text` or `target`, per line). Blank entries are an error naming the row."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"corpus {path}: no such file")
    with path.open(encoding="utf-8", newline="") as handle:
        if path.suffix == ".jsonl":
            entries = [(number, _jsonl_text(path, number, line)) for number, line in enumerate(handle, 1)
                       if line.strip()]
        elif path.suffix == ".csv":
            entries = [(number, row[0] if row else "") for number, row in enumerate(csv.reader(handle), 1)]
        else:
            raise DataError(f"corpus {path}: give a .csv (sentence in the first column) or a .jsonl file")
    for number, text in entries:
        if not text.strip():
            raise DataError(f"corpus {path}, row {number}: empty sentence; remove the row")
    if not entries:
        raise DataError(f"corpus {path} holds no sentence")
    return [text for _, text in entries]


def _jsonl_text(path: Path, number: int, line: str) -> str:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"corpus {path}, line {number}: not JSON ({e})") from None
    text = value if isinstance(value, str) else value.get("text", value.get("target")) if isinstance(value, dict) \
        else None
    if not isinstance(text, str):
        raise DataError(f"corpus {path}, line {number}: expected a string or an object with 'text' or 'target'")
    return text


@dataclasses.dataclass(frozen=True)
class Targets:
    prompt: np.ndarray  # int32 [P]: the prompt with its image tokens expanded
    ids: np.ndarray  # int32 [N, T]: each sentence's tokens, right-padded with 0
    lengths: np.ndarray  # int32 [N]
    truncated: int  # sentences cut to T tokens

    @classmethod
    def build(cls, sentences: list[str], chat: ChatTokenizer, prompt: str, image_tokens: int,
              max_target_tokens: int = 128) -> Targets:
        """`sentences` tokenized as a continuation of the answer (no BOS, no EOS: upstream drops the BOS)."""
        prompt_ids = chat.encode_prompt([Turn("user", prompt)], image=True, image_tokens=image_tokens)
        encoded = [chat.encode_text(s) for s in sentences]
        longest = min(max(len(e) for e in encoded), max_target_tokens)
        ids = np.zeros((len(encoded), longest), np.int32)
        for row, tokens in enumerate(encoded):
            ids[row, :min(len(tokens), longest)] = tokens[:longest]
        lengths = np.array([min(len(e), longest) for e in encoded], np.int32)
        return cls(np.asarray(prompt_ids, np.int32), ids, lengths, sum(len(e) > longest for e in encoded))

    def __len__(self) -> int:
        return len(self.ids)

    def draw(self, step: int, seed: int, rows: int) -> np.ndarray:
        """Step `step`'s target indices: `rows` distinct sentences."""
        if rows > len(self):
            raise ValueError(f"a minibatch of {rows} targets needs a corpus of at least {rows} sentences "
                             f"(it holds {len(self)}); lower --batch")
        return np.random.default_rng([seed, step]).choice(len(self), rows, replace=False)

    def rows(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """`input_ids`, `labels` (the sentence's tokens alone), `attention_mask` for the targets at `indices`
        (an index of -1: an empty row, no tokens supervised: a corpus pass's padding)."""
        count, prompt_length = len(indices), len(self.prompt)
        length = prompt_length + self.ids.shape[1]
        input_ids = np.zeros((count, length), np.int32)
        labels = np.full((count, length), IGNORE, np.int32)
        mask = np.zeros((count, length), bool)
        for row, index in enumerate(indices):
            input_ids[row, :prompt_length] = self.prompt
            mask[row, :prompt_length] = True
            if index < 0:
                continue
            end = prompt_length + self.lengths[index]
            input_ids[row, prompt_length:end] = self.ids[index, :self.lengths[index]]
            labels[row, prompt_length:end] = self.ids[index, :self.lengths[index]]
            mask[row, prompt_length:end] = True
        return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}

    def passes(self, rows: int) -> list[np.ndarray]:
        """Every sentence once, in minibatches of `rows` (the last filled with empty rows)."""
        order = np.arange(len(self))
        order = np.concatenate([order, np.full(-len(order) % rows, -1)])
        return list(order.reshape(-1, rows))
