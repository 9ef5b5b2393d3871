"""`data.preference_format: vlguard`: VLGuard's train json turned into preference pairs, once, before training.

Each round of a VLGuard conversation is one instruction (`vlguard_instructions`): the image, the user's question,
VLGuard's answer as the chosen one. The rejected answer comes from `data.rejected` (a JSONL of `{id, rejected}`,
ids `<VLGuard id>/<kind>`, kind `safe`, `unsafe` or `unsafe_image`), or else is the initial model's own greedy
answer: the run's model as it starts (`model.path` / `model.architecture`, LoRA adapters at their zero init, so
the base model) in the run's compute dtype, asked through the evaluation engine (`evaluate.runner.evaluate`, the
instructions as one in-memory benchmark, the keyword judge) with the generation settings of its family's protocol
(`evaluate.forgetting.layout_protocol`: greedy, its new-token limits) and the prompt and image format the run
trains with (`data.template`, `data.image_mode`), so each rejected answer is the policy's own answer to the input
DPO scores. The answers go to WORKDIR/rejected as an evaluation writes them: chunk by chunk, an interrupted
generation resumes where it stopped, a finished one is read back, never generated again; WORKDIR/rejected/run.json
records what generated them and a start with other settings is refused.

`ensure_pairs` writes WORKDIR/pairs.jsonl (the generic pairs format, image paths relative to
`data.preference_images`) and WORKDIR/pairs_skips.json (each instruction without a usable pair and why), and
returns the config reading that file as `jsonl`. A workdir that holds pairs.jsonl reuses it as it is.
"""

from __future__ import annotations

import collections
import dataclasses
import gc
import json
import os

import jax
from jax.experimental import multihost_utils

from vlguard_jax import hosts, storage
from vlguard_jax.config import Config, ConfigError
from vlguard_jax.data.sources import DataError, Skip, check_skip_fraction, read_vlguard

PAIRS = "pairs.jsonl"
SKIPS = "pairs_skips.json"
REJECTED = "rejected"  # WORKDIR/rejected: the generated answers (an evaluation directory)
BENCHMARK = "vlguard_pairs"  # its benchmark: WORKDIR/rejected/vlguard_pairs/responses.jsonl
KINDS = ("safe", "unsafe", "unsafe_image")

# Skip reasons, by what pairs_skips.json and the summary line count them under.
NO_REJECTED = "no rejected answer"
EMPTY_REJECTED = "empty rejected answer"
IDENTICAL = "rejected answer identical to the chosen one"
UNKNOWN_ID = "rejected answer for an unknown id"
DUPLICATE_ID = "repeated id"
MALFORMED = "malformed line"
INVALID_RECORD = "invalid VLGuard record"
REASONS = (NO_REJECTED, EMPTY_REJECTED, IDENTICAL, UNKNOWN_ID, DUPLICATE_ID, MALFORMED, INVALID_RECORD)


@dataclasses.dataclass(frozen=True)
class Instruction:
    """One round of a VLGuard conversation: `id` is `<conversation id>/<kind>`."""

    id: str
    image: str | None
    prompt: str
    chosen: str
    kind: str  # safe (a safe image's safe question), unsafe (its unsafe one), unsafe_image
    category: str | None = None  # the harm category of an unsafe image


def vlguard_instructions(train_json: str | os.PathLike) -> tuple[list[Instruction], list[Skip]]:
    """Every round of VLGuard's train json as an instruction, and the records the reader skipped (with reasons)."""
    records = read_vlguard(train_json)
    instructions = []
    for conversation in records.conversations:
        kinds = conversation.metadata["rounds"]
        category = None if conversation.metadata["safe"] else conversation.metadata.get("category")
        for i, kind in enumerate(kinds):
            question, answer = conversation.turns[2 * i], conversation.turns[2 * i + 1]
            instructions.append(Instruction(f"{conversation.id}/{kind}", conversation.image, question.text,
                                            answer.text, kind, category if kind == "unsafe_image" else None))
    skips = [Skip(s.id, f"{INVALID_RECORD}: {s.reason}") for s in records.skips]
    return instructions, skips


