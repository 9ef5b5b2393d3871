"""Readers that validate VLGuard, LLaVA and Alpaca json into one `Conversation` type.

A bad record is either skipped with a counted reason (`on_error="skip"`, the default) or stops the read at
once (`on_error="raise"`); nothing is dropped silently. Ids are kept unique: a repeated id (VLGuard's train
split has one, `Ads_303871`) gets a `#2` suffix and is listed in `Records.duplicate_ids`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from pathlib import Path
from typing import Any, Callable, Iterable

IMAGE_PLACEHOLDER = "<image>"
FORMATS = ("vlguard", "llava", "alpaca", "sst2", "ag_news", "gsm8k", "pairs")  # the last four: `data.tasks`


class DataError(ValueError):
    """Input data that cannot be used as it is; the message names the file/record and the fix."""


@dataclasses.dataclass(frozen=True)
class Turn:
    role: str  # "user" or "assistant"
    text: str
    input: str = ""  # an Alpaca-style input (context) to the instruction in `text`; see `chat.render`


@dataclasses.dataclass(frozen=True)
class Conversation:
    """One supervised sample: alternating user/assistant turns, an optional image path relative to the root.

    Turn texts never contain `<image>`: templates put it at the start of the first user turn.
    """

    id: str
    image: str | None
    turns: tuple[Turn, ...]
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)

    @property
    def num_answers(self) -> int:
        return sum(t.role == "assistant" for t in self.turns)


@dataclasses.dataclass(frozen=True)
class Skip:
    id: str
    reason: str


@dataclasses.dataclass
class Records:
    """What a reader produced: the conversations, the skipped records, the renamed duplicate ids."""

    source: str
    conversations: list[Conversation]
    skips: list[Skip] = dataclasses.field(default_factory=list)
    duplicate_ids: list[str] = dataclasses.field(default_factory=list)
    indices: list[int] = dataclasses.field(default_factory=list)  # each conversation's record's place in the file

    def check_skip_fraction(self, max_fraction: float) -> None:
        check_skip_fraction(self.source, self.skips, len(self.conversations), max_fraction)


def check_skip_fraction(source: str, skips: list[Skip], kept: int, max_fraction: float) -> None:
    """A DataError naming `source` when more than `max_fraction` of its records were skipped."""
    total = kept + len(skips)
    if total and len(skips) / total > max_fraction:
        reasons = "; ".join(f"{s.id}: {s.reason}" for s in skips[:5])
        raise DataError(f"{source}: {len(skips)} of {total} records skipped, more than the allowed {max_fraction:.0%} "
                        f"(first: {reasons}); fix the data or raise the limit")


class _Reader:
    """Shared bookkeeping: skip-or-raise policy and unique ids."""

    def __init__(self, path: str | os.PathLike, on_error: str):
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        self.path = Path(path)
        self.on_error = on_error
        self.records = Records(str(self.path), [])
        self._seen: dict[str, int] = {}

    def load_list(self) -> list:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"{self.path}: file not found") from None
        except json.JSONDecodeError as e:
            raise DataError(f"{self.path}: not valid JSON ({e}); fix the file") from e
        if not isinstance(data, list):
            raise DataError(f"{self.path}: expected a JSON list of records, got {type(data).__name__}")
        return data

    def run(self, parse: Callable[[int, Any], Conversation],
            labelled: Iterable[tuple[str, Any]] | None = None) -> Records:
        """Parses every record: those of `labelled` (label, record) pairs, default the JSON list's (labels `#<index>`).
        A skip is named by the record's own id when it has a usable one, else by its label."""
        if labelled is None:
            labelled = ((f"#{index}", record) for index, record in enumerate(self.load_list()))
        for index, (label, record) in enumerate(labelled):
            own = record.get("id") if isinstance(record, dict) else None
            record_id = own if isinstance(own, (str, int)) and not isinstance(own, bool) else label
            try:
                conversation = parse(index, record)
            except DataError as e:
                if self.on_error == "raise":
                    raise DataError(f"{self.path}: record {record_id} (index {index}): {e}") from None
                self.records.skips.append(Skip(str(record_id), str(e)))
                continue
            self.records.conversations.append(self._unique(conversation))
            self.records.indices.append(index)
        return self.records

    def _unique(self, conversation: Conversation) -> Conversation:
        count = self._seen.get(conversation.id, 0) + 1
        self._seen[conversation.id] = count
        if count == 1:
            return conversation
        self.records.duplicate_ids.append(conversation.id)
        metadata = {**conversation.metadata, "duplicate_of": conversation.id}
        return dataclasses.replace(conversation, id=f"{conversation.id}#{count}", metadata=metadata)


