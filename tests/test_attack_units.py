"""The attack's pure parts: the budget and its projection (against upstream's clamp order), the 8-bit image and its
PNG (which the processor must map back to the attacked pixels), the corpus readers and the target rows."""

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from data_fixtures import llama_tokenizer_dir
from test_llava_tokens import SlowLegacyTokenizer, hf_tokenizer
from vlguard_jax.attack.corpus import Targets, read_corpus
from vlguard_jax.attack.image import NOISE, initial_image, quantize, save_png
from vlguard_jax.attack.pgd import Budget, parse_epsilon
from vlguard_jax.data import synthetic
from vlguard_jax.data.chat import IGNORE, ChatTokenizer
from vlguard_jax.data.images import ImageConfig, normalize, preprocess, unit_pixels
from vlguard_jax.data.sources import DataError, Turn
from vlguard_jax.data.vocab import build_tokenizer

IMAGE_TOKENS = 4
SENTENCES = ["Sure, here is how to do it.", "The answer is a red circle.", "Please describe the picture.",
             "There are three shapes in this image, one of them a blue square.", "No."]


def random_levels(shape, seed) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# --- epsilon and the budget ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [("16/255", 16 / 255), ("0.1", 0.1), ("1", 1.0), ("unconstrained", None)])
def test_parse_epsilon(text, expected):
    assert parse_epsilon(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "1/0", "16/255/2", "Unconstrained"])
def test_parse_epsilon_refuses_other_text(text):
    with pytest.raises(ValueError, match=rf"epsilon {text!r}: give a fraction such as 16/255"):
        parse_epsilon(text)


@pytest.mark.parametrize("epsilon,alpha,message", [(0.0, 1 / 255, "epsilon must be in"), (-0.1, 1 / 255, "epsilon"),
                                                   (1.5, 1 / 255, "epsilon must be in"), (0.1, 0.0, "alpha"),
                                                   (None, -1 / 255, "alpha must be positive")])
def test_budget_refuses_radii_and_steps_out_of_range(epsilon, alpha, message):
    with pytest.raises(ValueError, match=message):
        Budget(epsilon, alpha)


@pytest.mark.parametrize("epsilon,label", [(16 / 255, "16/255"), (32 / 255, "32/255"), (1.0, "255/255"),
                                           (0.05, "0.05"), (None, "unconstrained")])
def test_budget_label(epsilon, label):
    assert Budget(epsilon, 1 / 255).label == label


def test_start_lies_within_epsilon_and_the_unit_cube_and_follows_the_seed():
    origin = unit_pixels(random_levels((8, 12, 3), seed=0))
    origin[:, 0] = 0.0  # edges where the noise must be clipped
    origin[:, 1] = 1.0
    budget = Budget(16 / 255, 1 / 255)
    start = budget.start(origin, seed=1)
    assert start.dtype == np.float32 and start.shape == origin.shape
    assert np.abs(start - origin).max() <= budget.epsilon + 1e-7
    assert start.min() >= 0 and start.max() <= 1
    assert np.abs(start - origin).max() > 0.9 * budget.epsilon  # the noise spans the ball, not a corner of it
    np.testing.assert_array_equal(start, budget.start(origin, seed=1))
    assert not np.array_equal(start, budget.start(origin, seed=2))
    np.testing.assert_array_equal(Budget(None, 1 / 255).start(origin, seed=1), origin)


def upstream_projection(pixels: np.ndarray, origin: np.ndarray, epsilon: float) -> np.ndarray:
    """visual_attacker.attack_constrained on its noise δ = x_adv − x: clamp(δ, −ε, ε), then
    clamp(δ + x, 0, 1) − x."""
    noise = np.clip(pixels - origin, -epsilon, epsilon)
    noise = np.clip(noise + origin, 0, 1) - origin
    return origin + noise


@pytest.mark.parametrize("epsilon", [16 / 255, 0.05, 128 / 255])
def test_projection_equals_upstreams_clamp_order(epsilon):
    rng = np.random.default_rng(3)
    origin = unit_pixels(random_levels((10, 9, 3), seed=4))
    pixels = (origin + rng.uniform(-3 * epsilon, 3 * epsilon, origin.shape)).astype(np.float32)
    ours = np.asarray(Budget(epsilon, 1 / 255).project(jnp.asarray(pixels), jnp.asarray(origin)))
    expected = upstream_projection(pixels, origin, np.float32(epsilon))
    assert (ours != pixels).mean() > 0.3  # both bounds were exercised
    np.testing.assert_allclose(ours, expected, atol=1e-6, rtol=0)