def ensure_pairs(config: Config, workdir: storage.PathLike, primary: bool, *,
                 max_new_tokens: int | None = None) -> Config:
    """For `data.preference_format: vlguard`, WORKDIR/pairs.jsonl (made once; reused as it is on a later start)
    and the config reading it (`data.preference` that file, `data.preference_format` jsonl); any other config as
    it is. Every process calls it: a generation runs the model on every process's devices (the run's mesh); the
    `primary` process (process 0) alone writes. `max_new_tokens` replaces the protocol's limit (smoke runs, tests).
    """
    data = config.data
    if data.preference_format != "vlguard":
        return config
    if data.preference is None:
        raise ConfigError("data.preference_format vlguard reads VLGuard's train json from data.preference; give it "
                          "(data.preference=PATH/train.json)")
    workdir = storage.path(workdir)
    pairs_path = workdir / PAIRS
    converted = dataclasses.replace(config, data=dataclasses.replace(data, preference=os.fspath(pairs_path),
                                                                      preference_format="jsonl"))
    if hosts.decide(lambda: pairs_path.exists()):  # process 0's disk decides for every process
        if primary:
            print(f"preference pairs: reusing {pairs_path} ({len(storage.read_lines(pairs_path))} pairs)", flush=True)
        return converted
    instructions, reader_skips = vlguard_instructions(data.preference)
    records = len({i.id.rpartition("/")[0] for i in instructions})
    check_skip_fraction(data.preference, reader_skips, records, data.max_skip_fraction)
    if not instructions:
        raise DataError(f"{data.preference}: holds no VLGuard instruction; give VLGuard's train json as "
                        f"data.preference")
    if data.rejected is not None:
        answers = lambda: rejected_from_file(data.rejected, instructions)
    else:
        out = generate_rejected(config, workdir, instructions, max_new_tokens=max_new_tokens)
        answers = lambda: rejected_from_generation(out, instructions)

    def write() -> str:
        rejected, rejected_skips = answers()
        pairs, skips = make_pairs(instructions, rejected)
        skips = reader_skips + rejected_skips + skips
        storage.write_json(workdir / SKIPS, {
            "source": os.fspath(data.preference),
            "rejected": os.fspath(data.rejected) if data.rejected is not None else os.fspath(workdir / REJECTED),
            "instructions": len(instructions), "pairs": len(pairs), "skipped": len(skips),
            "skips": [{"id": s.id, "reason": s.reason} for s in skips]})
        if not pairs:  # pairs.jsonl stays absent: a later start tries again
            raise DataError(f"{data.preference}: no instruction has a usable preference pair "
                            f"({summary_line(pairs_path, 0, skips).partition(', ')[2]})")
        storage.write_text(pairs_path, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))  # last
        return summary_line(pairs_path, len(pairs), skips)

    line = hosts.decide(write)  # process 0 (the primary) writes; an error there stops every process here
    multihost_utils.sync_global_devices("vlguard-jax: preference pairs ready")
    if primary:
        print(line, flush=True)
    return converted


def summary_line(pairs_path: storage.Path, written: int, skips: list[Skip]) -> str:
    counts = collections.Counter(next((r for r in REASONS if s.reason.startswith(r)), s.reason) for s in skips)
    detail = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items()))
    skipped = f"{len(skips)} skipped ({detail}; see {pairs_path.parent / SKIPS})" if skips else "0 skipped"
    return f"preference pairs: {written} written to {pairs_path}, {skipped}"


def make_pairs(instructions: list[Instruction], rejected: dict[str, str]) -> tuple[list[dict], list[Skip]]:
    """The generic pairs (`{id, image?, prompt, chosen, rejected}`) of the instructions with a usable rejected
    answer, in instruction order; a skip for each other instruction."""
    pairs, skips = [], []
    for instruction in instructions:
        answer = rejected.get(instruction.id)
        if answer is None:
            continue  # its skip was counted where its answer was looked for
        if answer.strip() == instruction.chosen.strip():
            skips.append(Skip(instruction.id, IDENTICAL))
            continue
        pairs.append({"id": instruction.id, **({"image": instruction.image} if instruction.image else {}),
                      "prompt": instruction.prompt, "chosen": instruction.chosen, "rejected": answer})
    return pairs, skips


