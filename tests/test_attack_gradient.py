"""The attack's gradient with respect to the pixels (in [0, 1], before the processor's normalisation) equals torch
autograd through transformers' LLaVA and through the independent MiniGPT-v2 reference, in fp32, and one PGD step
moves the pixels as upstream's (Qi et al.'s `attack_constrained`) does.

The torch side is written as upstream's attacker computes it: the pixels normalised with the CLIP mean / std
(`visual_attacker.normalize`; MiniGPT-v2's `Blip2ImageEvalProcessor` uses the same), the image repeated for every
target row, the mean NLL of the supervised target tokens (HF's `labels` loss), `backward()`.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from hf_fixtures import IMAGE_TOKEN, build_hf  # noqa: E402
from minigpt_fixtures import MiniGPTv2Reference, write_minigptv2_parts  # noqa: E402
from test_minigptv2 import TINY_EVA  # noqa: E402
from vlguard_jax.attack.corpus import Targets  # noqa: E402
from vlguard_jax.attack.pgd import Budget, attack_loss, make_step  # noqa: E402
from vlguard_jax.checkpoints.hf import load_pretrained  # noqa: E402
from vlguard_jax.data.chat import IGNORE  # noqa: E402
from vlguard_jax.data.vision_inputs import VisionInputs  # noqa: E402

# Upstream's normalisation (llava_llama_2_utils/visual_attacker.py `normalize`; LAVIS BlipImageBaseProcessor's default)
UPSTREAM_MEAN = (0.48145466, 0.4578275, 0.40821073)
UPSTREAM_STD = (0.26862954, 0.26130258, 0.27577711)
RELATIVE = 1e-4  # ‖g_jax − g_torch‖ / ‖g_torch‖
TARGET_LENGTHS = (5, 9, 2, 7)  # rows of different lengths: every row but the longest is right-padded


def targets(prompt: list[int], vocab: tuple[int, int], seed: int) -> dict[str, np.ndarray]:
    """`Targets.rows` of random target sentences of TARGET_LENGTHS after `prompt`."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(TARGET_LENGTHS), max(TARGET_LENGTHS)), np.int32)
    for row, length in enumerate(TARGET_LENGTHS):
        ids[row, :length] = rng.integers(*vocab, length)
    built = Targets(np.asarray(prompt, np.int32), ids, np.asarray(TARGET_LENGTHS, np.int32), truncated=0)
    return built.rows(np.arange(len(built)))


def unit_image(size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (3, size, size)).astype(np.float32)


def normalized(pixels):
    """Upstream's `normalize`, on a torch tensor [3, H, W] → [1, 3, H, W]."""
    mean, std = (torch.tensor(v)[None, :, None, None] for v in (UPSTREAM_MEAN, UPSTREAM_STD))
    return (pixels[None] - mean) / std


def torch_gradient(loss_of, pixels: np.ndarray) -> tuple[float, np.ndarray]:
    """The loss at `pixels` and d loss / d pixels by torch autograd; `loss_of(normalized image [rows, 3, H, W])`."""
    leaf = torch.tensor(pixels, requires_grad=True)
    loss = loss_of(normalized(leaf))
    loss.backward()
    return loss.item(), leaf.grad.numpy()


def jax_gradient(model, pixels: np.ndarray, batch: dict, mode: str, loss_chunk: int = 0):
    """`attack_loss` and its pixel gradient, jitted with the weights as inputs (as `make_step` runs it)."""
    image = VisionInputs.of(model.config, mode).image
    mean, std = jnp.asarray(image.mean), jnp.asarray(image.std)
    graphdef, weights = nnx.split(model)

    @jax.jit
    def value_and_grad(weights, pixels, batch):
        loss = lambda p: attack_loss(nnx.merge(graphdef, weights), p, batch, mean, std, loss_chunk)
        return jax.value_and_grad(loss)(pixels)

    loss, grad = value_and_grad(weights, jnp.asarray(pixels), {k: jnp.asarray(v) for k, v in batch.items()})
    return float(loss), np.asarray(grad)


def assert_gradients_match(ours: np.ndarray, expected: np.ndarray) -> None:
    assert np.abs(expected).max() > 1e-3, "reference gradient too small to detect a mismatch"
    relative = np.linalg.norm(ours - expected) / np.linalg.norm(expected)
    assert relative < RELATIVE, relative
    np.testing.assert_allclose(ours, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())


# --- LLaVA-1.5 (transformers' LlavaForConditionalGeneration) -------------------------------------------------------

@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    """The tiny transformers LLaVA and the same weights read into ours, a prompt holding the image, target rows."""
    hf = build_hf("mha", seed=5)
    directory = tmp_path_factory.mktemp("llava")
    hf.save_pretrained(directory)
    model = load_pretrained(directory)
    tokens = model.config.num_image_tokens
    prompt = [1, 7, 8, 9] + [IMAGE_TOKEN] * tokens + [10, 11, 12]
    return hf, model, targets(prompt, (3, IMAGE_TOKEN), seed=0)