def test_unconstrained_projection_is_the_unit_cube():
    pixels = np.random.default_rng(5).uniform(-0.5, 1.5, (3, 4, 5)).astype(np.float32)
    ours = Budget(None, 1 / 255).project(jnp.asarray(pixels), jnp.zeros_like(pixels))
    np.testing.assert_array_equal(np.asarray(ours), np.clip(pixels, 0, 1))


# --- the 8-bit image ----------------------------------------------------------------------------------------------

def rounded(pixels: np.ndarray) -> np.ndarray:
    """torchvision's save_image (upstream's): x * 255 + 0.5, clamped, truncated; [3, H, W] → [H, W, 3]."""
    return np.floor(np.clip(pixels.astype(np.float64) * 255 + 0.5, 0, 255)).transpose(1, 2, 0)


@pytest.mark.parametrize("epsilon", [0.05, 16 / 255, 8 / 255])
def test_quantize_stays_within_the_whole_levels_of_epsilon(epsilon):
    """0.05 is 12.75 levels: a pixel 12.75 levels away rounds to 13, one past the radius; 16/255 is 16 levels."""
    origin = random_levels((6, 7, 3), seed=6)
    origin_unit = unit_pixels(origin)
    rng = np.random.default_rng(7)
    pixels = np.clip(origin_unit + rng.choice([-1, 1], origin_unit.shape) * epsilon, 0, 1).astype(np.float32)
    levels = quantize(pixels, origin, epsilon)
    change = np.abs(levels.astype(int) - origin.astype(int))
    radius = math.floor(epsilon * 255 + 1e-6)
    assert levels.dtype == np.uint8 and levels.shape == origin.shape
    assert change.max() == radius
    np.testing.assert_array_equal(levels, np.clip(rounded(pixels), origin.astype(int) - radius,
                                                  origin.astype(int) + radius))


def test_quantize_rounds_to_the_nearest_level():
    origin = random_levels((5, 8, 3), seed=8)
    pixels = np.clip(unit_pixels(origin) + np.random.default_rng(9).uniform(-2 / 255, 2 / 255, (3, 5, 8)),
                     0, 1).astype(np.float32)
    np.testing.assert_array_equal(quantize(pixels, origin, 16 / 255), rounded(pixels))


