"""What an audit judges: every conversation of an instruction file, cut into its (user, assistant) exchanges.

Each exchange is judged on its own, in Llama Guard's response-classification form (one User message, the Agent's
answer, "assess ONLY THE LAST Agent message"). Judging a whole conversation in Llama Guard's multi-turn form would
assess its last answer only, so a harmful answer in round 3 of 8 would go unjudged; one exchange at a time every
answer is assessed and the prompts stay short. A conversation is flagged when any of its exchanges is. The cost is
context: a follow-up question ("and the next step?") is read without the rounds before it. Images are never shown:
the moderators this project runs are text-only.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import PurePosixPath

from vlguard_jax.data.sources import Conversation, DataError, Records, read_records
from vlguard_jax.evaluate.judges import Item

FORMATS = ("llava", "vlguard", "alpaca")
NO_IMAGE = "no image"  # mix665k's text-only conversations (ShareGPT)


@dataclasses.dataclass(frozen=True)
class Exchange:
    index: int  # the record's place in the input file
    id: str  # the conversation's id as the readers give it (a repeated id renamed `X#2`, as a mixture sees it)
    number: int  # the exchange's place in its conversation, from 0
    item: Item


@dataclasses.dataclass
class AuditInput:
    path: str
    format: str
    records: Records  # the parsed conversations, each with its record's index; the records the reader skipped

    @property
    def conversations(self) -> list[Conversation]:
        return self.records.conversations

    def exchanges(self, ordinal: int) -> list[Exchange]:
        """The exchanges of the `ordinal`-th parsed conversation."""
        conversation, index = self.conversations[ordinal], self.records.indices[ordinal]
        turns = conversation.turns
        return [Exchange(index, conversation.id, number, Item(_prompt(user), answer.text))
                for number, (user, answer) in enumerate(zip(turns[::2], turns[1::2]))]

    def source(self, ordinal: int) -> str:
        return source_of(self.conversations[ordinal])


def read_input(path: str | os.PathLike, format: str) -> AuditInput:
    """The file's conversations; malformed records are skipped with their reason (an audit cannot judge them, and
    keeps them in clean.json: it removes only what it found harmful)."""
    if format not in FORMATS:
        raise DataError(f"an audit reads {', '.join(FORMATS)} files, not {format!r}")
    return AuditInput(str(path), format, read_records(format, path))


def source_of(conversation: Conversation) -> str:
    """Where a sample came from: mix665k's image paths start with their dataset (coco, gqa, ocr_vqa, textvqa, vg),
    VLGuard's with its image source (privacyAlert, HOD, …); text-only samples have no image."""
    if conversation.image is None:
        return NO_IMAGE if conversation.metadata.get("source") == "llava" else conversation.metadata["source"]
    parts = PurePosixPath(conversation.image).parts
    return parts[0] if len(parts) > 1 else conversation.metadata.get("source", "unknown")


def _prompt(turn) -> str:
    """A user turn as the model saw it: an Alpaca input (context) follows the instruction."""
    return f"{turn.text}\n\n{turn.input}" if turn.input else turn.text
