"""Typed model configs, read from and written back to Hugging Face `config.json` dictionaries.

Every numerical fact the model needs (norm eps, RoPE theta, feature layer, …) is read from the checkpoint's
own config: library defaults differ from the values LLaVA was trained with (e.g. RMSNorm eps 1e-6 vs 1e-5).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, ClassVar

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """CLIP ViT vision tower."""

    tower: ClassVar[str] = "clip"  # `models.llava.VISION_TOWERS` key
    model_type: ClassVar[str] = "clip_vision_model"
    patch_bias: ClassVar[bool] = False  # the patch convolution's bias
    key_bias: ClassVar[bool] = True  # the attention key projection's bias
    class_token: ClassVar[bool] = True  # a class embedding before the patches

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_layers: int = 24
    num_heads: int = 16
    image_size: int = 336
    patch_size: int = 14
    num_channels: int = 3
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> VisionConfig:
        return cls(
            hidden_size=d.get("hidden_size", 768),
            intermediate_size=d.get("intermediate_size", 3072),
            num_layers=d.get("num_hidden_layers", 12),
            num_heads=d.get("num_attention_heads", 12),
            image_size=d.get("image_size", 224),
            patch_size=d.get("patch_size", 32),
            num_channels=d.get("num_channels", 3),
            layer_norm_eps=d.get("layer_norm_eps", 1e-5),
            hidden_act=d.get("hidden_act", "quick_gelu"),
        )

    def to_hf(self) -> dict[str, Any]:
        return {
            "model_type": self.model_type,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "num_channels": self.num_channels,
            "layer_norm_eps": self.layer_norm_eps,
            "hidden_act": self.hidden_act,
        }


@dataclasses.dataclass(frozen=True)
class EvaVisionConfig(VisionConfig):
    """EVA-CLIP ViT-g/14 as MiniGPT-v2 builds it (LAVIS `eva_vit.py`, `create_eva_vit_g`): CLIP's pre-norm blocks
    with a patch-convolution bias, q and v biases but no k bias, exact GELU, LayerNorm eps 1e-6 and no norm before
    the blocks; 39 of the checkpoint's 40 blocks; the output goes through MiniGPT-v2's `ln_vision` (torch's default
    eps). Defaults are MiniGPT-v2's tower at 448 px."""

    tower: ClassVar[str] = "eva"
    model_type: ClassVar[str] = "eva_vit"
    patch_bias: ClassVar[bool] = True
    key_bias: ClassVar[bool] = False

    hidden_size: int = 1408
    intermediate_size: int = 6144  # int(1408 * 4.3637)
    num_layers: int = 39
    num_heads: int = 16
    image_size: int = 448
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu"
    ln_vision_eps: float = 1e-5

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> EvaVisionConfig:
        return _with_own_defaults(cls, d)

    def to_hf(self) -> dict[str, Any]:
        return {**super().to_hf(), "ln_vision_eps": self.ln_vision_eps}


@dataclasses.dataclass(frozen=True)
class SiglipVisionConfig(VisionConfig):
    """SigLIP ViT (HF `SiglipVisionModel`): no class token, a patch-convolution bias, tanh-approximated GELU,
    LayerNorm eps 1e-6, no norm before the blocks; LLaVA-OneVision reads a hidden state before `post_layernorm` and
    no pooling head. Defaults are so400m/14 at 384 px as llava-hf's OneVision configs give it (26 of its 27 blocks:
    OneVision drops the last)."""

    tower: ClassVar[str] = "siglip"
    model_type: ClassVar[str] = "siglip_vision_model"
    patch_bias: ClassVar[bool] = True
    class_token: ClassVar[bool] = False

    hidden_size: int = 1152
    intermediate_size: int = 4304
    num_layers: int = 26
    num_heads: int = 16
    image_size: int = 384
    layer_norm_eps: float = 1e-6
    hidden_act: str = "gelu_pytorch_tanh"

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> SiglipVisionConfig:
        if d.get("vision_use_head", False):
            raise ValueError("vision_config.vision_use_head is true: LLaVA-OneVision's SigLIP has no pooling head "
                             "(llava-hf sets vision_use_head false); a checkpoint with one is not supported")
        return _with_own_defaults(cls, d)

    def to_hf(self) -> dict[str, Any]:
        return {**super().to_hf(), "vision_use_head": False}


