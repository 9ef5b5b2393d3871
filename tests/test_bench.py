"""The benchmark's stacks are handed the same work: same weights give the same loss on its batch; every engine of
the evaluation workload generates exactly the scheduled lengths; the attack's PGD step and upstream's PyTorch one
follow the same losses; `run` reports the evaluation and attack ratios."""

import importlib.util
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlguard_jax.bench import eval_workload as ew
from vlguard_jax.bench.ours import run_config
from vlguard_jax.bench.shapes import SIZES
from vlguard_jax.bench.workload import BOS, train_batch
from vlguard_jax.train.setup import make_model

HAS_TORCH = importlib.util.find_spec("torch") is not None and importlib.util.find_spec("peft") is not None


def test_bench_batch_gives_both_stacks_the_same_loss(tmp_path):
    torch = pytest.importorskip("torch")
    from vlguard_jax.bench import theirs
    from vlguard_jax.checkpoints.hf import load_pretrained
    from vlguard_jax.train.step import chunked_cross_entropy_sums

    size = SIZES["tiny"]
    hf = theirs.build(size).eval()
    hf.save_pretrained(tmp_path)
    model = load_pretrained(tmp_path)
    batch = train_batch(size.model, rows=2, length=64)
    assert (batch["input_ids"] == size.model.image_token_id).sum() == 2 * size.model.num_image_tokens
    assert (batch["labels"] != -100).sum() > 0

    with torch.no_grad():
        theirs_loss = hf(input_ids=torch.tensor(batch["input_ids"]).long(),
                         attention_mask=torch.tensor(batch["attention_mask"]),
                         pixel_values=torch.tensor(batch["pixel_values"]),
                         labels=torch.tensor(batch["labels"]).long()).loss.item()
    hidden, _ = model.hidden_states(batch["input_ids"], batch["pixel_values"], batch["attention_mask"],
                                    row_images=True)
    nll, count = chunked_cross_entropy_sums(hidden, batch["labels"], model.language_model.logits, 16)
    np.testing.assert_allclose(float(nll / count), theirs_loss, rtol=1e-5)


def test_minigpt_bench_stacks_give_the_same_loss(tmp_path):
    """The PyTorch MiniGPT-v2's weights, written as MiniGPT-v2's released parts (eva_vit_g.pth, a LLaMA directory,
    the checkpoint with llama_proj and ln_vision), load into ours and give its loss on the bench batch."""
    torch = pytest.importorskip("torch")
    from vlguard_jax.bench import theirs
    from vlguard_jax.checkpoints.hf import load_pretrained

    size = SIZES["minigpt_tiny"]
    reference = theirs.build(size).eval()
    with torch.no_grad():
        for name, p in reference.named_parameters():  # non-trivial norms and biases, so all of them are compared
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    torch.save(reference.visual_encoder.state_dict(), tmp_path / "eva_vit_g.pth")
    (tmp_path / "config.json").write_text(json.dumps(size.model.vision.to_hf()))
    reference.llm.save_pretrained(tmp_path / "llama")
    parts = {f"llama_proj.{k}": v for k, v in reference.llama_proj.state_dict().items()}
    parts.update({f"ln_vision.{k}": v for k, v in reference.ln_vision.state_dict().items()})
    torch.save({"model": parts}, tmp_path / "checkpoint.pth")
    model = load_pretrained(tmp_path / "llama", vision_tower=tmp_path, projector=tmp_path / "checkpoint.pth")
    assert model.config.num_image_tokens == size.model.num_image_tokens
    batch = train_batch(size.model, rows=2, length=64)
    with torch.no_grad():
        theirs_loss = reference(input_ids=torch.tensor(batch["input_ids"]).long(),
                                attention_mask=torch.tensor(batch["attention_mask"]),
                                pixel_values=torch.tensor(batch["pixel_values"]),
                                labels=torch.tensor(batch["labels"]).long()).loss.item()
    logits = model(jnp.asarray(batch["input_ids"]), jnp.asarray(batch["pixel_values"]))
    labels = batch["labels"][:, 1:]
    log_probs = jax.nn.log_softmax(logits[:, :-1], axis=-1)
    picked = jnp.take_along_axis(log_probs, jnp.asarray(np.maximum(labels, 0))[..., None], axis=-1)[..., 0]
    ours_loss = float(-(picked * (labels != -100)).sum() / (labels != -100).sum())
    np.testing.assert_allclose(ours_loss, theirs_loss, rtol=1e-5)


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_eval_workload_is_seeded_vlguard_shaped_with_the_length_mix(name):
    llava = SIZES[name].model
    work = ew.make_workload(llava, 48)
    again, other = ew.make_workload(llava, 48), ew.make_workload(llava, 48, seed=1)
    np.testing.assert_array_equal(work.lengths, again.lengths)
    np.testing.assert_array_equal(work.image_of, again.image_of)
    assert all(np.array_equal(a, b) for a, b in zip(work.prompts, again.prompts))
    np.testing.assert_array_equal(work.images, again.images)
    assert not np.array_equal(work.lengths, other.lengths)

    short = (work.lengths >= ew.SHORT_TOKENS[0]) & (work.lengths <= ew.SHORT_TOKENS[1])
    long = (work.lengths >= ew.LONG_TOKENS[0]) & (work.lengths <= ew.LONG_TOKENS[1])
    assert np.all(short | long)
    assert short.sum() == round(0.3 * 48) and long.sum() == 48 - round(0.3 * 48)
    assert len(set(work.lengths[long])) > 10  # varied, not one length
    big = ew.response_lengths(3000, seed=5)
    assert abs(np.mean(big <= ew.SHORT_TOKENS[1]) - 0.3) < 0.001
    assert big.min() >= ew.SHORT_TOKENS[0] and big.max() <= ew.LONG_TOKENS[1]

    # Half the images shown with two questions, those two adjacent; every image used; images in order.
    shown = np.bincount(work.image_of)
    assert len(work.images) == len(shown) == 32 and set(shown) == {1, 2} and (shown == 2).sum() == 16
    assert np.all(np.diff(work.image_of) >= 0)
    assert not np.array_equal(shown, np.repeat([2, 1], 16))  # pairs and singles are interleaved, seeded

    # BOS, the system text (one for all), the image's tokens, then a question of 8–40 text tokens.
    n_image = llava.num_image_tokens
    system = work.prompts[0][1:1 + ew.SYSTEM_TOKENS]
    questions = []
    for p in work.prompts:
        assert p[0] == BOS and np.array_equal(p[1:1 + ew.SYSTEM_TOKENS], system)
        start = 1 + ew.SYSTEM_TOKENS
        assert np.all(p[start:start + n_image] == llava.image_token_id)
        question = p[start + n_image:]
        assert ew.QUESTION_TOKENS[0] <= len(question) <= ew.QUESTION_TOKENS[1]
        assert not np.any(question == llava.image_token_id) and np.all(question < llava.text.vocab_size)
        questions.append(len(question))
    assert len(set(questions)) > 10
    assert max(len(p) for p in work.prompts) <= (256 if name == "small" else 128)


