"""Runs the benchmark: matmul peak, train steps (LoRA, full), decode, evaluation workload, attack step, input
pipeline; prints a table and writes JSON after every measurement (a long run that dies keeps what it measured).

Model FLOPs come from `plan.train_flops` (stated there: frozen-base LoRA has no weight-gradient matmuls);
MFU divides them by the step time and the peak (`peak`: the datasheet's on an accelerator, else the best matmul
probe, probed before and after each size). XLA's cost analysis is reported beside them, but it counts a
scanned layer stack's body once, so it undercounts whole models by about the number of layers.
"""

from __future__ import annotations

import datetime
import gc
import importlib.util
import os
import platform

import jax

from vlguard_jax import storage
from vlguard_jax.bench import attack_workload
from vlguard_jax.bench import eval_workload as eval_bench
from vlguard_jax.bench import ours
from vlguard_jax.bench.peak import PeakProbes, compute_dtype, datasheet_peak, format_mfu, measured_matmul_peak, mfu
from vlguard_jax.bench.pipeline import samples_per_second
from vlguard_jax.bench.shapes import SIZES, BenchSize
from vlguard_jax.bench.timing import alternate
from vlguard_jax.plan import train_flops

DECODE_PROMPT = 600
DECODE_NEW_TOKENS = 256
RATIO_SIZE = "small"  # the size whose figures fill the `ratios` and `mfu` summaries
EVAL_SIZES = ("tiny", "small")  # the sizes the evaluation workload runs on
EVAL_PROMPTS = 12
EVAL_SLOTS = 4
EVAL_ADAPTER_PROMPTS = 6
EVAL_REPEATS_CPU = 1  # the evaluation workload's timed repeats on a CPU, at most (each is minutes there)
ATTACK_SIZES = ("tiny", "small")  # the sizes the attack step runs on


def _write(out: storage.PathLike | None, results: dict) -> None:
    if out is not None:
        storage.write_json(out, results)


def _skip_reason(size: BenchSize, mode: str) -> str | None:
    if size.accelerator_only and jax.default_backend() == "cpu":
        return "a 7B/13B-shaped step takes many minutes on a CPU: run it on an accelerator"
    stats = jax.devices()[0].memory_stats() or {}
    limit = stats.get("bytes_limit")
    # Both stacks are resident: bf16 weights each, plus fp32 weights, gradients and two Adam moments when full.
    need = size.parameters * (2 + 2 + (32 if mode == "full" else 0))
    if limit is not None and need > 0.9 * limit:
        return f"needs about {need / 1e9:.0f} GB for both stacks, the device has {limit / 1e9:.0f} GB"
    return None


def _train(size: BenchSize, mode: str, torch_side, repeats: int) -> dict:
    run_ours, facts = ours.train_step(size, mode, compute_dtype())
    run_theirs = torch_side.train_step(size, mode) if torch_side else None
    ours_s, theirs_s = alternate(run_ours, run_theirs, repeats)
    tokens = size.train_rows * size.train_len
    flops = train_flops(size.model, mode, size.train_rows, size.train_len, size.lora_rank, size.lora_targets)
    result = {"rows": size.train_rows, "seq_len": size.train_len, "step_s": ours_s, "tokens_per_s": tokens / ours_s,
              "compile_s": facts["compile_s"], "model_flops_per_token": flops / tokens,
              "model_flops_per_step": flops, "xla_flops_per_step_scan_bodies_once": facts["xla_flops_scan_bodies_once"],
              "model_flops_per_s": flops / ours_s}
    if theirs_s is not None:
        result["torch"] = {"step_s": theirs_s, "tokens_per_s": tokens / theirs_s, "model_flops_per_s": flops / theirs_s}
        result["ratio_vs_torch"] = theirs_s / ours_s
    return result


def _decode(size: BenchSize, rows: int, torch_side, repeats: int) -> dict:
    run_ours, facts = ours.decode(size, rows, DECODE_PROMPT, DECODE_NEW_TOKENS, compute_dtype())
    run_theirs, _ = torch_side.decode(size, rows, DECODE_PROMPT, DECODE_NEW_TOKENS) if torch_side else (None, None)
    ours_s, theirs_s = alternate(run_ours, run_theirs, repeats)
    tokens = rows * DECODE_NEW_TOKENS
    first_call_s = facts.pop("first_call_s")
    result = {"batch": rows, "prompt_tokens": DECODE_PROMPT, "new_tokens": DECODE_NEW_TOKENS,
              "seconds": ours_s, "tokens_per_s": tokens / ours_s, "compile_s": max(first_call_s - ours_s, 0.0),
              **facts}
    if theirs_s is not None:
        result["torch"] = {"seconds": theirs_s, "tokens_per_s": tokens / theirs_s}
        result["ratio_vs_torch"] = theirs_s / ours_s
    return result