def _with_own_defaults(cls: type[VisionConfig], d: dict[str, Any]) -> VisionConfig:
    """A tower config from its HF dict, what the dict omits at the class's own defaults (not CLIP's library ones)."""
    renamed = {"num_layers": "num_hidden_layers", "num_heads": "num_attention_heads"}
    return cls(**{f.name: d.get(renamed.get(f.name, f.name), f.default) for f in dataclasses.fields(cls)})


VISION_CONFIGS = {c.model_type: c for c in (VisionConfig, EvaVisionConfig, SiglipVisionConfig)}  # a vision_config's model_type → class


DECODER_FAMILIES = ("llama", "mistral", "qwen2")  # a text_config's model_type: one decoder module, its options


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """LLaMA-family decoder: LLaMA-2 / Vicuna and GQA variants, and the same block as Mistral (a sliding window) and
    Qwen2 (q/k/v biases without an o_proj bias, tied embeddings at the small sizes) configure it."""

    family: str = "llama"  # DECODER_FAMILIES: the HF model_type it is written back as
    vocab_size: int = 32064
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    head_dim: int = 128
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] = ()  # sorted items of HF rope_parameters beyond type/theta
    rope_type: str = "default"
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q, k, v and o projections (LLaMA's attention_bias)
    qkv_bias: bool = False  # q, k and v projections only (Qwen2)
    sliding_window: int | None = None  # each query sees at most this many keys, itself included (Mistral)
    mlp_bias: bool = False
    hidden_act: str = "silu"
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    pad_token_id: int | None = None

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> TextConfig:
        family = d.get("model_type", "llama")
        family = "llama" if family == "llava_llama" else family  # original LLaVA's config: a LLaMA's plus mm_* keys
        if family not in DECODER_FAMILIES:
            raise ValueError(f"text_config model_type {family!r} is not a supported decoder "
                             f"({', '.join(DECODER_FAMILIES)})")
        num_heads = d.get("num_attention_heads", 32)
        hidden = d.get("hidden_size", 4096)
        rope = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
        theta = rope.pop("rope_theta", d.get("rope_theta", 10000.0))
        rope_type = rope.pop("rope_type", rope.pop("type", "default"))
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise ValueError(
                f"rope type {rope_type!r} is not supported (supported: {', '.join(SUPPORTED_ROPE_TYPES)})"
            )
        eos = d.get("eos_token_id", 2)
        return cls(
            family=family,
            vocab_size=d.get("vocab_size", 32000),
            hidden_size=hidden,
            intermediate_size=d.get("intermediate_size", 11008),
            num_layers=d.get("num_hidden_layers", 32),
            num_heads=num_heads,
            num_kv_heads=d.get("num_key_value_heads") or num_heads,
            head_dim=d.get("head_dim") or hidden // num_heads,
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta),
            rope_type=rope_type,
            rope_scaling=tuple(sorted(rope.items())),
            max_position_embeddings=d.get("max_position_embeddings", 2048),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            attention_bias=bool(d.get("attention_bias", False)),
            qkv_bias=family == "qwen2",
            sliding_window=_sliding_window(family, d),
            mlp_bias=bool(d.get("mlp_bias", False)),
            hidden_act=d.get("hidden_act", "silu"),
            bos_token_id=d.get("bos_token_id", 1),
            eos_token_id=eos[0] if isinstance(eos, list) else eos,
            pad_token_id=d.get("pad_token_id"),
        )

    def to_hf(self) -> dict[str, Any]:
        family = {"llama": {"attention_bias": self.attention_bias, "mlp_bias": self.mlp_bias},
                  "mistral": {"sliding_window": self.sliding_window},
                  "qwen2": {"use_sliding_window": self.sliding_window is not None,
                            "sliding_window": self.sliding_window, "max_window_layers": 0}}[self.family]
        return {
            "model_type": self.family,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_parameters": {"rope_type": self.rope_type, "rope_theta": self.rope_theta, **dict(self.rope_scaling)},
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            **family,
            "hidden_act": self.hidden_act,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
        }