def test_check_lengths_refuses_a_row_off_its_schedule():
    ew.check_lengths([np.zeros(3), np.zeros(5)], [3, 5], "x")
    with pytest.raises(RuntimeError, match="row, got, scheduled"):
        ew.check_lengths([np.zeros(3), np.zeros(4)], [3, 5], "x")
    with pytest.raises(RuntimeError):
        ew.check_lengths([np.zeros(3)], [3, 5], "x")
    with pytest.raises(RuntimeError, match="past a row's limit"):
        ew._static_rows([np.array([5, 6, 7, 8])], [2])
    assert [len(r) for r in ew._static_rows([np.array([5, 6, ew.PAD, ew.PAD])], [2])] == [2]


def test_our_engines_generate_exactly_the_scheduled_lengths():
    size = SIZES["tiny"]
    work = ew.make_workload(size.model, 6)
    assert (np.bincount(work.image_of) == 2).sum() == 2
    model = make_model(size.model, run_config(size, "full", jnp.float32))
    for timed in (ew.continuous(model, work, 2), ew.static(model, work, 2)):
        timed.seen.clear()
        timed.run()
        assert timed.seen == list(work.lengths)

    lora_model = make_model(size.model, run_config(size, "lora", jnp.float32))
    states = ew.adapter_states(lora_model, ew.ADAPTERS)
    assert len(states) == 4
    b = [[np.asarray(v[...]) for path, v in ew.nnx.to_flat_state(s) if path[-1] == "lora_b"] for s in states]
    projector = [[np.asarray(v[...]) for path, v in ew.nnx.to_flat_state(s) if "multi_modal_projector" in path]
                 for s in states]
    assert b[0] and projector[0]
    assert all(np.abs(x).max() > 0 for x in b[0])  # trained-looking: a fresh adapter's lora_b is zero
    assert not np.array_equal(b[0][0], b[1][0]) and not np.array_equal(projector[0][0], projector[1][0])
    one, sequential = ew.multi_adapter(lora_model, states, work, 2)
    for timed in (one, sequential):
        timed.seen.clear()
        timed.run()
        assert timed.seen == list(np.tile(work.lengths, 4))