def _field(record: Any, key: str, kind: type | tuple[type, ...], *, nonempty: bool = True) -> Any:
    if not isinstance(record, dict):
        raise DataError(f"record is a {type(record).__name__}, not an object")
    if key not in record:
        raise DataError(f"missing required field '{key}'")
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(f"field '{key}' must be {names}, got {type(value).__name__}")
    if nonempty and isinstance(value, (str, list)) and not (value.strip() if isinstance(value, str) else value):
        raise DataError(f"field '{key}' is empty")
    return value


def _text(record: Any, key: str, image_turn: bool = False) -> str:
    """The text as LLaVA's `preprocess_multimodal` leaves it: the image's turn loses `<image>` and surrounding
    space (the template writes `<image>\\n` before it), other turns stay verbatim."""
    text = _field(record, key, str, nonempty=False)
    if image_turn or IMAGE_PLACEHOLDER in text:
        text = text.replace(IMAGE_PLACEHOLDER, "").strip()
    if not text.strip():
        raise DataError(f"'{key}' is empty" + (" (after removing <image>)" if IMAGE_PLACEHOLDER in record[key] else ""))
    return text


def read_vlguard(path: str | os.PathLike, *, seed: int = 0, on_error: str = "skip") -> Records:
    """VLGuard json as VLGuard's `convert_to_llava_format.py` turns it into LLaVA conversations: an unsafe image
    → one round; a safe image → both rounds in one conversation, in the order of `random.seed(seed)` followed by
    one `random.shuffle` per two-pair record in file order (so the same rounds come first as in VLGuard's runs)."""
    rng = random.Random(seed)

    def parse(index: int, record: Any) -> Conversation:
        pairs = record.get("instr-resp") if isinstance(record, dict) else None
        if isinstance(pairs, list) and len(pairs) > 1:
            pairs = list(pairs)
            rng.shuffle(pairs)  # before any check: a bad record still draws, as upstream's loop does
        record_id = _field(record, "id", str)
        image = _field(record, "image", str)
        safe = _field(record, "safe", bool)
        _field(record, "instr-resp", list)
        if safe:
            kinds = [_instruction_key(pair) for pair in pairs]
            if sorted(kinds) != ["safe_instruction", "unsafe_instruction"]:
                raise DataError(f"'instr-resp' of a safe image must hold one 'safe_instruction' and one "
                                f"'unsafe_instruction' entry, found {kinds}")
        elif len(pairs) != 1 or _instruction_key(pairs[0]) != "instruction":
            raise DataError("'instr-resp' of an unsafe image must hold exactly one 'instruction' entry")
        rounds = [(key, _text(pair, key, image_turn=i == 0), _text(pair, "response"))
                  for i, pair in enumerate(pairs) for key in [_instruction_key(pair)]]
        turns = tuple(t for _, q, a in rounds for t in (Turn("user", q), Turn("assistant", a)))
        metadata = {"source": "vlguard", "safe": safe, "rounds": [_ROUND_KINDS[key] for key, _, _ in rounds]}
        if not safe:
            metadata["category"] = _field(record, "harmful_category", str)
            metadata["subcategory"] = record.get("harmful_subcategory")
        return Conversation(record_id, image, turns, metadata)

    return _Reader(path, on_error).run(parse)