def _sliding_window(family: str, d: dict[str, Any]) -> int | None:
    """Mistral: `sliding_window` on every layer (null: none). Qwen2: only with `use_sliding_window`, and then on
    the layers from `max_window_layers` on; one window for some layers and not others is refused."""
    if family == "mistral":
        return d.get("sliding_window")
    if family == "qwen2" and d.get("use_sliding_window", False):
        types = set(d.get("layer_types") or ())
        if types - {"sliding_attention"} or (not types and d.get("max_window_layers", 0) > 0):
            raise ValueError("a Qwen2 config with a sliding window on some layers only (use_sliding_window with "
                             "max_window_layers > 0) is not supported; every layer or none")
        return d.get("sliding_window")
    return None


CAUSAL_LM_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                           "qwen2": "Qwen2ForCausalLM"}
TEXT_ONLY_IMAGE_TOKEN = -1  # a text-only model's image token id: no token id matches it

# projector_type → (adjacent visual tokens concatenated into one, linear layers with GELU between them)
PROJECTOR_TYPES = {
    re.compile(r"linear"): lambda m: (1, 1),
    re.compile(r"mlp([1-9]\d*)x_gelu"): lambda m: (1, int(m[1])),  # LLaVA-1.5: mlp2x_gelu
    re.compile(r"concat([1-9]\d*)"): lambda m: (int(m[1]), 1),  # MiniGPT-v2: concat4, then `llama_proj`
}

# config.json model_type of each vision-language layout: its `architectures` entry, what its config may omit, the
# prompt templates (`data.chat`) of its family, and whether an image is tiled at any resolution (`models.anyres`:
# a base crop plus a grid of crops, an image-newline token closing each row of the grid).
LAYOUTS = {
    "llava": dict(architecture="LlavaForConditionalGeneration", vision="clip_vision_model",
                  projector_type="mlp2x_gelu", vision_feature_layer=-2, vision_feature_select_strategy="default",
                  templates=("vicuna_v1", "llava_v1", "llama2", "tokenizer", "alpaca"), anyres=False),
    "minigpt_v2": dict(architecture="MiniGPTv2ForConditionalGeneration", vision="eva_vit",
                       projector_type="concat4", vision_feature_layer=-1, vision_feature_select_strategy="default",
                       templates=("minigptv2", "minigptv2_vqa"), anyres=False),
    "llava_next": dict(architecture="LlavaNextForConditionalGeneration", vision="clip_vision_model",
                       projector_type="mlp2x_gelu", vision_feature_layer=-2, vision_feature_select_strategy="default",
                       templates=("llava_v1", "vicuna_v1", "mistral_instruct", "tokenizer"), anyres=True,
                       image_grid_pinpoints=((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))),
    "llava_onevision": dict(architecture="LlavaOnevisionForConditionalGeneration", vision="siglip_vision_model",
                            projector_type="mlp2x_gelu", vision_feature_layer=-1,
                            vision_feature_select_strategy="full", templates=("qwen", "tokenizer"), anyres=True,
                            image_grid_pinpoints=tuple((384 * a, 384 * b) for a in range(1, 7) for b in range(1, 7)),
                            vision_aspect_ratio="anyres_max_9"),
}