def _eval_workload(size: BenchSize, torch_side, repeats: int, prompts: int, slots: int,
                   adapter_prompts: int) -> dict:
    if jax.default_backend() == "cpu":
        repeats = min(repeats, EVAL_REPEATS_CPU)
    return eval_bench.measure(size, compute_dtype(), torch_side, repeats, prompts, slots, adapter_prompts)


def _torch_side():
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("peft") is None:
        return None
    from vlguard_jax.bench import theirs

    return theirs


def run(sizes: list[str], out: storage.PathLike | None, repeats: int = 3, decode_batches: tuple[int, ...] = (1, 32),
        pipeline: bool = True, eval_workload: bool = True, eval_prompts: int = EVAL_PROMPTS,
        eval_slots: int = EVAL_SLOTS, eval_adapter_prompts: int = EVAL_ADAPTER_PROMPTS, attack: bool = True) -> dict:
    """`eval_*`: the evaluation workload (`bench.eval_workload`) on the EVAL_SIZES among `sizes`: its prompts,
    the slots (= the static engines' batch size; each adapter's in the multi-adapter run) and the prompts each
    of the K adapters evaluates. `attack`: the attack's PGD step beside upstream's (`bench.attack_workload`) on
    the ATTACK_SIZES among `sizes`."""
    device = jax.devices()[0]
    torch_side = _torch_side()
    results = {"date": datetime.date.today().isoformat(), "backend": jax.default_backend(),
               "device": device.device_kind, "host": f"{platform.processor() or platform.machine()}, "
                                                     f"{os.cpu_count()} cores", "jax": jax.__version__,
               "torch": torch_side.torch.__version__ if torch_side else "not installed: pip install -e '.[test]'",
               "compute_dtype": compute_dtype().name, "repeats": repeats, "sizes": {}}
    probes = PeakProbes(measured_matmul_peak)
    datasheet = datasheet_peak(device.device_kind)
    _probe(probes, datasheet, results)
    _write(out, results)
    for name in sizes:
        size = SIZES[name]
        entry = results["sizes"].setdefault(name, {"parameters": size.parameters, "train": {}, "decode": {}})
        for mode in ("lora", "full"):
            reason = _skip_reason(size, mode)
            entry["train"][mode] = {"skipped": reason} if reason else _train(size, mode, torch_side, repeats)
            _print_train(name, mode, entry["train"][mode])
            _write(out, results)
            gc.collect()
        for rows in decode_batches:
            reason = _skip_reason(size, "decode")
            entry["decode"][f"batch_{rows}"] = {"skipped": reason} if reason else _decode(size, rows, torch_side,
                                                                                         repeats)
            _print_decode(name, entry["decode"][f"batch_{rows}"], rows)
            _write(out, results)
            gc.collect()
        if eval_workload and name in EVAL_SIZES:
            reason = _skip_reason(size, "decode")
            entry["eval_workload"] = {"skipped": reason} if reason else _eval_workload(
                size, torch_side, repeats, eval_prompts, eval_slots, eval_adapter_prompts)
            _print_eval(name, entry["eval_workload"])
            _write(out, results)
            gc.collect()
        if attack and name in ATTACK_SIZES:
            reason = _skip_reason(size, "attack")
            entry["attack_step"] = {"skipped": reason} if reason else attack_workload.measure(
                size, compute_dtype(), torch_side, repeats)
            _print_attack(name, entry["attack_step"])
            _write(out, results)
            gc.collect()
        _probe(probes, datasheet, results)
        _write(out, results)
    if pipeline:
        results["pipeline"] = samples_per_second()
        _print(f"input pipeline: {results['pipeline']['samples_per_s']:.0f} samples/s at 336 px")
    results["ratios"], results["mfu"] = _summaries(results["sizes"].get(RATIO_SIZE, {}), results["peak"])
    _print_mfu(results)
    _write(out, results)
    return results


def _probe(probes: PeakProbes, datasheet: float | None, results: dict) -> None:
    """Takes a peak probe and sets every train figure's MFU against the peak that now holds."""
    flops = probes.take()
    _print(f"matmul peak probe {len(probes.flops_per_s)}: {flops / 1e9:.1f} GFLOP/s ({probes.last['dtype']}, "
           f"{probes.last['size']}³)")
    reference = probes.reference(datasheet)
    results["peak"] = {"probes_flops_per_s": probes.flops_per_s, "matmul": probes.last,
                       "datasheet_flops_per_s": datasheet, "mfu_peak_flops_per_s": reference["flops_per_s"],
                       "mfu_peak_source": reference["source"]}
    for entry in results["sizes"].values():
        for figures in entry["train"].values():
            for side in (figures, figures.get("torch")):
                if side and "model_flops_per_s" in side:
                    side.update(mfu(side["model_flops_per_s"], reference["flops_per_s"]))


