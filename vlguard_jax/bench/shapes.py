"""The named model sizes of the benchmark (LLaVA- and MiniGPT-v2-shaped, random weights) and the workload each is
timed on."""

from __future__ import annotations

import dataclasses

from vlguard_jax.models.config import KNOWN_ARCHITECTURES, EvaVisionConfig, LlavaConfig, TextConfig, VisionConfig

ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # LLaVA's LoRA


@dataclasses.dataclass(frozen=True)
class BenchSize:
    name: str
    model: LlavaConfig
    train_rows: int  # rows of one train step, each with one image
    train_len: int
    lora_rank: int
    remat: str  # the same choice is made for the PyTorch stack (gradient checkpointing on or off)
    accelerator_only: bool = False  # too slow to time on a CPU
    lora_projections: tuple[str, ...] = ALL_PROJECTIONS  # the decoder projections LoRA adapts

    @property
    def lora_targets(self) -> str:
        """Our `LoraConfig.targets` regex for `lora_projections`."""
        return rf"language_model\.model\.layers\.(self_attn|mlp)\.({'|'.join(self.lora_projections)})"

    @property
    def peft_targets(self) -> str:
        """PEFT's `target_modules` regex for the same modules of the PyTorch model."""
        return rf".*(language_model|llm).*\.({'|'.join(self.lora_projections)})"

    @property
    def parameters(self) -> int:
        """Weights of the decoder and vision layers plus embeddings and head (norms, biases and the projector
        left out): what the benchmark's memory check sizes."""
        text, vision = self.model.text, self.model.vision
        q, kv = text.num_heads * text.head_dim, text.num_kv_heads * text.head_dim
        layer = text.hidden_size * (2 * q + 2 * kv) + 3 * text.hidden_size * text.intermediate_size
        tower = vision.num_layers * (4 * vision.hidden_size ** 2 + 2 * vision.hidden_size * vision.intermediate_size)
        return text.num_layers * layer + 2 * text.vocab_size * text.hidden_size + tower


def _tiny() -> LlavaConfig:
    vision = VisionConfig(hidden_size=64, intermediate_size=256, num_layers=2, num_heads=4, image_size=32,
                          patch_size=8)
    text = TextConfig(vocab_size=2048, hidden_size=128, intermediate_size=512, num_layers=2, num_heads=4,
                      num_kv_heads=4, head_dim=32, max_position_embeddings=2048)
    return LlavaConfig(vision=vision, text=text, image_token_id=2000)


def _small() -> LlavaConfig:
    """~118M parameters: CLIP 6 × 384 at 224 px / patch 16 (196 image tokens), LLaMA 8 × 768, vocab 32064."""
    vision = VisionConfig(hidden_size=384, intermediate_size=1536, num_layers=6, num_heads=6, image_size=224,
                          patch_size=16)
    text = TextConfig(vocab_size=32064, hidden_size=768, intermediate_size=2048, num_layers=8, num_heads=12,
                      num_kv_heads=12, head_dim=64, max_position_embeddings=2048)
    return LlavaConfig(vision=vision, text=text)


def _minigpt(text: TextConfig, image_size: int, patch_size: int, width: int, layers: int, heads: int) -> LlavaConfig:
    vision = EvaVisionConfig(hidden_size=width, intermediate_size=4 * width, num_layers=layers, num_heads=heads,
                             image_size=image_size, patch_size=patch_size)
    return LlavaConfig(vision=vision, text=text, projector_type="concat4", image_token_id=text.vocab_size,
                       vision_feature_layer=-1, model_type="minigpt_v2")


_QV = ("q_proj", "v_proj")  # MiniGPT-v2's LoRA

SIZES = {
    "tiny": BenchSize("tiny", _tiny(), train_rows=8, train_len=128, lora_rank=8, remat="none"),
    "small": BenchSize("small", _small(), train_rows=4, train_len=512, lora_rank=128, remat="none"),
    "7b": BenchSize("7b", KNOWN_ARCHITECTURES["llava-1.5-7b"], train_rows=4, train_len=2048, lora_rank=128,
                    remat="full", accelerator_only=True),
    "13b": BenchSize("13b", KNOWN_ARCHITECTURES["llava-1.5-13b"], train_rows=2, train_len=2048, lora_rank=128,
                     remat="full", accelerator_only=True),
    # MiniGPT-v2: EVA tower, 4 visual tokens per image token; tiny's and small's decoders
    "minigpt_tiny": BenchSize("minigpt_tiny", _minigpt(_tiny().text, 32, 8, 64, 2, 4), train_rows=8, train_len=128,
                              lora_rank=8, remat="none", lora_projections=_QV),
    "minigpt_small": BenchSize("minigpt_small", _minigpt(_small().text, 224, 16, 384, 6, 6), train_rows=4,
                               train_len=512, lora_rank=64, remat="none", lora_projections=_QV),
    "minigpt-v2": BenchSize("minigpt-v2", KNOWN_ARCHITECTURES["minigpt-v2"], train_rows=4, train_len=1024,
                            lora_rank=64, remat="full", accelerator_only=True, lora_projections=_QV),
}