@dataclasses.dataclass(frozen=True)
class LlavaConfig:
    """The whole vision-language model: tower, projector, decoder and how they are glued (LLaVA's CLIP + MLP, or
    MiniGPT-v2's EVA + concatenating projector, by the checkpoint's config). Without `vision` it is a text-only
    language model (HF `LlamaForCausalLM`): the same decoder, no tower, no projector, no image token."""

    vision: VisionConfig | None = VisionConfig()
    text: TextConfig = TextConfig()
    projector_type: str = "mlp2x_gelu"  # a `PROJECTOR_TYPES` pattern: linear, mlp{N}x_gelu, concat{N}
    projector_bias: bool = True
    image_token_id: int = 32000
    vision_feature_layer: int = -2
    vision_feature_select_strategy: str = "default"  # "default" drops the first token (CLIP's class token)
    model_type: str = "llava"  # the `LAYOUTS` entry its config.json is written in
    # Any-resolution tiling (LLaVA-NeXT, OneVision): the (height, width) canvases an image may be fitted to
    image_grid_pinpoints: tuple[tuple[int, int], ...] = ()
    vision_aspect_ratio: str | None = None  # OneVision's "anyres_max_N": pool the tiles' grid to about N crops

    def __post_init__(self):
        if self.vision is None:
            return
        if self.model_type not in LAYOUTS:
            raise ValueError(f"model_type {self.model_type!r} is not a vision-language layout ({', '.join(LAYOUTS)})")
        if self.anyres and not self.image_grid_pinpoints:
            raise ValueError(f"a {self.model_type} model needs image_grid_pinpoints (the canvases it tiles to)")
        if self.vision_aspect_ratio is not None and not re.fullmatch(r"anyres_max_[1-9]\d*", self.vision_aspect_ratio):
            raise ValueError(f"vision_aspect_ratio {self.vision_aspect_ratio!r} is not supported (anyres_max_N)")
        if self.vision_feature_select_strategy not in ("default", "full"):
            raise ValueError(
                f"vision_feature_select_strategy must be 'default' or 'full', got "
                f"{self.vision_feature_select_strategy!r}"
            )
        if not isinstance(self.vision_feature_layer, int):
            raise ValueError(
                f"vision_feature_layer must be one integer (a list of layers is not supported), got "
                f"{self.vision_feature_layer!r}"
            )
        if not -(self.vision.num_layers + 1) <= self.vision_feature_layer <= self.vision.num_layers:
            raise ValueError(
                f"vision_feature_layer {self.vision_feature_layer} is out of range for a "
                f"{self.vision.num_layers}-layer vision tower"
            )
        tokens = self.vision.num_patches + self.vision.class_token - (self.vision_feature_select_strategy == "default")
        if tokens % self.projector_group:
            raise ValueError(f"projector {self.projector_type!r} concatenates {self.projector_group} visual tokens "
                             f"but the tower gives {tokens}, not a multiple of it")

    @property
    def projector_shape(self) -> tuple[int, int]:
        """(visual tokens concatenated per image token, linear layers)."""
        for pattern, shape in PROJECTOR_TYPES.items():
            match = pattern.fullmatch(self.projector_type)
            if match:
                return shape(match)
        raise ValueError(f"projector type {self.projector_type!r} is not supported (use 'linear', 'mlp2x_gelu' or "
                         f"'concat4')")

    @property
    def projector_depth(self) -> int:
        return self.projector_shape[1]

    @property
    def projector_group(self) -> int:
        return self.projector_shape[0]

    @property
    def feature_layer_index(self) -> int:
        """Index into the tower's hidden states (embeddings first), i.e. how many layers LLaVA runs."""
        n = self.vision.num_layers + 1
        return self.vision_feature_layer % n

    @property
    def anyres(self) -> bool:
        return self.vision is not None and LAYOUTS[self.model_type]["anyres"]

    @property
    def tokens_per_crop(self) -> int:
        """Image tokens one crop (one pass of the tower) gives after the select strategy and the projector."""
        vision = self.vision
        tokens = vision.num_patches + vision.class_token - (self.vision_feature_select_strategy == "default")
        return tokens // self.projector_group

    @property
    def num_image_tokens(self) -> int:
        """Image tokens of every image of a fixed-resolution model (0 text-only). An any-resolution model's vary
        with the image's size (`models.anyres.image_tokens`)."""
        if self.vision is None:
            return 0
        if self.anyres:
            raise ValueError(f"a {self.model_type} model's image-token count depends on each image's size: use "
                             f"models.anyres.image_tokens(config, (height, width))")
        return self.tokens_per_crop

    @classmethod
    def text_only(cls, text: TextConfig) -> LlavaConfig:
        return cls(vision=None, text=text, image_token_id=TEXT_ONLY_IMAGE_TOKEN)

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> LlavaConfig:
        """From a llava-hf `config.json` (model_type "llava", the default), this project's MiniGPT-v2 one
        ("minigpt_v2"), or a LLaMA one ("llama": text-only)."""
        model_type = d.get("model_type", "llava")
        if model_type in DECODER_FAMILIES:
            return cls.text_only(TextConfig.from_hf(d))
        if model_type not in LAYOUTS:
            raise ValueError(f"model_type {model_type!r} is not a vision-language layout ({', '.join(LAYOUTS)}) "
                             f"nor a decoder ({', '.join(DECODER_FAMILIES)})")
        layout = LAYOUTS[model_type]
        act = d.get("projector_hidden_act", "gelu")
        if act != "gelu":
            raise ValueError(f"projector_hidden_act {act!r} is not supported (LLaVA uses 'gelu')")
        vision = d.get("vision_config") or {}
        text = TextConfig.from_hf(d.get("text_config") or {})
        if d.get("tie_word_embeddings"):  # transformers ties when either the top or the text config says so
            text = dataclasses.replace(text, tie_word_embeddings=True)
        vision_type = vision.get("model_type", layout["vision"])
        if vision_type not in VISION_CONFIGS:
            raise ValueError(f"vision_config model_type {vision_type!r} is not supported ({', '.join(VISION_CONFIGS)})")
        return cls(
            vision=VISION_CONFIGS[vision_type].from_hf(vision),
            text=text,
            projector_type=d.get("projector_type", layout["projector_type"]),
            projector_bias=bool(d.get("multimodal_projector_bias", True)),
            image_token_id=d.get("image_token_id", d.get("image_token_index", 32000)),
            vision_feature_layer=d.get("vision_feature_layer", layout["vision_feature_layer"]),
            vision_feature_select_strategy=d.get("vision_feature_select_strategy",
                                                 layout["vision_feature_select_strategy"]),
            model_type=model_type,
            image_grid_pinpoints=tuple(tuple(p) for p in d.get("image_grid_pinpoints")
                                       or layout.get("image_grid_pinpoints", ())),
            vision_aspect_ratio=d.get("vision_aspect_ratio", layout.get("vision_aspect_ratio"))
            if "vision_aspect_ratio" in layout else None,
        )

    @property
    def layout(self) -> str:
        """The `LAYOUTS` entry its config.json is written in (a text-only model: 'llama')."""
        return "llama" if self.vision is None else self.model_type

    def check_template(self, template: str) -> None:
        """Refuses a prompt template of another family: each puts the image its own way (`<image>\\n` before
        LLaVA's question, `<Img><image></Img>` inside MiniGPT-v2's `[INST]`)."""
        allowed = () if self.vision is None else LAYOUTS[self.layout]["templates"]
        if allowed and template not in allowed:
            raise ValueError(f"template {template!r} is not a prompt format of this {self.layout} model; use "
                             f"{' or '.join(allowed)}")

    def to_hf(self) -> dict[str, Any]:
        """A llava-hf `config.json` that `transformers.LlavaConfig` reads back to the same model (a text-only
        model's: a `LlamaForCausalLM` one; an EVA-tower model's: this project's `minigpt_v2` one)."""
        if self.vision is None:
            return {"architectures": [CAUSAL_LM_ARCHITECTURES[self.text.family]], **self.text.to_hf()}
        layout = self.layout
        if layout != "minigpt_v2" and self.projector_type != "mlp2x_gelu":
            raise ValueError(
                f"the llava-hf layout only represents the 'mlp2x_gelu' projector, not {self.projector_type!r}"
            )
        extra = {"projector_type": self.projector_type} if layout == "minigpt_v2" else {}
        if self.anyres:
            extra["image_grid_pinpoints"] = [list(p) for p in self.image_grid_pinpoints]
        if self.vision_aspect_ratio is not None:
            extra["vision_aspect_ratio"] = self.vision_aspect_ratio
        return {
            "architectures": [LAYOUTS[layout]["architecture"]],
            "model_type": layout,
            "vision_config": self.vision.to_hf(),
            "text_config": self.text.to_hf(),
            **extra,
            "image_token_index": self.image_token_id,
            **({} if self.anyres else {"image_seq_length": self.num_image_tokens}),
            "projector_hidden_act": "gelu",
            "multimodal_projector_bias": self.projector_bias,
            "vision_feature_layer": self.vision_feature_layer,
            "vision_feature_select_strategy": self.vision_feature_select_strategy,
            "tie_word_embeddings": self.text.tie_word_embeddings,
        }