def _summaries(entry: dict, peak: dict) -> tuple[dict, dict]:
    train, decode = entry.get("train", {}), entry.get("decode", {})
    evaluation = entry.get("eval_workload", {})
    ratios = {"lora_train_step_vs_torch": train.get("lora", {}).get("ratio_vs_torch"),
              "full_train_step_vs_torch": train.get("full", {}).get("ratio_vs_torch"),
              "decode_vs_torch": {k: v.get("ratio_vs_torch") for k, v in decode.items()},
              "eval_workload_vs_static": evaluation.get("ratio_vs_static"),
              "eval_workload_vs_torch": evaluation.get("ratio_vs_torch"),
              "multi_adapter_vs_sequential": evaluation.get("multi_adapter", {}).get("ratio_vs_sequential"),
              "attack_step_vs_torch": entry.get("attack_step", {}).get("ratio_vs_torch")}
    summary = {"peak_flops_per_s": peak["mfu_peak_flops_per_s"], "peak_source": peak["mfu_peak_source"]}
    for mode in ("lora", "full"):
        summary[f"{mode}_train_step"] = train.get(mode, {}).get("mfu")
        summary[f"{mode}_train_step_valid"] = train.get(mode, {}).get("mfu_valid")
    return ratios, summary


def _print(line: str) -> None:
    print(line, flush=True)


def _print_train(name: str, mode: str, r: dict) -> None:
    if "skipped" in r:
        return _print(f"{name:>5} {mode:<4} train: skipped ({r['skipped']})")
    torch_part = (f" | torch {r['torch']['tokens_per_s']:8.1f} tok/s | ours/torch {r['ratio_vs_torch']:.2f}×"
                  if "torch" in r else "")
    _print(f"{name:>5} {mode:<4} train: {r['tokens_per_s']:8.1f} tok/s, step {r['step_s']:.3f} s "
           f"(compile {r['compile_s']:.1f} s){torch_part}")


def _print_mfu(results: dict) -> None:
    """MFU of every train step against the run's final peak (printed last: a later probe may raise the best)."""
    peak = results["peak"]
    _print(f"MFU against {peak['mfu_peak_source']}: {peak['mfu_peak_flops_per_s'] / 1e9:.1f} GFLOP/s")
    for name, entry in results["sizes"].items():
        for mode, r in entry["train"].items():
            if "mfu" in r:
                torch_part = f" | torch {format_mfu(r['torch'])}" if "torch" in r else ""
                _print(f"{name:>5} {mode:<4} train: {format_mfu(r)}{torch_part}")


def _print_decode(name: str, r: dict, rows: int) -> None:
    if "skipped" in r:
        return _print(f"{name:>5} decode b{rows}: skipped ({r['skipped']})")
    torch_part = (f" | torch {r['torch']['tokens_per_s']:8.1f} tok/s | ours/torch {r['ratio_vs_torch']:.2f}×"
                  if "torch" in r else "")
    traffic = ("the step scans its layers: bytes per token not counted" if r["bytes_per_token"] is None else
               f"{r['bytes_per_token'] / 1e6:.0f} MB/token = {r['bytes_per_token_vs_weights_and_cache']:.2f}× "
               f"weights + KV cache")
    _print(f"{name:>5} decode b{rows}: {r['tokens_per_s']:8.1f} tok/s (compile {r['compile_s']:.1f} s), "
           f"{traffic}{torch_part}")


def _print_attack(name: str, r: dict) -> None:
    if "skipped" in r:
        return _print(f"{name:>5} attack step: skipped ({r['skipped']})")
    torch_part = (f" | torch {r['torch']['step_s']:.3f} s | ours/torch {r['ratio_vs_torch']:.2f}×"
                  if "torch" in r else "")
    _print(f"{name:>5} attack step: {r['step_s']:.3f} s for {r['rows']} rows × {r['seq_len']} tokens "
           f"(compile {r['compile_s']:.1f} s){torch_part}")


def _print_eval(name: str, r: dict) -> None:
    if "skipped" in r:
        return _print(f"{name:>5} eval workload: skipped ({r['skipped']})")

    def line(label: str, f: dict, tail: str = "") -> None:
        _print(f"{name:>5} eval {label}: {f['tokens_per_s']:8.1f} tok/s, {f['seconds']:.1f} s for "
               f"{f['generated_tokens']} tokens of {f['prompts']} prompts (compile {f['compile_s']:.1f} s){tail}")

    line(f"continuous {r['slots']} slots", r["continuous"])
    line(f"static b{r['batch_size']}", r["static"], f" | continuous/static {r['ratio_vs_static']:.2f}×")
    if "torch" in r:
        line(f"torch generate b{r['batch_size']}", r["torch"], f" | continuous/torch {r['ratio_vs_torch']:.2f}×")
    m = r["multi_adapter"]
    line(f"{m['K']} adapters one pass, {m['one_pass_slots']} slots", m["one_pass"],
         f" | one pass/sequential {m['ratio_vs_sequential']:.2f}×")
    line(f"{m['K']} adapters sequential, {m['K']} × {m['sequential_slots']} slots", m["sequential"])
