"""Evaluation protocols: the settings besides model and data that decide an evaluation's answers, as data.

A run starts from a named preset and explicit settings replace its fields; the protocol as run (every field, the
preset's name, and which fields differ from it) is what `run.json` and `summary.json` record, so two results
are comparable exactly when their protocols are. Every preset reads images as `Image.open(path).convert('RGB')`
(`data.images.ImageSource`), and the evaluations they follow ran their models in float16; the compute dtype here is
a separate setting (`--dtype`), recorded beside the protocol. An any-resolution model (LLaVA-NeXT, OneVision) tiles
every image as its processor does (`data.vision_inputs`) and ignores `image_mode`.
"""

from __future__ import annotations

import dataclasses

from vlguard_jax.config import ConfigError
from vlguard_jax.generate import SamplingConfig


@dataclasses.dataclass(frozen=True)
class Protocol:
    name: str
    template: str  # data.chat template of the prompt
    # data.images mode of a fixed-resolution model: "crop" (CLIP resize + centre crop), "pad" (pad to a square first),
    # "resize"; any-resolution models ignore it
    image_mode: str
    max_new_tokens: int
    min_new_tokens: int = 0
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0
    judge: str = "keywords"  # evaluate.judges name
    stop_strings: tuple[str, ...] = ()  # answers are cut at the first of these

    def __post_init__(self):
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ConfigError(f"protocol {self.name}: min_new_tokens {self.min_new_tokens} must lie between 0 and "
                              f"max_new_tokens {self.max_new_tokens}")

    @property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(self.max_new_tokens, self.temperature, self.top_p, self.seed, self.min_new_tokens)

    def record(self) -> dict:
        """Every field, the name as `protocol`, in json types (what run.json holds and compares)."""
        fields = dataclasses.asdict(self)
        return {"protocol": fields.pop("name"), **fields, "stop_strings": list(self.stop_strings)}

    def overridden(self) -> list[str]:
        """The fields that differ from the preset this protocol is named after."""
        preset = PROTOCOLS.get(self.name, self)
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) != getattr(preset, f.name)]


PROTOCOLS = {
    # ys-zong/VLGuard VLGuard_eval.py + utils/model_utils.py: `llava_v1`; the plain CLIPImageProcessor (shortest edge
    # 336, centre crop, no padding); generate(do_sample=False, max_new_tokens=256, min_new_tokens=1); the keyword
    # judge of utils/utils.py.
    "vlguard": Protocol("vlguard", template="llava_v1", image_mode="crop", max_new_tokens=256, min_new_tokens=1),
    # VLGuard's protocol for its second model, MiniGPT-v2, as MiniGPT-v2's own code prompts it (Vision-CAIR/MiniGPT-4
    # conversation.py CONV_VISION_minigptv2 and minigpt_base.py generate: `<s>[INST] <Img><ImageHere></Img> [vqa] q
    # [/INST]`, Blip2ImageEvalProcessor's 448-px bicubic resize, greedy, min_length 1), VLGuard's 256 new tokens.
    "vlguard_minigptv2": Protocol("vlguard_minigptv2", template="minigptv2_vqa", image_mode="resize",
                                  max_new_tokens=256, min_new_tokens=1),
    # haotian-liu/LLaVA llava/eval/model_vqa_loader.py as scripts/v1_5/eval/*.sh run it: `--conv-mode vicuna_v1`,
    # `--temperature 0`, its default 128 new tokens; process_images pads to a square of the CLIP mean colour
    # (`image_aspect_ratio: pad`).
    "llava": Protocol("llava", template="vicuna_v1", image_mode="pad", max_new_tokens=128),
    # VLGuard's protocol (greedy, 1 to 256 new tokens, the keyword judge) for the any-resolution families, each in the
    # prompt format its own code gives it (their `image_mode` is only the base crop's squash; the tiles are the
    # model's own). LLaVA-NeXT: haotian-liu/LLaVA llava/eval/run_llava.py picks `llava_v1` for llava-v1.6-vicuna-*
    # and `mistral_instruct` for llava-v1.6-mistral-7b. OneVision: LLaVA-VL/LLaVA-NeXT's OneVision tutorial and
    # transformers' llava-onevision chat template, `qwen_1_5` (`qwen` here).
    "llava_next": Protocol("llava_next", template="llava_v1", image_mode="resize", max_new_tokens=256,
                           min_new_tokens=1),
    "llava_next_mistral": Protocol("llava_next_mistral", template="mistral_instruct", image_mode="resize",
                                   max_new_tokens=256, min_new_tokens=1),
    "onevision": Protocol("onevision", template="qwen", image_mode="resize", max_new_tokens=256, min_new_tokens=1),
    # git-disl/Vaccine poison/evaluation/pred.py and */pred_eval.py: the Alpaca prompt, greedy, 128 new tokens.
    "harmful_finetune": Protocol("harmful_finetune", template="alpaca", image_mode="crop", max_new_tokens=128),
}


def protocol(name: str, **overrides) -> Protocol:
    """The preset `name` with `overrides` applied; an override of None keeps the preset's value (a flag not given)."""
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown evaluation protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    return dataclasses.replace(PROTOCOLS[name], **{k: v for k, v in overrides.items() if v is not None})


def describe(settings: dict) -> str:
    """One line for reports: `Protocol.record()` (plus `overridden` and `dtype` where present)."""
    sampling = "greedy" if settings["temperature"] == 0 else (
        f"temperature {settings['temperature']}, top-p {settings['top_p']}, seed {settings['seed']}")
    tokens = f"{settings['max_new_tokens']} new tokens"
    if settings["min_new_tokens"]:
        tokens += f" (at least {settings['min_new_tokens']})"
    parts = [f"template {settings['template']}", f"image {settings['image_mode']}", sampling, tokens,
             f"judge {settings['judge']}"]
    if settings["stop_strings"]:
        parts.append(f"stop strings {settings['stop_strings']}")
    if "dtype" in settings:
        parts.append(settings["dtype"])
    changed = f" (changed from the preset: {', '.join(settings['overridden'])})" if settings.get("overridden") else ""
    return f"protocol {settings['protocol']}{changed}: " + ", ".join(parts)