def _llava15(hidden: int, intermediate: int, layers: int, heads: int, stage1: bool = False) -> LlavaConfig:
    """llava-hf's vocabulary (`<image>` 32000, `<pad>` 32001, 32064 rows), or with `stage1` the model built from
    LLaVA's stage-1 parts: Vicuna's 32000 rows, `<image>` just past them, padding with `<unk>` 0."""
    text = TextConfig(vocab_size=32000 if stage1 else 32064, hidden_size=hidden, intermediate_size=intermediate,
                      num_layers=layers, num_heads=heads, num_kv_heads=heads, head_dim=128, rms_norm_eps=1e-5,
                      rope_theta=10000.0, max_position_embeddings=4096, pad_token_id=0 if stage1 else 32001)
    return LlavaConfig(vision=VisionConfig(), text=text)


def _llama3(hidden: int, intermediate: int, layers: int, head_dim: int, rope_factor: float,
            tied: bool) -> LlavaConfig:
    """A text-only Llama 3.1 / 3.2 decoder, read from its HF config.json values (32 heads, 8 KV heads, the 128256-token
    vocabulary, llama3 RoPE at theta 500000 from 8192 original positions)."""
    rope = {"rope_type": "llama3", "factor": rope_factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}
    return LlavaConfig.text_only(TextConfig.from_hf({
        "vocab_size": 128256, "hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": layers,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": head_dim, "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0, "rope_scaling": rope, "max_position_embeddings": 131072, "tie_word_embeddings": tied,
        "bos_token_id": 128000, "eos_token_id": 128009}))


