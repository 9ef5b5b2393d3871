"""The one run setup: model, adapters, trainable/frozen split, fp32 masters, shardings, optimizer state.

`train`, `plan`, `bench`, `eval` and `export` all start here, so a plan compiles the step the run executes.
Nothing is ever materialised whole: the model is built abstractly (`nnx.eval_shape`); checkpoint tensors are
placed one at a time onto their shardings (each device receives only its slice); random weights and LoRA
adapters are drawn under `jit` with `out_shardings`. After setup each device holds its slice of every frozen
weight (compute dtype), of every trainable weight (fp32) and, once `init_state` runs, of their Adam moments.

`values` says how much is made concrete:
- `"abstract"`: nothing (plan: shapes and shardings only);
- `"init"`: everything (a new run: base weights from the checkpoint or drawn at random, adapters drawn);
- `"frozen"`: the frozen weights only; the trainable ones come from a run checkpoint (resume, eval, export).
A preference run (`train.objective` dpo / ipo) also holds its reference (`train.preference`): built from the initial
weights, so such a run is set up with `"init"` (or `"abstract"`) even when it resumes.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vlguard_jax.config import Config, ConfigError
from vlguard_jax.data.sources import IMAGE_PLACEHOLDER
from vlguard_jax.models.config import LAYOUTS, LlavaConfig
from vlguard_jax.models import attention
from vlguard_jax.models.llava import LlavaForConditionalGeneration
from vlguard_jax.models.lora import LoraConfig, apply_lora
from vlguard_jax.parallel import logical_to_spec, make_mesh, variable_sharding
from vlguard_jax.train.optimizer import build_optimizer
from vlguard_jax.train.preference import OBJECTIVES, PreferenceLoss, preference_loss_sums, reference_params
from vlguard_jax.train.step import TrainState, init_state, make_train_step, merge_params, state_shardings
from vlguard_jax.train.trainable import split_model

VALUES = ("abstract", "init", "frozen")
_is_variable = lambda x: isinstance(x, nnx.Variable)


@dataclasses.dataclass
class RunSetup:
    llava: LlavaConfig
    mesh: Mesh
    graphdef: nnx.GraphDef
    template: nnx.State  # the trainable State's structure and metadata (abstract values: holds no weights)
    frozen: nnx.State  # arrays on the mesh, or `ShapeDtypeStruct`s with their shardings
    params: dict  # fp32 trainable parameters as a pure dict: arrays, or `ShapeDtypeStruct`s with shardings
    tx: optax.GradientTransformation
    seed: int
    preference: PreferenceLoss | None = None  # train.objective dpo / ipo; None: sft
    reference: dict | None = None  # a preference run's reference weights (`preference.reference_params`)

    @property
    def frozen_shardings(self):
        return jax.tree.map(lambda a: a.sharding, self.frozen)

    @property
    def step_weights(self):
        """What the train step reads beside its state: the frozen State, and a preference run's reference weights
        (none when its log-probabilities were precomputed: the batch carries them)."""
        if self.preference is None:
            return self.frozen
        return self.frozen, {} if self.preference.reference == "precomputed" else self.reference

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    @property
    def state_shardings(self) -> TrainState:
        return state_shardings(self.params, self.tx, self.seed, self.mesh)

    @property
    def batch_sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, logical_to_spec(("batch",)))

    def abstract_state(self) -> TrainState:
        """The train state's shapes, dtypes and shardings: a restore target, or a plan's input."""
        abstract = jax.eval_shape(lambda p: init_state(p, self.tx, self.seed), self.params)
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
                            self.state_shardings)

    def init_state(self) -> TrainState:
        """Step 0: the trainable parameters (donated, not copied) and zero moments, each on its sharding."""
        with jax.set_mesh(self.mesh):
            make = jax.jit(lambda p: init_state(p, self.tx, self.seed), out_shardings=self.state_shardings,
                           donate_argnums=0)
            state = make(self.params)
        self.params = _abstract(self.params)  # the donated arrays are gone; keep their description
        return state

    def train_step(self, accum_steps: int, loss_chunk: int = 0, dropout: bool = True):
        """`step(state, step_weights, batch) -> (state, metrics)`, jitted with this mesh's shardings (call it under
        `jax.set_mesh(setup.mesh)`)."""
        state_sh = self.state_shardings
        objective = None if self.preference is None else preference_loss_sums(
            self.graphdef, self.template, self.preference, dropout, loss_chunk)
        step = make_train_step(self.graphdef, self.template, self.tx, accum_steps, dropout, loss_chunk, objective)
        weights_sh = jax.tree.map(lambda a: a.sharding, self.step_weights)
        return jax.jit(step, in_shardings=(state_sh, weights_sh, self.batch_sharding),
                       out_shardings=(state_sh, None), donate_argnums=0,
                       compiler_options=compiler_options(self.mesh))

    def model(self, params=None) -> LlavaForConditionalGeneration:
        """The model with `params` (default: the setup's own) over the frozen weights, on the mesh."""
        return merge_params(self.graphdef, self.template, self.params if params is None else params, self.frozen)


# XLA:CPU's YNNPACK fusions, off for the train step: the `small` LoRA step took 9.8 s without them against 11.5 s
# with them on a 2-core CPU (they pull elementwise work into transposed, strided writes around the dots).
CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def compiler_options(mesh: Mesh) -> dict[str, str] | None:
    """The train step's XLA options for the mesh's platform (None: the compiler's defaults)."""
    return dict(CPU_COMPILER_OPTIONS) if mesh.devices.flat[0].platform == "cpu" else None


def mesh_for(config: Config, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The config's `data × fsdp × tensor` mesh over `devices` (default: all); `fsdp: -1` takes the rest."""
    devices = list(jax.devices() if devices is None else devices)
    m = config.mesh
    fsdp = m.fsdp if m.fsdp != -1 else len(devices) // (m.data * m.tensor)
    return make_mesh(m.data, fsdp, m.tensor, devices)


def model_config(config: Config, tokenizer=None) -> LlavaConfig:
    """The model's shapes: from the checkpoint's config.json (with its separate parts' configs), or from
    `model.architecture` (whose vocabulary and special ids come from the tokenizer when one is given)."""
    if config.model.path is not None:
        from vlguard_jax.checkpoints.hf import read_config
        from vlguard_jax.checkpoints.tensors import CheckpointError

        config_path, raw = read_config(config.model.path)
        m = config.model  # any other layout, or separate parts: their configs (or their misuse) matter too
        if raw.get("model_type") not in LAYOUTS or (m.vision_tower, m.projector) != (None, None):
            return resolve(config).config
        try:  # config.json alone: a plan needs no weights
            return LlavaConfig.from_hf(raw)
        except ValueError as e:
            raise CheckpointError(f"{config_path}: {e}") from e
    if config.model.architecture is None:
        raise ConfigError("model: give either path (a checkpoint directory) or architecture (random init)")
    if tokenizer is None:
        return LlavaConfig.from_hf(config.model.architecture)
    return architecture_config(config.model.architecture, tokenizer)


def resolve(config: Config):
    """The run's checkpoint (`model.path`, with `model.vision_tower` and `model.projector`) seen through canonical
    names (`checkpoints.hf.resolve_checkpoint`)."""
    from vlguard_jax.checkpoints.hf import resolve_checkpoint

    return resolve_checkpoint(config.model.path, config.model.vision_tower, config.model.projector)


def load_tokenizer(config: Config, directory):
    """The run's tokenizer, read from `directory`. A checkpoint-backed run's tokenizer gets the model's `<image>`
    and pad ids in memory, the same way on every start (a Vicuna tokenizer has neither; see `add_model_tokens`)."""
    from pathlib import Path

    from transformers import AutoTokenizer

    if not Path(directory).is_dir():  # else transformers would look for a hub repo of that name
        raise ConfigError(f"{directory}: tokenizer directory not found; give model.path (or model.tokenizer) as a "
                          f"local checkpoint directory")
    tokenizer = AutoTokenizer.from_pretrained(directory)
    if config.model.path is not None:
        from vlguard_jax.checkpoints.tokenizer import add_model_tokens

        add_model_tokens(tokenizer, model_config(config), directory)
    return tokenizer


def architecture_config(architecture: dict, tokenizer) -> LlavaConfig:
    """A llava-hf config dict (or a LLaMA one: a text-only model) whose vocabulary and special ids come from the
    tokenizer."""
    ids = {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,
           "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    if architecture.get("model_type") == "llama":
        return LlavaConfig.from_hf({**architecture, **ids})
    text = {**architecture.get("text_config", {}), **ids}
    image_token = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    return LlavaConfig.from_hf({**architecture, "text_config": text, "image_token_index": image_token})


def attention_choices(config: Config, llava: LlavaConfig, platform: str) -> dict:
    """Each model part's attention on `platform` (`models.attention.describe`), and the dense form that decoding over
    a KV cache uses: what `run.json`, a plan and `vlguard-jax env` record."""
    dtype = jnp.dtype(config.model.dtype)
    parts = {"decoder": (llava.text.head_dim, dtype, "right")}
    if llava.vision is not None:
        parts["vision"] = (llava.vision.hidden_size // llava.vision.num_heads, dtype, "none")
    try:
        choices = attention.describe(config.model.attention, platform, parts)
    except ValueError as e:
        raise ConfigError(f"model.attention: {e}") from None
    decode = attention.dense_implementation(config.model.attention)
    return {**choices, "decode": {"implementation": decode, "fallback_reason": None}}


def make_model(llava: LlavaConfig, config: Config, dtype=None) -> LlavaForConditionalGeneration:
    """The run's model with random weights (seeded) and, for LoRA runs, its adapters: the one constructor that
    `eval_shape` describes and `jit` draws from. `dtype` overrides the run's compute dtype."""
    dtype = jnp.dtype(dtype or config.model.dtype)
    t = config.train
    model = LlavaForConditionalGeneration(llava, dtype=dtype, param_dtype=dtype, remat=config.model.remat,
                                          rngs=nnx.Rngs(t.seed))
    attention.configure(model, config.model.attention, config.model.attention_chunk)
    if t.mode == "lora":
        apply_lora(model, LoraConfig(t.lora.rank, t.lora.alpha, t.lora.dropout, t.lora.targets, t.lora.rslora),
                   nnx.Rngs(t.seed + 1))
    return model


def build(config: Config, mesh: Mesh, *, values: str = "init", llava: LlavaConfig | None = None, tokenizer=None,
          dtype=None, total_steps: int = 1000, on_tensor: Callable[[tuple], None] | None = None) -> RunSetup:
    """The run's setup on `mesh`. `dtype` overrides the compute dtype (and that of the frozen weights; random
    ones are still drawn in the run's dtype, so an evaluation sees the weights the run trained over);
    `on_tensor(path)` runs after each checkpoint tensor is placed."""
    if values not in VALUES:
        raise ValueError(f"values must be one of {', '.join(VALUES)}, got {values!r}")
    llava = llava or model_config(config, tokenizer)
    if llava.vision is None and config.train.mode == "projector":
        raise ConfigError("train.mode=projector trains the projector, which a text-only model does not have; use "
                          "lora or full")
    attention_choices(config, llava, mesh.devices.flat[0].platform)  # an implementation this mesh cannot run stops here
    past_vocab = set() if tokenizer is None else set(range(llava.text.vocab_size, len(tokenizer)))
    if past_vocab - {llava.image_token_id}:  # the image token alone may lie past it: it is never looked up
        raise ConfigError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary has "
                          f"{llava.text.vocab_size}: use the tokenizer that belongs to the checkpoint")
    graphdef, trainable, frozen = split_model(nnx.eval_shape(lambda: make_model(llava, config, dtype)),
                                              config.train.mode)
    sharded = lambda state, dtype=None: jax.tree.map(
        lambda v: v.replace(jax.ShapeDtypeStruct(v.shape, dtype or v.dtype, sharding=variable_sharding(v, mesh))),
        state, is_leaf=_is_variable)
    frozen, trainable = sharded(frozen), sharded(trainable, jnp.float32)  # trainable weights train in fp32
    everything = nnx.from_flat_state([*nnx.to_flat_state(frozen), *nnx.to_flat_state(trainable)])
    if values != "abstract":
        frozen = _concrete(frozen, everything, llava, config, on_tensor)
    if values == "init":
        trainable = _concrete(trainable, everything, llava, config, on_tensor)
    params = nnx.to_pure_dict(trainable)
    tx = build_optimizer(config.train.optimizer, params, total_steps)
    template = _abstract_state(trainable)
    preference = preference_loss(config)
    reference = None if preference is None or values == "frozen" else reference_params(
        template, params, jnp.dtype(dtype or config.model.dtype))  # its initial weights: needs values init
    return RunSetup(llava, mesh, graphdef, template, frozen, params, tx, config.train.seed, preference, reference)


def preference_loss(config: Config) -> PreferenceLoss | None:
    """`train.objective`'s preference loss (None: sft), checked against `data.mixture`."""
    t = config.train
    if t.objective not in OBJECTIVES:
        raise ConfigError(f"train.objective must be one of {', '.join(OBJECTIVES)}, got {t.objective!r}")
    if (t.objective == "sft") != (config.data.mixture != "preference"):
        raise ConfigError(f"train.objective={t.objective} with data.mixture={config.data.mixture}: the preference "
                          f"objectives (dpo, ipo) train on preference pairs (data.mixture: preference) and only they do")
    if t.objective == "sft":
        return None
    try:
        p = t.preference
        return PreferenceLoss(t.objective, p.beta, p.label_smoothing, p.reference, p.rpo_alpha)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _concrete(wanted: nnx.State, everything: nnx.State, llava: LlavaConfig, config: Config, on_tensor) -> nnx.State:
    """The values of `wanted` (a part of `everything`, the whole abstract model): checkpoint weights read onto
    their shardings; adapters, and every weight of a random-init model, drawn under jit into their shardings."""
    from_checkpoint = lambda v: config.model.path is not None and not isinstance(v, nnx.LoRAParam)
    flat = nnx.to_flat_state(wanted)
    read = {path for path, v in flat if from_checkpoint(v)}
    out = []
    if read:
        from vlguard_jax.checkpoints.hf import load_state

        resolved = resolve(config)
        backed = [(p, v) for p, v in nnx.to_flat_state(everything) if from_checkpoint(v)]
        checkpoint_backed = nnx.from_flat_state(backed)
        value = lambda v: v.get_value()
        out += list(nnx.to_flat_state(load_state(resolved, checkpoint_backed, lambda p, v: value(v).sharding,
                                                 lambda p, v: value(v).dtype, on_tensor, select=read)))
    drawn = [(path, v) for path, v in flat if path not in read]
    if drawn:
        out += list(nnx.to_flat_state(_draw(nnx.from_flat_state(drawn), llava, config)))
    return nnx.from_flat_state(out)


def _draw(state: nnx.State, llava: LlavaConfig, config: Config) -> nnx.State:
    paths = {path for path, _ in nnx.to_flat_state(state)}
    target = nnx.to_pure_dict(state)

    def draw():  # the whole model is traced; XLA drops the draws of weights not returned
        full = nnx.to_flat_state(nnx.state(make_model(llava, config)))
        picked = nnx.to_pure_dict(nnx.from_flat_state([(p, v) for p, v in full if p in paths]))
        return jax.tree.map(lambda x, t: x.astype(t.dtype), picked, target)

    values = jax.jit(draw, out_shardings=jax.tree.map(lambda t: t.sharding, target))()
    out = _abstract_state(state)
    nnx.replace_by_pure_dict(out, values)
    return out


def _abstract_state(state: nnx.State) -> nnx.State:
    """A copy of `state` whose values are `ShapeDtypeStruct`s (a template that pins no device memory)."""
    return jax.tree.map(lambda v: v.replace(_abstract(v.get_value())), state, is_leaf=_is_variable)


def _abstract(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=getattr(a, "sharding", None)), tree)
