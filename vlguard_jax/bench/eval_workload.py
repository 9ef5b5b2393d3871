"""The evaluation workload: VLGuard-shaped prompts decoded to a seeded mix of response lengths, timed through our
continuous engine (`Engine`, shared image prefixes), our static one (`Generator`) and — in `theirs` —
transformers' `generate`; and K LoRA adapters over one base in one `Engine` pass against K sequential passes.

Each prompt is BOS, a short system text (the same for every prompt, as a chat template's), the image's
`num_image_tokens` image tokens and a question of 8–40 random text tokens. Half the images are shown with two
questions, adjacent in the request list (VLGuard's Safe-Safe / Safe-Unsafe pairs). 30% of the responses are
20–40 tokens long, 70% 100–256. Every engine generates exactly the scheduled number of tokens per prompt: ours by
a per-row `max_new_tokens` with no reachable stop id, transformers by EOS forced at that step (`theirs`); each run
checks the lengths it got and raises on a difference.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Sequence

import jax
import numpy as np
from flax import nnx

from vlguard_jax.bench.timing import alternate_all, seconds
from vlguard_jax.bench.workload import BOS, FIRST_TEXT_ID, pixels
from vlguard_jax.models.config import LlavaConfig

SYSTEM_TOKENS = 16  # small: 1 + 16 + 196 image tokens + ≤ 40 question tokens fit the 256 bucket
QUESTION_TOKENS = (8, 40)  # inclusive
SHORT_TOKENS = (20, 40)  # inclusive
LONG_TOKENS = (100, 256)  # inclusive
SHORT_FRACTION = 0.3
MAX_NEW_TOKENS = LONG_TOKENS[1]  # every engine's configured limit, as one evaluation config would set it
PAD = 0
NO_STOP = (-1,)  # a stop id no engine can generate: lengths come from the per-row limits
ADAPTERS = 4
ADAPTER_INIT_STD = 0.02


@dataclasses.dataclass(frozen=True)
class EvalWorkload:
    prompts: list[np.ndarray]  # int32 token ids, one per request
    image_of: np.ndarray  # [prompts]: the index into `images` each prompt shows
    images: np.ndarray  # [images, 3, H, W]
    lengths: np.ndarray  # [prompts]: new tokens each prompt generates

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum())

    def image(self, row: int) -> np.ndarray:
        return self.images[self.image_of[row]]


def response_lengths(count: int, seed: int = 0) -> np.ndarray:
    """`round(30%)` of `count` prompts in SHORT_TOKENS, the rest in LONG_TOKENS, placed by a seeded permutation."""
    rng = np.random.RandomState(seed)
    short = int(round(SHORT_FRACTION * count))
    lengths = np.concatenate([rng.randint(SHORT_TOKENS[0], SHORT_TOKENS[1] + 1, short),
                              rng.randint(LONG_TOKENS[0], LONG_TOKENS[1] + 1, count - short)])
    return lengths[rng.permutation(count)].astype(np.int32)


def image_assignment(count: int, seed: int = 0) -> np.ndarray:
    """Each prompt's image: `count // 3` images shown twice (adjacent prompts), the rest once, in seeded order —
    with `count` divisible by 3, half the images are shared by two questions."""
    rng = np.random.RandomState(seed + 2)
    pairs = count // 3
    units = np.array([2] * pairs + [1] * (count - 2 * pairs))[rng.permutation(count - pairs)]
    return np.repeat(np.arange(len(units)), units).astype(np.int32)


def make_workload(llava: LlavaConfig, count: int, seed: int = 0) -> EvalWorkload:
    rng = np.random.RandomState(seed + 3)
    high = min(llava.image_token_id, llava.text.vocab_size)
    system = rng.randint(FIRST_TEXT_ID, high, SYSTEM_TOKENS)
    image = np.full(llava.num_image_tokens, llava.image_token_id)
    prompts = []
    for _ in range(count):
        question = rng.randint(FIRST_TEXT_ID, high, rng.randint(QUESTION_TOKENS[0], QUESTION_TOKENS[1] + 1))
        prompts.append(np.concatenate([[BOS], system, image, question]).astype(np.int32))
    image_of = image_assignment(count, seed)
    return EvalWorkload(prompts, image_of, pixels(llava, int(image_of.max()) + 1, seed),
                        response_lengths(count, seed))


def check_lengths(outputs: Sequence[np.ndarray], lengths: Sequence[int], engine: str,
                  seen: list | None = None) -> None:
    """Raises unless each output has its scheduled length; `seen` gets the lengths appended."""
    got = [len(o) for o in outputs]
    if seen is not None:
        seen += got
    wrong = [(row, n, int(want)) for row, (n, want) in enumerate(zip(got, lengths)) if n != want]
    if len(got) != len(lengths) or wrong:
        raise RuntimeError(f"{engine} did not generate the scheduled lengths (row, got, scheduled): {wrong[:5]}"
                           f" of {len(lengths)} rows, {len(got)} outputs: the timing would not compare")


def _static_rows(outputs: Sequence[np.ndarray], lengths: Sequence[int]) -> list[np.ndarray]:
    """`Generator` returns a row that met no stop id at the full `max_new_tokens` width, pad after its own limit:
    cut there, refusing a row with anything but pad past its limit (it would have generated beyond it)."""
    rows = []
    for tokens, limit in zip(outputs, lengths):
        if len(tokens) > limit and np.any(tokens[limit:] != PAD):
            raise RuntimeError(f"Generator decoded past a row's limit of {limit} tokens")
        rows.append(tokens[:limit])
    return rows


@dataclasses.dataclass
class Timed:
    """A warmed-up `run()`. `first_s`: the seconds of the first call (compile + a run). Where the warm-up ran a
    cheaper call than `run` (the same compiled shapes, fewer tokens), it ran twice and `again_s` is its second
    call: compile = first − again; else compile = first − `first_fraction` × a timed `run`."""
    run: Callable[[], None]
    first_s: float
    compilations: Callable[[], int]  # the engine's trace count now: the timed runs must not add to it
    again_s: float | None = None
    first_fraction: float = 1.0  # the share of `run`'s work the first call did
    seen: list = dataclasses.field(default_factory=list)  # the last `run`'s output lengths, in request order

    def compile_s(self, timed_s: float) -> float:
        rest = self.first_fraction * timed_s if self.again_s is None else self.again_s
        return max(self.first_s - rest, 0.0)


def static(model, work: EvalWorkload, batch: int) -> Timed:
    """Our static engine: the requests in order, `batch` at a time, each batch decoded to its longest row. Warmed
    up on every batch with a one-token limit (the limits are data: the same compiled function)."""
    from vlguard_jax.generate import Generator, SamplingConfig

    generator = Generator(model, pad_id=PAD, stop_ids=NO_STOP, batch_size=batch)
    sampling = SamplingConfig(max_new_tokens=MAX_NEW_TOKENS)

    seen: list = []

    def run(lengths: np.ndarray = work.lengths) -> None:
        outputs = []
        for start in range(0, len(work.prompts), batch):
            rows = range(start, min(start + batch, len(work.prompts)))
            out = generator.generate([work.prompts[r] for r in rows], [work.image(r) for r in rows], sampling,
                                     max_new_tokens=[int(lengths[r]) for r in rows])
            outputs += _static_rows(out, lengths[start:start + batch])
        seen.clear()
        check_lengths(outputs, lengths, "Generator", seen)

    ones = np.ones_like(work.lengths)
    first_s = seconds(lambda: run(ones))
    return Timed(run, first_s, lambda: generator.compilations, seconds(lambda: run(ones)), seen=seen)


def _requests(work: EvalWorkload, adapter: int = 0) -> list:
    from vlguard_jax.generate import Request

    return [Request(prompt=p, image=work.image(row), image_key=int(work.image_of[row]),
                    max_new_tokens=int(work.lengths[row]), adapter=adapter) for row, p in enumerate(work.prompts)]


def continuous(model, work: EvalWorkload, slots: int) -> Timed:
    """Our continuous engine: `slots` rows refilled as they finish, each shared image's prefix computed once.
    Warmed up on the whole workload (which inserts it compiles depends on the schedule)."""
    from vlguard_jax.generate import Engine, SamplingConfig

    engine = Engine(model, pad_id=PAD, stop_ids=NO_STOP, slots=slots, share_prefixes=True)
    requests = _requests(work)
    sampling = SamplingConfig(max_new_tokens=MAX_NEW_TOKENS)

    seen: list = []

    def run() -> None:
        seen.clear()
        check_lengths(engine.generate(requests, sampling), work.lengths, "Engine", seen)

    return Timed(run, seconds(run), lambda: engine.compilations, seen=seen)


def adapter_states(model, count: int = ADAPTERS, seed: int = 0) -> list[nnx.State]:
    """`count` trained-looking LoRA runs over `model`'s base (which must carry adapters: `apply_lora`): each its
    own seeded lora_b (normal × 0.02, nonzero unlike a fresh adapter's) and projector (the base's + the same noise),
    the rest (lora_a) as initialized. Each is `nnx.state(model_k, trainable_filter("lora"))` of its run."""
    from vlguard_jax.train.trainable import trainable_filter

    template = nnx.to_flat_state(nnx.state(model, trainable_filter("lora")))
    states = []
    for k in range(count):
        key = jax.random.key(seed * 1000 + k)
        flat = []
        for i, (path, variable) in enumerate(template):
            names = [str(p) for p in path]
            value = variable[...]
            noise = ADAPTER_INIT_STD * jax.random.normal(jax.random.fold_in(key, i), value.shape, value.dtype)
            if names[-1] == "lora_b":
                value = noise
            elif "multi_modal_projector" in names:
                value = value + noise
            copy = variable.copy()
            copy.set_value(value)
            flat.append((path, copy))
        states.append(nnx.from_flat_state(flat))
    return states


def multi_adapter(model, states: Sequence[nnx.State], work: EvalWorkload, slots: int) -> tuple[Timed, Timed]:
    """The K adapters evaluated on the workload in one pass (one `Engine(adapters=…)`, `slots` slots per adapter)
    and in K sequential passes of `slots` slots, each over the base carrying one adapter. The sequential passes
    share one compiled `Engine` (its `state` swapped between passes): all K have the same shapes and schedule
    (lengths are forced), so one warm-up pass covers them and the timing holds no compile."""
    from vlguard_jax.generate import Engine, SamplingConfig
    from vlguard_jax.train.trainable import trainable_filter

    sampling = SamplingConfig(max_new_tokens=MAX_NEW_TOKENS)
    k = len(states)
    one = Engine(model, pad_id=PAD, stop_ids=NO_STOP, slots=k * slots, adapters=list(states), share_prefixes=True)
    one_requests = [r for a in range(k) for r in _requests(work, a)]
    all_lengths = np.tile(work.lengths, k)

    one_seen: list = []

    def one_pass() -> None:
        one_seen.clear()
        check_lengths(one.generate(one_requests, sampling), all_lengths, f"Engine with {k} adapters", one_seen)

    graphdef, _, frozen = nnx.split(model, trainable_filter("lora"), ...)
    full_states = [nnx.split(nnx.merge(graphdef, state, frozen))[1] for state in states]
    engine = Engine(nnx.merge(graphdef, states[0], frozen), pad_id=PAD, stop_ids=NO_STOP, slots=slots,
                    share_prefixes=True)
    requests = _requests(work)

    seen: list = []

    def sequential(adapters: Sequence[int] = range(k)) -> None:
        seen.clear()
        for a in adapters:
            engine.state = full_states[a]
            check_lengths(engine.generate(requests, sampling), work.lengths, f"Engine of adapter {a}", seen)

    first_s = seconds(lambda: sequential([0]))  # compile + one pass: the timed run is K passes
    return (Timed(one_pass, seconds(one_pass), lambda: one.compilations, seen=one_seen),
            Timed(sequential, first_s, lambda: engine.compilations, first_fraction=1 / k, seen=seen))


def timed_medians(runs: dict[str, Timed], repeats: int) -> dict[str, float]:
    """`timing.alternate_all` over the runs; raises if a timed call compiled anything (the warm-up must have
    covered every shape)."""
    before = {name: timed.compilations() for name, timed in runs.items()}
    medians = alternate_all({name: timed.run for name, timed in runs.items()}, repeats)
    for name, timed in runs.items():
        if timed.compilations() != before[name]:
            raise RuntimeError(f"{name} compiled during its timed runs: the warm-up missed a shape")
    return medians


def measure(size, dtype, torch_side, repeats: int, prompts: int, slots: int, adapter_prompts: int | None = None,
            adapters: int = ADAPTERS) -> dict:
    """The figures of `results["sizes"][name]["eval_workload"]`. `torch_side`: the `theirs` module, or None;
    `adapter_prompts`: the prompts each of the K adapters evaluates (a workload of its own; default `prompts`)."""
    from vlguard_jax.bench.ours import run_config
    from vlguard_jax.train.setup import make_model

    adapter_prompts = adapter_prompts or prompts
    work = make_workload(size.model, prompts)
    adapter_work = work if adapter_prompts == prompts else make_workload(size.model, adapter_prompts, seed=1)
    start = time.perf_counter()
    model = make_model(size.model, run_config(size, "full", dtype))
    runs = {"continuous": continuous(model, work, slots), "static": static(model, work, slots)}
    if torch_side is not None:
        runs["torch"] = torch_side.eval_generate(size, work, slots)
    lora_model = make_model(size.model, run_config(size, "lora", dtype))
    runs["one_pass"], runs["sequential"] = multi_adapter(lora_model, adapter_states(lora_model, adapters),
                                                         adapter_work, slots)
    warm_s = time.perf_counter() - start
    timed = timed_medians(runs, repeats)

    def figures(name: str, work: EvalWorkload, passes: int = 1, **extra) -> dict:
        s, generated = timed[name], passes * work.tokens
        return {"seconds": s, "generated_tokens": generated, "tokens_per_s": generated / s,
                "prompts": passes * len(work.prompts), "compile_s": runs[name].compile_s(s), **extra}

    def shape(work: EvalWorkload) -> dict:
        return {"prompts": len(work.prompts), "images": len(work.images),
                "shared_images": int(np.sum(np.bincount(work.image_of) == 2)),
                "prompt_tokens": int(sum(len(p) for p in work.prompts)), "generated_tokens": work.tokens,
                "short_responses": int(np.sum(work.lengths <= SHORT_TOKENS[1]))}

    result = {
        **shape(work), "slots": slots, "batch_size": slots, "repeats": repeats,
        "timing": f"each of {repeats} repeat(s) times every engine once in turn (timing.alternate_all over all of "
                  "them), medians reported, after warm-ups: ours' continuous and one-pass runs warm up on the whole "
                  "workload, the sequential passes on one pass (compile_s = first call − its share of the timed "
                  "run); the static engine on every batch at a 1-token limit, transformers on one batch at 2 "
                  "tokens, each twice (compile_s = first − second)",
        "setup_and_warmup_s": warm_s,
        "continuous": figures("continuous", work, slots=slots),
        "static": figures("static", work, batch_size=slots),
        "multi_adapter": {
            "K": adapters, "lora_rank": size.lora_rank, "per_adapter": shape(adapter_work),
            "one_pass_slots": adapters * slots, "sequential_slots": slots,
            "one_pass": figures("one_pass", adapter_work, adapters, slots=adapters * slots),
            "sequential": figures("sequential", adapter_work, adapters, slots=slots),
            "ratio_vs_sequential": timed["sequential"] / timed["one_pass"],
        },
        "ratio_vs_static": timed["static"] / timed["continuous"],
    }
    if "torch" in runs:
        result["torch"] = figures("torch", work, batch_size=slots)
        result["ratio_vs_torch"] = timed["torch"] / timed["continuous"]
    return result