def rejected_from_file(path: storage.PathLike, instructions: list[Instruction]) -> tuple[dict[str, str], list[Skip]]:
    """The rejected answers of `data.rejected` (JSONL of `{id, rejected}`) by instruction id, and a skip for each
    instruction without one, each line that gives none (unknown or repeated id, empty answer, malformed). A file
    none of whose ids is an instruction's is refused: its ids are written some other way."""
    path = storage.path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found (data.rejected); give the rejected answers' JSONL, or leave "
                        f"data.rejected unset to generate them with the initial model")
    known = {i.id for i in instructions}
    answers, skips, seen, taken = {}, [], set(), set()
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: line {number} is not valid JSON ({e}); fix the file") from None
        if not (isinstance(record, dict) and isinstance(record.get("id"), str)
                and isinstance(record.get("rejected"), str)):
            skips.append(Skip(f"{path.name}:{number}", f"{MALFORMED} {number}: expected {{\"id\": str, "
                                                         f"\"rejected\": str}}"))
            continue
        record_id = record["id"]
        seen.add(record_id)
        if record_id not in known:
            skips.append(Skip(record_id, f"{UNKNOWN_ID} (line {number}: no such instruction)"))
        elif record_id in taken:
            skips.append(Skip(record_id, f"{DUPLICATE_ID} (line {number}: its first line counts)"))
        elif not record["rejected"].strip():
            taken.add(record_id)
            skips.append(Skip(record_id, f"{EMPTY_REJECTED} (line {number})"))
        else:
            taken.add(record_id)
            answers[record_id] = record["rejected"]
    if not seen & known:
        example = instructions[0].id
        raise DataError(f"{path}: none of its {len(seen)} ids is an instruction id of VLGuard's train json (ids are "
                        f"'<VLGuard record id>/<kind>', kind one of {', '.join(KINDS)}, e.g. {example!r}); write its "
                        f"ids that way, or leave data.rejected unset to generate the rejected answers with the "
                        f"initial model")
    skips += [Skip(i.id, f"{NO_REJECTED} in {path.name}") for i in instructions if i.id not in taken]
    return answers, skips


def rejected_from_generation(out: storage.Path, instructions: list[Instruction]
                             ) -> tuple[dict[str, str], list[Skip]]:
    """The generated answers of WORKDIR/rejected by instruction id; a skip for each instruction without one (its
    image did not load, or the model's answer is empty)."""
    responses, failed = out / BENCHMARK / "responses.jsonl", out / BENCHMARK / "skips.jsonl"
    answers, skips = {}, []
    for record in map(json.loads, storage.read_lines(responses)):
        if record["response"].strip():
            answers[record["id"]] = record["response"]
        else:
            skips.append(Skip(record["id"], f"{EMPTY_REJECTED} (the model generated no text)"))
    skips += [Skip(r["id"], f"{NO_REJECTED}: not generated ({r['reason']})")
              for r in map(json.loads, storage.read_lines(failed))]
    given = {s.id for s in skips} | set(answers)
    skips += [Skip(i.id, f"{NO_REJECTED}: not in {responses}") for i in instructions if i.id not in given]
    return answers, skips


def benchmark(instructions: list[Instruction], max_skipped: float = 0.05):
    """The instructions as an in-memory benchmark: prompt id = instruction id, its image and question."""
    from vlguard_jax.evaluate.benchmarks import Benchmark, Prompt

    prompts = [Prompt(i.id, i.prompt, i.image, {"category": i.category} if i.category else {})
               for i in instructions]
    return Benchmark(BENCHMARK, prompts, "asr", judge="keywords", max_skipped=max_skipped)


def generation_protocol(config: Config, layout: str, max_new_tokens: int | None = None):
    """The family's evaluation protocol (greedy, its token limits and stop strings) over the run's own prompt
    template and image preprocessing: the model answers the input DPO will score."""
    from vlguard_jax.evaluate.forgetting import layout_protocol

    chosen = layout_protocol(layout, max_new_tokens)
    return dataclasses.replace(chosen, template=config.data.template, image_mode=config.data.image_mode)