@pytest.mark.skipif(not HAS_TORCH, reason="torch and peft come with the test extra")
def test_torch_generate_is_forced_to_the_scheduled_lengths():
    import torch

    from vlguard_jax.bench import theirs

    size = SIZES["tiny"]
    work = ew.make_workload(size.model, 6)
    timed = theirs.eval_generate(size, work, 4)
    timed.seen.clear()
    timed.run()
    assert timed.seen == list(work.lengths)
    # The processor alone: EOS banned before the row's last step, forced at it.
    force = theirs.ForceLengths(prompt_len=3, lengths=np.array([2, 4]), eos=2)
    scores = force(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 10))  # one token generated so far
    assert scores[0].argmax() == 2 and torch.isinf(scores[0, :2]).all()
    assert torch.isinf(scores[1, 2]) and torch.isfinite(scores[1, 3])


def test_run_reports_the_eval_workload_ratios(tmp_path, monkeypatch):
    from vlguard_jax.bench import run as bench_run

    # Only the evaluation workload is under test here: no train steps, no matmul peak.
    monkeypatch.setattr(bench_run, "_train", lambda *args: {"skipped": "not under test"})
    monkeypatch.setattr(bench_run, "measured_matmul_peak",
                        lambda: {"flops_per_s": 1e9, "dtype": "float32", "size": 0})
    monkeypatch.setattr(bench_run, "RATIO_SIZE", "tiny")  # the summaries read small's figures by default
    out = tmp_path / "bench.json"
    bench_run.run(["tiny"], out, repeats=1, decode_batches=(), pipeline=False, eval_prompts=6, eval_slots=2,
                  eval_adapter_prompts=3, attack=False)
    results = json.loads(out.read_text())
    figures = results["sizes"]["tiny"]["eval_workload"]
    assert figures["prompts"] == 6 and figures["slots"] == 2
    assert figures["multi_adapter"]["one_pass_slots"] == 8 and figures["multi_adapter"]["sequential_slots"] == 2
    assert figures["multi_adapter"]["per_adapter"]["prompts"] == 3
    assert figures["continuous"]["generated_tokens"] == figures["static"]["generated_tokens"] > 0
    keys = ["eval_workload_vs_static", "multi_adapter_vs_sequential"] + (["eval_workload_vs_torch"] * HAS_TORCH)
    for key in keys:
        assert isinstance(results["ratios"][key], float) and results["ratios"][key] > 0, key
    assert results["ratios"]["eval_workload_vs_torch"] == figures.get("ratio_vs_torch")


def test_attack_step_follows_upstreams_pytorch_step_on_the_same_weights(tmp_path):
    """Same weights, batch and start: the losses agree at step 0 and after two signed steps (which then moved the
    pixels alike); the minibatch is right-padded targets after one prompt holding the image."""
    pytest.importorskip("torch")
    from vlguard_jax.bench import attack_workload as aw
    from vlguard_jax.bench import theirs
    from vlguard_jax.checkpoints.hf import load_pretrained

    size = SIZES["tiny"]
    hf = theirs.build(size)
    hf.save_pretrained(tmp_path)
    batch = aw.target_batch(size.model)
    origin, start = aw.pixels(size.model)
    assert batch["input_ids"].shape == (aw.ROWS, 1 + size.model.num_image_tokens + aw.PROMPT_TEXT_TOKENS
                                        + aw.TARGET_TOKENS)
    assert (batch["input_ids"] == size.model.image_token_id).sum() == aw.ROWS * size.model.num_image_tokens
    targets = (batch["labels"] >= 0).sum(axis=1)
    assert targets.max() == aw.TARGET_TOKENS and targets.min() < aw.TARGET_TOKENS  # right padding in use
    assert 0 < np.abs(start - origin).max() <= aw.BUDGET.epsilon + 1e-6 and start.min() >= 0 and start.max() <= 1

    ours, _ = aw.ours_step(load_pretrained(tmp_path), batch, origin, start)
    upstream = theirs.attack_step(hf, batch, origin, start, aw.BUDGET, *aw.normalization(size.model))
    ours_losses = [ours() for _ in range(3)]
    theirs_losses = [upstream() for _ in range(3)]
    np.testing.assert_allclose(ours_losses, theirs_losses, rtol=1e-5)
    assert ours_losses[2] < ours_losses[0]  # the steps descend: a step that ignored its gradient would not


