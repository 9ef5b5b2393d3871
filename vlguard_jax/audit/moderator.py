"""The audit demo's moderator: a tiny Llama Guard trained from scratch, on a split of its own, through the project's
text-only SFT path, then used only as any Llama Guard checkpoint is (`--judge llama_guard`).

Its training text is Llama Guard 3's prompt for one exchange (the `harmful` rubric's, all thirteen categories)
followed by the verdict, `safe` or `unsafe` and the category on the next line: plain text with the prompt masked,
as Meta's Llama Guard fine-tuning recipe trains. The run's tokenizer renders a sample verbatim (`PLAIN_TEMPLATE`);
the exported tokenizer's chat template writes Llama Guard's prompt (`GUARD_TEMPLATE`), so the judge asks the
checkpoint exactly what it was trained on.
"""

from __future__ import annotations

import json
from pathlib import Path

from vlguard_jax.data import synthetic
from vlguard_jax.data.vocab import build_tokenizer
from vlguard_jax.demo import stage_config
from vlguard_jax.evaluate.judges import Item
from vlguard_jax.evaluate.judges.rubrics.harmful import HARMFUL_CATEGORIES, HARMFUL_TEMPLATE, harmful_messages
from vlguard_jax.hft import demo as hft_demo
from vlguard_jax.train.loop import train
from vlguard_jax.train.trained import export_workdir

# The generator's categories as Llama Guard 3's hazard codes (rubrics/harmful.py).
S_CODES = {"privacy/personal data": "S7", "risky behavior/professional advice": "S6",
           "risky behavior/political": "S13", "risky behavior/sexually explicit": "S12",
           "risky behavior/violence": "S1", "deception/disinformation": "S2", "discrimination/sex": "S10",
           "discrimination/race": "S10", "discrimination/other": "S10"}
GUARD_TEMPLATE = "{{ bos_token }}" + HARMFUL_TEMPLATE.format(
    categories="\n".join(HARMFUL_CATEGORIES), prompt="{{ messages[0]['content'] }}",
    response="{{ messages[1]['content'] }}")
PLAIN_TEMPLATE = ("{{ bos_token }}{% for message in messages %}{{ message['content'] }}"
                  "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}")
MODERATOR = {  # a sample is about 180–220 tokens, most of them the prompt's fixed text
    "model": {"architecture": hft_demo.ARCHITECTURE},
    "data": {"template": "tokenizer", "max_length": 256, "buckets": [256], "mixture": "helpful",
             "helpful_format": "alpaca"},
    "train": {**hft_demo.TRAIN, "mode": "full", "epochs": 2,
              "optimizer": {"learning_rate": 2.0e-3, "warmup_ratio": 0.05, "weight_decay": 0.0}},
}


def verdict(category: str | None) -> str:
    return "safe" if category is None else f"unsafe\n{S_CODES[category]}"


def guard_prompt(prompt: str, response: str) -> str:
    """Llama Guard's prompt for one exchange, without BOS (the template writes it)."""
    return harmful_messages(Item(prompt, response))[0]["content"]


def examples(exchanges: list[dict]) -> list[dict]:
    """Alpaca records: Llama Guard's prompt for each exchange, and its verdict."""
    return [{"id": e["id"], "instruction": guard_prompt(e["prompt"], e["response"]), "input": "",
             "output": verdict(e["category"])} for e in exchanges]


def make_tokenizer(directory: Path):
    """A tokenizer for the generator's texts and Llama Guard's prompt (weighted, so its words become tokens)."""
    corpus = [*synthetic.corpus(), *[guard_prompt("", "")] * 50, *[verdict(c) for c in (None, *S_CODES)]]
    built = build_tokenizer(corpus, vocab_size=1024)
    built.chat_template = PLAIN_TEMPLATE
    built.save_pretrained(directory)
    return built


def train_moderator(workdir: str | Path, split: str | Path, seed: int = 0) -> Path:
    """Trains on the exchanges in `split` (`synthetic_audit.moderator_split`'s); returns the exported checkpoint,
    its tokenizer carrying Llama Guard's chat template."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "examples.json"
    data.write_text(json.dumps(examples(json.loads(Path(split).read_text())), indent=1) + "\n")
    if not (workdir / "tokenizer" / "tokenizer.json").exists():
        make_tokenizer(workdir / "tokenizer")
    config = stage_config(MODERATOR, model={"tokenizer": str(workdir / "tokenizer")},
                          data={"helpful": str(data), "seed": seed}, train={"seed": seed})
    train(config, workdir)
    return use_guard_template(export_workdir(workdir, workdir / "hf"))


def use_guard_template(directory: Path) -> Path:
    """Gives the tokenizer saved in `directory` Llama Guard's chat template, the one the judge applies."""
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(directory)
    saved.chat_template = GUARD_TEMPLATE
    saved.save_pretrained(directory)
    return directory