_ROUND_KINDS = {"safe_instruction": "safe", "unsafe_instruction": "unsafe", "instruction": "unsafe_image"}


def _instruction_key(pair: Any) -> str:
    """The pair's instruction key: upstream takes the first key of each pair."""
    keys = [key for key in pair if key in _ROUND_KINDS] if isinstance(pair, dict) else []
    if len(keys) != 1:
        raise DataError(f"each 'instr-resp' entry needs one of {', '.join(_ROUND_KINDS)} and a 'response', "
                        f"got {sorted(pair) if isinstance(pair, dict) else type(pair).__name__}")
    return keys[0]


def read_llava(path: str | os.PathLike, *, on_error: str = "skip") -> Records:
    """LLaVA instruction json: `[{id, image?, conversations: [{from: human|gpt, value}]}]`."""
    roles = {"human": "user", "gpt": "assistant"}

    def parse(index: int, record: Any) -> Conversation:
        record_id = str(_field(record, "id", (str, int)))
        image = _field(record, "image", str) if "image" in record else None
        messages = _field(record, "conversations", list)
        turns = []
        for i, message in enumerate(messages):
            try:
                speaker = _field(message, "from", str)
                value = _field(message, "value", str, nonempty=False)
            except DataError as e:
                raise DataError(f"turn {i}: {e}") from None
            expected = "human" if i % 2 == 0 else "gpt"
            if speaker != expected:
                raise DataError(f"turn {i} is from '{speaker}', expected '{expected}' (turns alternate, human first)")
            if image is None and IMAGE_PLACEHOLDER in value:
                raise DataError(f"turn {i} has an <image> placeholder but the record has no 'image'")
            turns.append(Turn(roles[speaker], _text(message, "value", image_turn=i == 0 and image is not None)))
        if len(turns) % 2:
            raise DataError("the last turn is from 'human': every question needs an answer")
        return Conversation(record_id, image, tuple(turns), {"source": "llava"})

    return _Reader(path, on_error).run(parse)


def read_alpaca(path: str | os.PathLike, *, on_error: str = "skip") -> Records:
    """Alpaca json (`instruction`, `input`, `output`), text only; ids are `alpaca-<index>` unless given."""

    def parse(index: int, record: Any) -> Conversation:
        instruction = _text(record, "instruction").strip()
        extra = record.get("input") or ""
        if not isinstance(extra, str):
            raise DataError(f"field 'input' must be str, got {type(extra).__name__}")
        turns = (Turn("user", instruction, extra.strip()), Turn("assistant", _text(record, "output").strip()))
        return Conversation(str(record.get("id", f"alpaca-{index}")), None, turns, {"source": "alpaca"})

    return _Reader(path, on_error).run(parse)


def read_records(format: str, path: str | os.PathLike, **kwargs) -> Records:
    from vlguard_jax.data.preference import PREFERENCE_READERS  # they build on this module, as do the tasks'
    from vlguard_jax.data.tasks import TASK_READERS

    readers = {"vlguard": read_vlguard, "llava": read_llava, "alpaca": read_alpaca, **TASK_READERS,
               **PREFERENCE_READERS}
    if format not in readers:
        raise DataError(f"unknown data format {format!r}; known: {', '.join(FORMATS + tuple(PREFERENCE_READERS))}")
    return readers[format](path, **kwargs)


def category_counts(conversations: Iterable[Conversation]) -> dict[str, int]:
    """`safe`, or `category/subcategory` of unsafe images (VLGuard); other sources count under their name."""
    counts: dict[str, int] = {}
    for c in conversations:
        meta = c.metadata
        if meta.get("source") == "vlguard":
            key = "safe" if meta["safe"] else "/".join(filter(None, (meta["category"], meta.get("subcategory"))))
        else:
            key = meta.get("source", "unknown")
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))
