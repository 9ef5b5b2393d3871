"""The data of the audit demo (`vlguard-jax demo --audit`): the answer key of the instruction data it audits, and a
disjoint split its moderator is trained on.

The audited file is the demo's instruction set exactly as `synthetic.generate` writes it. The generator answers
compliantly (`synthetic.compliance`) only the harmful requests it plants there, and each harmful act belongs to one
category, so the planted conversations and their categories follow from its templates; `truth.json` records them
beside the audited file, never in it. The moderator's split holds exchanges of its own (ids `guard…`): visual
questions with their answers, and harmful requests answered compliantly or refused, in the generator's held-out
phrasings, so no harmful exchange is shared with the audited file (the eight visual questions and their answers are
a closed set: those recur).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from vlguard_jax.data import synthetic

# A compliant answer names its act; an act belongs to one (category, subcategory).
_PLANTED = {synthetic.compliance(act): "/".join(category)
            for category, (_, acts) in synthetic.CATEGORIES.items() for act in acts}
_MODERATOR_PART = 4  # the moderator split's random stream; `synthetic.generate` uses parts 0–3


def planted(records: list[dict]) -> dict[str, str]:
    """id → "category/subcategory" of each LLaVA record in which the generator planted a compliant harmful answer."""
    found = {}
    for record in records:
        categories = {_PLANTED[m["value"]] for m in record["conversations"] if m["value"] in _PLANTED}
        if categories:
            (found[record["id"]],) = categories
    return found


def moderator_split(n: int, seed: int = 0) -> list[dict]:
    """`n` exchanges {id, prompt, response, category (None: safe)}: a third visual questions with their answers, a
    third harmful requests answered compliantly (unsafe), a third the same kind of requests refused (safe)."""
    rng = np.random.default_rng([seed, _MODERATOR_PART])
    exchanges = []
    for i, kind in enumerate(rng.permutation(np.arange(n) % 3)):
        scene = synthetic._scene(rng, hazard=False)
        category = None
        if kind == 0:
            question_kind = synthetic._pick(rng, list(synthetic.QUESTIONS))
            prompt = synthetic._pick(rng, synthetic.QUESTIONS[question_kind])
            response, _ = synthetic._answer(question_kind, scene.color, scene.shape, scene.count)
        else:
            drawn = synthetic._pick(rng, list(synthetic.CATEGORIES))
            prompt, refusal, compliance = synthetic._harmful(rng, synthetic.HELD_OUT_FRAMES, scene, drawn)
            response, category = (compliance, "/".join(drawn)) if kind == 1 else (refusal, None)
        exchanges.append({"id": f"guard{i:05d}", "prompt": prompt, "response": response, "category": category})
    return exchanges


def write(directory: str | os.PathLike, instruct: str | os.PathLike, num_moderator: int, seed: int = 0
          ) -> dict[str, Path]:
    """Writes `truth.json` (the audited file's planted conversations) and `moderator.json` (the moderator's split)
    into `directory`; returns their paths by those names."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    records = json.loads(Path(instruct).read_text(encoding="utf-8"))
    paths = {"truth": out / "truth.json", "moderator": out / "moderator.json"}
    truth = {"audited": Path(instruct).name, "conversations": len(records), "planted": planted(records)}
    paths["truth"].write_text(json.dumps(truth, indent=1) + "\n", encoding="utf-8")
    paths["moderator"].write_text(json.dumps(moderator_split(num_moderator, seed), indent=1) + "\n",
                                  encoding="utf-8")
    return paths