def hf_attack_loss(hf, batch: dict):
    """HF's loss with `labels` (mean NLL of the supervised tokens) on the image repeated for every row."""
    tensors = {k: torch.tensor(np.asarray(v, np.int64)) for k, v in batch.items()}

    def loss_of(image):
        rows = tensors["input_ids"].shape[0]
        return hf(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"],
                  pixel_values=image.repeat(rows, 1, 1, 1), labels=tensors["labels"]).loss

    return loss_of


@pytest.mark.parametrize("loss_chunk", [0, 4])
def test_llava_pixel_gradient_equals_torch_autograd(llava, loss_chunk):
    hf, model, batch = llava
    assert (batch["labels"] != IGNORE).sum() == sum(TARGET_LENGTHS)
    assert not batch["attention_mask"].all()  # right padding is part of what is compared
    pixels = unit_image(model.config.vision.image_size, seed=1)
    expected_loss, expected = torch_gradient(hf_attack_loss(hf, batch), pixels)
    loss, grad = jax_gradient(model, pixels, batch, "pad", loss_chunk)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
    assert_gradients_match(grad, expected)


def test_llava_pgd_step_equals_upstreams_signed_step(llava):
    """Upstream's constrained step on its noise δ = x_adv − x: δ ← clamp(δ − α sign g, −ε, ε), then
    δ ← clamp(x + δ, 0, 1) − x. Where |g| is tiny, the two fp32 gradients may disagree in sign: masked out."""
    hf, model, batch = llava
    budget = Budget(epsilon=8 / 255, alpha=1 / 255)
    origin = unit_image(model.config.vision.image_size, seed=2)
    pixels = budget.start(origin, seed=3)
    _, grad = torch_gradient(hf_attack_loss(hf, batch), pixels)
    noise = torch.tensor(pixels - origin)
    x = torch.tensor(origin)
    noise = (noise - budget.alpha * torch.tensor(grad).sign()).clamp(-budget.epsilon, budget.epsilon)
    noise = (noise + x).clamp(0, 1) - x
    expected = (x + noise).numpy()

    image = VisionInputs.of(model.config, "pad").image
    graphdef, weights = nnx.split(model)
    step = jax.jit(make_step(graphdef, budget, image.mean, image.std))
    ours, _ = step(weights, jnp.asarray(pixels), jnp.asarray(origin), {k: jnp.asarray(v) for k, v in batch.items()})
    confident = np.abs(grad) > 1e-3 * np.abs(grad).max()
    assert confident.mean() > 0.9
    np.testing.assert_allclose(np.asarray(ours)[confident], expected[confident], atol=1e-6, rtol=0)
    assert np.abs(np.asarray(ours) - origin).max() <= budget.epsilon + 1e-6


# --- MiniGPT-v2 (the independent torch reference of minigpt_fixtures) ----------------------------------------------

@pytest.fixture(scope="module")
def minigpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("minigptv2")
    parts = write_minigptv2_parts(root, seed=4)
    (root / "config.json").write_text(json.dumps(TINY_EVA))
    model = load_pretrained(parts["llama"], vision_tower=root, projector=parts["ckpt"])
    config = model.config
    prompt = [1, 1, 7, 8, 9] + [config.image_token_id] * config.num_image_tokens + [10, 11, 12]
    return MiniGPTv2Reference(parts), model, targets(prompt, (3, config.text.vocab_size), seed=5)


def reference_attack_loss(reference, batch: dict, image_token_id: int):
    """The reference's logits on each row (text, the image's features, text + target + padding: causal attention
    keeps the trailing padding out of every supervised position), the mean NLL of the target tokens."""
    ids, labels = batch["input_ids"], torch.tensor(np.asarray(batch["labels"], np.int64))
    image_positions = np.flatnonzero(ids[0] == image_token_id)
    first, last = image_positions[0], image_positions[-1] + 1
    segments = [[row[:first].tolist(), row[last:].tolist()] for row in ids]

    def loss_of(image):
        logits = reference(image.repeat(len(segments), 1, 1, 1), segments)
        return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(),
                                                 ignore_index=IGNORE)

    return loss_of


def test_minigptv2_normalises_as_blip2s_eval_processor(minigpt):
    _, model, _ = minigpt
    image = VisionInputs.of(model.config, "resize").image
    np.testing.assert_array_equal(image.mean, UPSTREAM_MEAN)
    np.testing.assert_array_equal(image.std, UPSTREAM_STD)


def test_minigptv2_pixel_gradient_equals_the_reference(minigpt):
    reference, model, batch = minigpt
    pixels = unit_image(model.config.vision.image_size, seed=6)
    expected_loss, expected = torch_gradient(reference_attack_loss(reference, batch, model.config.image_token_id),
                                             pixels)
    loss, grad = jax_gradient(model, pixels, batch, "resize")
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
    assert_gradients_match(grad, expected)