def _llava_next(text: TextConfig) -> LlavaConfig:
    """A llava-hf LLaVA-NeXT (v1.6) config.json: LLaVA-1.5's CLIP-336 tower and projector, `<image>` 32000 and `<pad>`
    32001 appended to the decoder's 32000-token vocabulary and the rows padded to 32064 (transformers'
    `convert_llava_next_weights_to_hf.py`: `resize_token_embeddings(vocab + 2, 64)`, `pad_token_id = 32001`), and
    the image processor's five canvases of 2 or 3 crops."""
    text = dataclasses.replace(text, vocab_size=32064, pad_token_id=32001)
    return LlavaConfig(vision=VisionConfig(), text=text, model_type="llava_next",
                       image_grid_pinpoints=LAYOUTS["llava_next"]["image_grid_pinpoints"])


def _onevision(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int,
               tied: bool) -> LlavaConfig:
    """A llava-hf LLaVA-OneVision config.json: SigLIP so400m/14 at 384 px with its last block dropped (26 of 27:
    `convert_llava_onevision_weights_to_hf.py`'s `SiglipVisionConfig`), and the Qwen2-Instruct decoder's config
    (RMSNorm eps 1e-6, RoPE theta 1e6, 32768 positions, BOS 151643, EOS `<|im_end|>` 151645, q/k/v biases) with
    `<image>` 151646 and `<video>` 151647 added and the rows padded to a multiple of 64 (`resize_token_embeddings(
    vocab + 2, pad_to_multiple_of=64)`); 36 canvases of 1–6 crops a side, pooled to about 9 crops' tokens."""
    text = TextConfig(family="qwen2", vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                      num_layers=layers, num_heads=heads, num_kv_heads=kv_heads, head_dim=hidden // heads,
                      rms_norm_eps=1e-6, rope_theta=1e6, max_position_embeddings=32768, tie_word_embeddings=tied,
                      qkv_bias=True, bos_token_id=151643, eos_token_id=151645)
    layout = LAYOUTS["llava_onevision"]
    return LlavaConfig(vision=SiglipVisionConfig(), text=text, image_token_id=151646, vision_feature_layer=-1,
                       vision_feature_select_strategy="full", model_type="llava_onevision",
                       image_grid_pinpoints=layout["image_grid_pinpoints"],
                       vision_aspect_ratio=layout["vision_aspect_ratio"])