def generate_rejected(config: Config, workdir: storage.Path, instructions: list[Instruction], *,
                      max_new_tokens: int | None = None) -> storage.Path:
    """WORKDIR/rejected holding the initial model's greedy answer to every instruction (run on every process;
    process 0 writes). Answers already there are kept: an interrupted generation goes on, a finished one costs no
    model load. Returns the directory."""
    from vlguard_jax.data.chat import tokenizer_digest
    from vlguard_jax.data.images import ImageSource
    from vlguard_jax.data.mixture import fingerprint as file_fingerprint
    from vlguard_jax.evaluate.runner import EvalConfig, auto_batch_size, evaluate
    from vlguard_jax.train.setup import build, load_tokenizer, mesh_for, model_config
    from vlguard_jax.train.trained import tokenizer_dir

    data, out = config.data, workdir / REJECTED
    if data.preference_images is None:
        raise ConfigError("data.preference_format vlguard: generating the rejected answers shows the model VLGuard's "
                          "images; give their root as data.preference_images (or the answers as data.rejected)")
    tokenizer = load_tokenizer(config, tokenizer_dir(config, workdir))
    llava = model_config(config, tokenizer)
    if llava.vision is None:
        raise ConfigError("data.preference_format vlguard: VLGuard's instructions show images, which this text-only "
                          "model cannot see; give the rejected answers as data.rejected or use a vision-language "
                          "model")
    protocol = generation_protocol(config, llava.layout, max_new_tokens)
    suite = [benchmark(instructions, data.max_skip_fraction)]
    m = config.model
    record = {"generated": "vlguard preference pairs' rejected answers: the initial model's", "model": m.path,
              "vision_tower": m.vision_tower, "projector": m.projector, "architecture": m.architecture,
              "init_seed": config.train.seed if m.path is None else None, "tokenizer": tokenizer_digest(tokenizer),
              "data_sha256": file_fingerprint(data.preference)["sha256"][:16], **protocol.record(), "dtype": m.dtype}
    ids = [p.id for p in suite[0].prompts]
    if hosts.decide(lambda: _finished(out, record, ids)):
        return out
    mesh = mesh_for(config)
    setup = build(config, mesh, values="init", llava=llava, tokenizer=tokenizer)  # adapters at init: the base model
    model = setup.model()
    try:
        slots = auto_batch_size(model, tokenizer, suite, protocol, mesh).slots
        if jax.process_index() == 0:
            print(f"preference pairs: generating the initial model's answers to {len(ids)} instructions into {out} "
                  f"({slots} slots)", flush=True)
        evaluate(model, tokenizer, suite, out, ImageSource(data.preference_images), EvalConfig(protocol, slots),
                 progress=jax.process_index() == 0, fingerprint=record, mesh=mesh)
    finally:
        _free(model, setup)
    return out


def _finished(out: storage.Path, record: dict, ids: list[str]) -> bool:
    """Whether OUT holds an answer (or a skip) for every id; refuses answers generated with other settings."""
    path = out / "run.json"
    if path.exists():
        held = storage.read_json(path)
        wanted = json.loads(json.dumps(record))
        differ = [k for k in {**held, **wanted} if held.get(k) != wanted.get(k)]
        if differ:
            details = "; ".join(f"{k}: {held.get(k)!r} → {wanted.get(k)!r}" for k in differ)
            raise ConfigError(f"{path}: its rejected answers were generated with other settings ({details}); delete "
                              f"{out} to generate them again, or use a new workdir")
    written = set()
    for name in ("responses.jsonl", "skips.jsonl"):
        for line in storage.read_lines(out / BENCHMARK / name):
            try:
                written.add(json.loads(line)["id"])
            except (json.JSONDecodeError, KeyError, TypeError):
                return False  # a line cut by an interruption: the evaluation drops it and goes on
    return path.exists() and written >= set(ids)


def _free(model, setup) -> None:
    """Deletes the model's device buffers now (frozen weights, adapters), not whenever the garbage collector runs:
    the caller builds its training setup next."""
    from flax import nnx

    trees = [nnx.state(model), setup.frozen, setup.params]
    for leaf in jax.tree.leaves(trees):
        if isinstance(leaf, jax.Array) and not leaf.is_deleted():
            leaf.delete()
    gc.collect()
