"""A tiny LLaVA-OneVision post-hoc run end to end: LoRA training on 8 virtual devices (fsdp), its evaluation with the
`onevision` protocol restored on 1 device, and its merged export, which transformers loads and which greedily
answers a test prompt as our evaluation did."""

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LlavaOnevisionForConditionalGeneration

from anyres_fixtures import onevision_config
from test_anyres_parity import hf_processor
from test_chat_next import qwen_tokenizer
from train_fixtures import TINY, run, train_command, write_config
from vlguard_jax.data.chat import ChatTokenizer
from vlguard_jax.data.sources import Turn
from vlguard_jax.data.vision_inputs import VisionInputs
from vlguard_jax.models.config import LlavaConfig

pytestmark = pytest.mark.slow
NEW_TOKENS = 6


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("onevision_run")
    qwen_tokenizer().save_pretrained(root / "tokenizer")
    architecture = onevision_config().to_dict()
    config = {**TINY, "model": {"architecture": architecture, "tokenizer": str(root / "tokenizer")},
              "data": {**TINY["data"], "template": "qwen", "max_length": 512, "buckets": [512],
                       "synthetic_options": {**TINY["data"]["synthetic_options"], "image_size": 40,
                                             "num_test_images": 4}},
              "train": {**TINY["train"], "max_steps": 4, "checkpoint_every": 2}}
    run(train_command(write_config(root, config), root / "work", "mesh.fsdp=8"), devices=8, timeout=600)
    return root


def test_run_evaluates_on_one_device_and_exports_to_transformers(trained):
    work, data = trained / "work", trained / "work" / "data"
    out = trained / "eval"
    run([sys.executable, "-m", "vlguard_jax.cli", "eval", "--model", str(work), "--benchmark", "vlguard",
         "--data", str(data / "vlguard_test.json"), "--images", str(data / "images"), "--out", str(out),
         "--protocol", "onevision", "--max-new-tokens", str(NEW_TOKENS), "--dtype", "float32"], devices=1)
    records = [json.loads(line) for path in sorted(out.glob("*/responses.jsonl"))
               for line in path.read_text().splitlines()]
    assert len(records) == 6  # 2 unsafe images, 2 safe ones × 2 questions

    run([sys.executable, "-m", "vlguard_jax.cli", "export", "--workdir", str(work), "--out", str(trained / "merged")])
    hf, info = LlavaOnevisionForConditionalGeneration.from_pretrained(trained / "merged", output_loading_info=True)
    assert not any(info.values()), info
    tokenizer = qwen_tokenizer()
    llava = LlavaConfig.from_hf(json.loads((trained / "merged" / "config.json").read_text()))
    chat, inputs = ChatTokenizer(tokenizer, "qwen", None), VisionInputs.of(llava)
    record = records[0]
    image = Image.open(data / "images" / record["image"]).convert("RGB")
    prompt = chat.encode_prompt([Turn("user", record["prompt"])], image=True,
                                image_tokens=inputs.tokens((image.height, image.width)))
    with torch.no_grad():
        generated = hf.eval().generate(input_ids=torch.tensor(prompt[None]), do_sample=False,
                                       max_new_tokens=NEW_TOKENS, **hf_processor(hf)([image], return_tensors="pt"))
    answer = tokenizer.decode(generated[0, len(prompt):], skip_special_tokens=True)
    assert answer.strip() == record["response"].strip()
    assert np.isfinite(json.loads((work / "metrics.jsonl").read_text().splitlines()[-1])["loss"])