def test_run_reports_the_attack_step_ratio(tmp_path, monkeypatch):
    from vlguard_jax.bench import run as bench_run

    monkeypatch.setattr(bench_run, "_train", lambda *args: {"skipped": "not under test"})
    monkeypatch.setattr(bench_run, "measured_matmul_peak",
                        lambda: {"flops_per_s": 1e9, "dtype": "float32", "size": 0})
    monkeypatch.setattr(bench_run, "RATIO_SIZE", "tiny")
    out = tmp_path / "bench.json"
    bench_run.run(["tiny"], out, repeats=1, decode_batches=(), pipeline=False, eval_workload=False)
    results = json.loads(out.read_text())
    figures = results["sizes"]["tiny"]["attack_step"]
    assert figures["rows"] == 8 and figures["epsilon"] == "16/255" and figures["step_s"] > 0
    if HAS_TORCH:
        assert figures["torch"]["step_s"] > 0
        assert figures["ratio_vs_torch"] == pytest.approx(figures["torch"]["step_s"] / figures["step_s"])
    assert results["ratios"]["attack_step_vs_torch"] == figures.get("ratio_vs_torch")


def test_mfu_over_100_percent_is_a_failed_measurement():
    from vlguard_jax.bench.peak import format_mfu, mfu

    assert mfu(0.5e9, 2e9) == {"mfu": 0.25, "mfu_valid": True}
    assert format_mfu(mfu(0.5e9, 2e9)) == "MFU 25.0%"
    assert mfu(2e9, 2e9)["mfu_valid"]  # the peak itself is reachable
    over = mfu(2.042e9, 2e9)
    assert over == {"mfu": pytest.approx(1.021), "mfu_valid": False}
    assert format_mfu(over) == "MFU n/a (measurement failed: >100%)"


def test_the_peak_is_the_best_probe_or_the_datasheet():
    from vlguard_jax.bench.peak import PeakProbes, datasheet_peak

    rates = iter([1e9, 3e9, 2e9])
    probes = PeakProbes(lambda: {"flops_per_s": next(rates)})
    assert [probes.take() for _ in range(3)] == [1e9, 3e9, 2e9]
    assert probes.reference(None) == {"flops_per_s": 3e9, "source": "best of 3 matmul probes"}
    assert probes.reference(989e12) == {"flops_per_s": 989e12, "source": "datasheet"}
    # the kinds devices report (v5p's is "TPU v5")
    kinds = {"NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H100 PCIe": 756e12, "NVIDIA H100 NVL": 835e12,
             "NVIDIA H200": 989e12, "NVIDIA GH200 480GB": 989e12, "NVIDIA A100-SXM4-40GB": 312e12,
             "TPU v5 lite": 197e12, "TPU v5": 459e12, "TPU v6 lite": 918e12, "TPU v4": 275e12, "cpu": None}
    assert {kind: datasheet_peak(kind) for kind in kinds} == kinds


def test_run_divides_by_the_best_probe_and_flags_mfu_over_100_percent(tmp_path, monkeypatch, capsys):
    """A loaded first probe (1 GFLOP/s) would put both steps over 100%; against the best probe (2.5) LoRA's is
    valid and the full step's (3 GFLOP/s of model FLOPs) is flagged."""
    from vlguard_jax.bench import run as bench_run

    def train(size, mode, torch_side, repeats):
        flops = {"lora": 2e9, "full": 3e9}[mode]
        return {"tokens_per_s": 1.0, "step_s": 1.0, "compile_s": 0.0, "model_flops_per_s": flops,
                "torch": {"tokens_per_s": 1.0, "model_flops_per_s": 1e9}, "ratio_vs_torch": 1.0}

    rates = iter([1e9, 2.5e9])
    monkeypatch.setattr(bench_run, "_train", train)
    monkeypatch.setattr(bench_run, "measured_matmul_peak",
                        lambda: {"flops_per_s": next(rates), "dtype": "float32", "size": 0})
    monkeypatch.setattr(bench_run, "RATIO_SIZE", "tiny")
    out = tmp_path / "bench.json"
    bench_run.run(["tiny"], out, repeats=1, decode_batches=(), pipeline=False, eval_workload=False, attack=False)
    results = json.loads(out.read_text())
    assert results["peak"]["probes_flops_per_s"] == [1e9, 2.5e9]
    assert results["peak"]["mfu_peak_flops_per_s"] == 2.5e9
    train = results["sizes"]["tiny"]["train"]
    assert train["lora"]["mfu"] == pytest.approx(0.8) and train["lora"]["mfu_valid"]
    assert train["full"]["mfu"] == pytest.approx(1.2) and not train["full"]["mfu_valid"]
    assert train["full"]["torch"]["mfu"] == pytest.approx(0.4) and train["full"]["torch"]["mfu_valid"]
    assert results["mfu"]["full_train_step_valid"] is False and results["mfu"]["lora_train_step"] == pytest.approx(0.8)
    printed = capsys.readouterr().out
    assert " tiny full train: MFU n/a (measurement failed: >100%) | torch MFU 40.0%" in printed
    assert " tiny lora train: MFU 80.0% | torch MFU 40.0%" in printed