# Shapes of the published checkpoints (REFERENCE §1), for planning memory before any weights are downloaded.
KNOWN_ARCHITECTURES = {
    "llava-1.5-7b": _llava15(4096, 11008, 32, 32),
    "llava-1.5-13b": _llava15(5120, 13824, 40, 40),
    "llava-1.5-7b-stage1": _llava15(4096, 11008, 32, 32, stage1=True),  # Vicuna + stage-1 projector + CLIP
    "llava-1.5-13b-stage1": _llava15(5120, 13824, 40, 40, stage1=True),
    # Llama-2-7b(-chat), text-only: the harmful-fine-tuning configs' model
    "llama-2-7b": LlavaConfig.text_only(dataclasses.replace(_llava15(4096, 11008, 32, 32, stage1=True).text,
                                                            pad_token_id=None)),
    # MiniGPT-v2: EVA-CLIP ViT-g at 448 px, 4 tokens concatenated per image token (256), Llama-2-7b-chat
    "minigpt-v2": LlavaConfig(vision=EvaVisionConfig(), text=_llava15(4096, 11008, 32, 32, stage1=True).text,
                              projector_type="concat4", image_token_id=32000, vision_feature_layer=-1,
                              model_type="minigpt_v2"),
    # Llama Guard 3, the `llama_guard` judge's checkpoints (huggingface.co/meta-llama/Llama-Guard-3-8B and
    # …/Llama-Guard-3-1B, config.json): Llama 3.1 8B's shape, untied; Llama 3.2 1B's, tied, RoPE factor 32
    "llama-guard-3-8b": _llama3(4096, 14336, 32, 128, rope_factor=8.0, tied=False),
    "llama-guard-3-1b": _llama3(2048, 8192, 16, 64, rope_factor=32.0, tied=True),
    # LLaVA-NeXT (huggingface.co/llava-hf/llava-v1.6-vicuna-7b-hf and …/llava-v1.6-mistral-7b-hf, config.json):
    # Vicuna-7B v1.5 as in LLaVA-1.5; Mistral-7B-Instruct-v0.2 (32 heads, 8 KV heads, MLP 14336, RMSNorm eps 1e-5,
    # RoPE theta 1e6, 32768 positions, no sliding window: its sliding_window is null)
    "llava-v1.6-vicuna-7b": _llava_next(_llava15(4096, 11008, 32, 32).text),
    "llava-v1.6-mistral-7b": _llava_next(TextConfig(
        family="mistral", hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32, num_kv_heads=8,
        head_dim=128, rms_norm_eps=1e-5, rope_theta=1e6, max_position_embeddings=32768, sliding_window=None)),
    # LLaVA-OneVision (huggingface.co/llava-hf/llava-onevision-qwen2-7b-ov-hf and …-0.5b-ov-hf, config.json):
    # Qwen2-7B-Instruct (hidden 3584, MLP 18944, 28 layers, 28 heads, 4 KV heads, untied; 152064 + 2 rows → 152128,
    # as the 7B's config.json gives it) and Qwen2-0.5B-Instruct (hidden 896, MLP 4864, 24 layers, 14 heads, 2 KV
    # heads, tied; 151936 + 2 → 152000 by the same resize)
    "llava-onevision-qwen2-7b-ov": _onevision(3584, 18944, 28, 28, 4, vocab=152128, tied=False),
    "llava-onevision-qwen2-0.5b-ov": _onevision(896, 4864, 24, 14, 2, vocab=152000, tied=True),
}