def test_unconstrained_quantize_stays_in_range():
    pixels = np.random.default_rng(10).uniform(-0.5, 1.5, (3, 6, 4)).astype(np.float32)
    levels = quantize(pixels, random_levels((6, 4, 3), seed=11), None)
    np.testing.assert_array_equal(levels, rounded(pixels))  # no wrap-around below 0 or above 255
    assert levels.min() == 0 and levels.max() == 255


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A non-square RGB PNG (45 wide, 30 high), so padding, cropping and squeezing each change it."""
    path = tmp_path_factory.mktemp("images") / "photo.png"
    Image.fromarray(random_levels((30, 45, 3), seed=12), "RGB").save(path)
    return path


@pytest.mark.parametrize("mode", ["pad", "crop", "resize"])
def test_initial_image_is_the_processors_input_before_normalisation(photo, mode):
    config = ImageConfig(size=24, mode=mode)
    levels = initial_image(str(photo), config, seed=0)
    assert levels.shape == (24, 24, 3) and levels.dtype == np.uint8
    with Image.open(photo) as image:
        np.testing.assert_array_equal(normalize(levels, config.mean, config.std), preprocess(image, config))


@pytest.mark.parametrize("mode", ["pad", "crop", "resize"])
def test_a_saved_attack_reads_back_as_the_attacked_pixels(photo, mode, tmp_path):
    """What makes an evaluation see the attack: the PNG through the processor is exactly the quantised pixels."""
    config = ImageConfig(size=24, mode=mode)
    origin = initial_image(str(photo), config, seed=0)
    attacked = np.clip(unit_pixels(origin) + np.random.default_rng(13).uniform(-0.1, 0.1, (3, 24, 24)), 0, 1)
    levels = quantize(attacked, origin, 16 / 255)
    save_png(tmp_path / "adversarial.png", levels)
    with Image.open(tmp_path / "adversarial.png") as image:
        processed = preprocess(image, config)
    mean, std = (np.reshape(v, (3, 1, 1)).astype(np.float32) for v in (config.mean, config.std))
    np.testing.assert_array_equal(processed, (unit_pixels(levels) - mean) / std)


def test_noise_start_is_uniform_levels_per_seed():
    config = ImageConfig(size=16)
    noise = initial_image(NOISE, config, seed=1)
    assert noise.shape == (16, 16, 3) and noise.dtype == np.uint8 and noise.min() < 10 and noise.max() > 245
    np.testing.assert_array_equal(noise, initial_image(NOISE, config, seed=1))
    assert not np.array_equal(noise, initial_image(NOISE, config, seed=2))


@pytest.mark.parametrize("content", [b"not an image", None])
def test_an_unreadable_image_is_named(tmp_path, content):
    path = tmp_path / "broken.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"--image {path}: cannot read it as an image .*'noise'"):
        initial_image(str(path), ImageConfig(size=16), seed=0)


# --- the corpus ---------------------------------------------------------------------------------------------------

def test_csv_corpus_is_the_first_column_without_header(tmp_path):
    path = tmp_path / "corpus.csv"
    rows = ['"Sure, I hate them",x', "plain sentence", '"a ""quoted"" word",1,2',
            r'"I can\'t stand it.",']  # the last as upstream's derogatory_corpus.csv writes its rows
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert read_corpus(path) == ["Sure, I hate them", "plain sentence", 'a "quoted" word', r"I can\'t stand it."]


def test_jsonl_corpus_reads_strings_text_and_target(tmp_path):
    path = tmp_path / "corpus.jsonl"
    lines = [json.dumps("a string"), "", json.dumps({"text": "a text"}), json.dumps({"target": "a target", "id": 3})]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert read_corpus(path) == ["a string", "a text", "a target"]


@pytest.mark.parametrize("name,content,message", [
    ("corpus.csv", "first\n,second column\n", r"corpus .*corpus\.csv, row 2: empty sentence"),
    ("corpus.csv", "first\n\"  \"\n", r"corpus .*corpus\.csv, row 2: empty sentence"),
    ("corpus.csv", "", r"corpus .*corpus\.csv holds no sentence"),
    ("corpus.jsonl", '"fine"\n{"text": \n', r"corpus .*corpus\.jsonl, line 2: not JSON"),
    ("corpus.jsonl", '"fine"\n{"sentence": "x"}\n', r"corpus .*corpus\.jsonl, line 2: expected a string or an object"),
    ("corpus.jsonl", '"fine"\n{"text": " "}\n', r"corpus .*corpus\.jsonl, row 2: empty sentence"),
    ("corpus.jsonl", "[1, 2]\n", r"corpus .*corpus\.jsonl, line 1: expected a string"),
    ("corpus.txt", "a sentence\n", r"corpus .*corpus\.txt: give a \.csv .* or a \.jsonl file"),
])
def test_bad_corpora_are_named(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        read_corpus(path)


def test_missing_corpus_is_named(tmp_path):
    with pytest.raises(DataError, match=r"corpus .*absent\.csv: no such file"):
        read_corpus(tmp_path / "absent.csv")


# --- target rows --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chat():
    tokenizer = build_tokenizer(synthetic.corpus(), vocab_size=500)
    return ChatTokenizer(tokenizer, "vicuna_v1", num_image_tokens=IMAGE_TOKENS, max_length=2**31 - 1)


def sentence_ids(chat: ChatTokenizer, sentence: str) -> list[int]:
    return chat.tokenizer(sentence, add_special_tokens=False)["input_ids"]


def test_rows_supervise_the_target_tokens_alone(chat):
    targets = Targets.build(SENTENCES, chat, "Describe it.", IMAGE_TOKENS)
    prompt = chat.encode_prompt([Turn("user", "Describe it.")], image=True, image_tokens=IMAGE_TOKENS)
    np.testing.assert_array_equal(targets.prompt, prompt)
    assert (targets.prompt == chat.image_token_id).sum() == IMAGE_TOKENS
    assert chat.tokenizer.decode(targets.prompt[-3:]).rstrip().endswith("ASSISTANT:")
    indices = np.array([3, 0, 4])
    rows = targets.rows(indices)
    length = len(prompt) + max(len(sentence_ids(chat, s)) for s in SENTENCES)
    assert all(v.shape == (3, length) for v in rows.values())
    for row, index in enumerate(indices):
        expected = sentence_ids(chat, SENTENCES[index])
        end = len(prompt) + len(expected)
        np.testing.assert_array_equal(rows["input_ids"][row, :len(prompt)], prompt)  # one prompt in every row
        np.testing.assert_array_equal(rows["input_ids"][row, len(prompt):end], expected)
        np.testing.assert_array_equal(rows["labels"][row, len(prompt):end], expected)
        assert (rows["labels"][row, :len(prompt)] == IGNORE).all() and (rows["labels"][row, end:] == IGNORE).all()
        assert rows["attention_mask"][row, :end].all() and not rows["attention_mask"][row, end:].any()
        assert (rows["input_ids"][row, end:] == 0).all()
    assert expected[0] != chat.tokenizer.bos_token_id and chat.tokenizer.eos_token_id not in rows["labels"]


def test_an_empty_row_supervises_nothing(chat):
    targets = Targets.build(SENTENCES, chat, "", IMAGE_TOKENS)
    rows = targets.rows(np.array([1, -1]))
    assert (rows["labels"][1] == IGNORE).all()
    assert rows["attention_mask"][1].sum() == len(targets.prompt)
    assert (rows["labels"][0] != IGNORE).sum() == len(sentence_ids(chat, SENTENCES[1]))


def test_long_targets_are_cut_and_counted(chat):
    targets = Targets.build(SENTENCES, chat, "", IMAGE_TOKENS, max_target_tokens=4)
    lengths = [len(sentence_ids(chat, s)) for s in SENTENCES]
    assert targets.ids.shape[1] == 4 and targets.truncated == sum(n > 4 for n in lengths) > 0
    np.testing.assert_array_equal(targets.lengths, np.minimum(lengths, 4))
    np.testing.assert_array_equal(targets.rows(np.array([0]))["labels"][0, -4:], sentence_ids(chat, SENTENCES[0])[:4])


def test_draw_is_a_function_of_seed_and_step(chat):
    targets = Targets.build(SENTENCES * 4, chat, "", IMAGE_TOKENS)  # 20 targets
    first = targets.draw(step=7, seed=1, rows=8)
    assert len(set(first.tolist())) == 8 and first.min() >= 0 and first.max() < 20
    np.testing.assert_array_equal(first, targets.draw(step=7, seed=1, rows=8))
    assert not np.array_equal(first, targets.draw(step=8, seed=1, rows=8))
    assert not np.array_equal(first, targets.draw(step=7, seed=2, rows=8))
    assert len(set(targets.draw(step=0, seed=0, rows=20).tolist())) == 20
    with pytest.raises(ValueError, match=r"a minibatch of 21 targets needs a corpus of at least 21 sentences "
                                         r"\(it holds 20\); lower --batch"):
        targets.draw(step=0, seed=0, rows=21)


@pytest.mark.parametrize("rows", [1, 2, 5, 8])
def test_passes_cover_every_sentence_once(chat, rows):
    targets = Targets.build(SENTENCES, chat, "", IMAGE_TOKENS)
    batches = targets.passes(rows)
    assert all(len(batch) == rows for batch in batches) and len(batches) == math.ceil(len(SENTENCES) / rows)
    drawn = np.concatenate(batches)
    assert sorted(drawn[drawn >= 0].tolist()) == list(range(len(SENTENCES)))
    assert (drawn[len(SENTENCES):] == -1).all()
    supervised = sum((targets.rows(batch)["labels"] != IGNORE).sum() for batch in batches)
    assert supervised == targets.lengths.sum()


@pytest.mark.parametrize("kind", ["legacy", "non_legacy"])
def test_targets_are_upstreams_tokens_with_the_llama2_tokenizer(kind, tmp_path):
    """Qi et al.: `tokenizer(targets).input_ids[1:]` with the legacy tokenizer, the sentence alone with its BOS
    dropped; a non-legacy one (llava-hf's tokenizer.json) gives the same ids, a leading space included."""
    upstream = SlowLegacyTokenizer(llama_tokenizer_dir() / "tokenizer.model")
    chat = ChatTokenizer(hf_tokenizer(kind, tmp_path), "llama2", num_image_tokens=IMAGE_TOKENS)
    sentences = [*SENTENCES, " a leading space", "  two leading spaces", "\ta tab", "Don't, you #$%! idiots…",
                 "数字 42"]
    targets = Targets.build(sentences, chat, "", IMAGE_TOKENS)
    for index, sentence in enumerate(sentences):
        np.testing.assert_array_equal(targets.ids[index, :targets.lengths[index]], upstream(sentence)[1:],
                                      err_msg=sentence)
