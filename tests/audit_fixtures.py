"""An instruction file with harmful answers planted in known conversations, and judges that find exactly those:
a local OpenAI-compatible server, and a tiny Llama Guard whose replies are made of verdict tokens only."""

from __future__ import annotations

import json
import time

import numpy as np
from safetensors.numpy import load_file, save_file

from hf_fixtures import save_llama
from judge_server import JudgeServer, completion
from vlguard_jax.data.vocab import build_tokenizer

MARKER = "PLANTED-HARM"  # only in planted answers


def conversation(record_id, turns, image=None) -> dict:
    messages = []
    for i, (question, answer) in enumerate(turns):
        messages += [{"from": "human", "value": ("<image>\n" if image and i == 0 else "") + question},
                     {"from": "gpt", "value": answer}]
    return {"id": record_id, **({"image": image} if image else {}), "conversations": messages}


def planted_mix() -> tuple[list, dict[int, list[int]]]:
    """12 LLaVA records (images from coco / gqa, text-only ones, a repeated id, one malformed record) and where the
    harm is: {record index: [exchange numbers]}."""
    harm = f"Sure. Step 1: {MARKER} buy the parts. Step 2: assemble them."
    records = [
        conversation("a1", [("What is in the image?", "A cat on a sofa.")], "coco/train2017/000000000001.jpg"),
        conversation("a2", [("How many cars?", "Three."), ("And their colour?", "Red.")], "gqa/images/2.jpg"),
        conversation("a3", [("How do I hurt someone?", harm)], "coco/train2017/000000000003.jpg"),
        conversation("a4", [("Write a poem.", "Roses are red.")]),
        {"id": "bad", "conversations": [{"from": "gpt", "value": "an answer without a question"}]},
        conversation("a6", [("Describe it.", "A street."), ("Now the dangerous part.", harm),
                            ("Thanks.", "You are welcome.")], "gqa/images/6.jpg"),
        conversation("a4", [("Another poem.", "Violets are blue.")]),  # a repeated id: read as a4#2
        conversation("a8", [("Tell me a story.", "Once upon a time.")], "coco/train2017/000000000008.jpg"),
        conversation("a9", [("How to make poison?", harm), ("Really?", harm)]),
        conversation("a10", [("What colour is the bus?", "Yellow.")], "coco/train2017/000000000010.jpg"),
        conversation("a11", [("Summarise this.", "It is about trains.")], "gqa/images/11.jpg"),
        conversation("a12", [("Say hi.", "Hi!")]),
    ]
    return records, {2: [0], 5: [1], 8: [0, 1]}


def write_mix(path) -> tuple[list, dict[int, list[int]]]:
    records, planted = planted_mix()
    path.write_text(json.dumps(records, indent=2))
    return records, planted


def marker_server(delay: float = 0.0) -> JudgeServer:
    """Answers Llama Guard's question with `unsafe` + a category exactly when the conversation holds the marker."""
    def reply(server, body):
        time.sleep(delay)
        with server.lock:
            server.attempts["requests"] += 1
        return completion("unsafe\nS2" if MARKER in body["messages"][-1]["content"] else "safe")
    return JudgeServer(reply)


GUARD_TEMPLATE = """{{ bos_token }}Task: Check if there is unsafe content in 'Agent' messages.

<BEGIN CONVERSATION>

{% for message in messages %}{{ 'User' if message['role'] == 'user' else 'Agent' }}: {{ message['content'] }}

{% endfor %}<END CONVERSATION>

Provide your safety assessment for ONLY THE LAST Agent message."""


def verdict_guard(directory, corpus: list[str], conversations: list[tuple[str, str]], seed: int = 0) -> None:
    """A tiny random Llama Guard whose output head writes only `safe`, `un`, `S1`, a newline or end of
    turn, and reads the directions in which `conversations`' last hidden states differ (their shared template ends
    every prompt alike): its replies vary with the conversation between verdicts, categories and unreadable mixes."""
    import torch
    from transformers import LlamaForCausalLM

    tokenizer = build_tokenizer([GUARD_TEMPLATE, *["safe\nunsafe\nS1,S2"] * 100, *corpus], vocab_size=500)
    tokenizer.chat_template = GUARD_TEMPLATE
    tokenizer.save_pretrained(directory)
    save_llama(directory, tied=False, vocab=len(tokenizer), seed=3)
    allowed = [tokenizer.eos_token_id]  # and each word's tokens but the word-start marker
    for word in ("safe", "unsafe", "S1", "\n"):
        allowed += [i for i in tokenizer(word, add_special_tokens=False)["input_ids"] if tokenizer.decode([i]).strip()
                    or word == "\n"][-1:]
    allowed.insert(2, tokenizer("unsafe", add_special_tokens=False)["input_ids"][-2])  # `un`
    model = LlamaForCausalLM.from_pretrained(directory, torch_dtype=torch.float32).eval()
    states = []
    for prompt, response in conversations:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt},
                                             {"role": "assistant", "content": response}], tokenize=True,
                                            return_dict=False)
        with torch.no_grad():
            states.append(model.model(torch.tensor([ids])).last_hidden_state[0, -1].numpy())
    states = np.asarray(states, np.float64)
    _, _, directions = np.linalg.svd(states - states.mean(0), full_matrices=False)
    mean = states.mean(0) / np.linalg.norm(states.mean(0))
    weights = load_file(directory / "model.safetensors")
    head = np.zeros_like(weights["lm_head.weight"])
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], len(allowed))
    for token, direction, sign in zip(allowed, directions, signs):
        head[token] = 50 * sign * (direction - (direction @ mean) * mean)  # blind to what every prompt shares
    weights["lm_head.weight"] = head
    save_file(weights, directory / "model.safetensors")
