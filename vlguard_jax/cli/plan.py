"""`vlguard-jax plan`: per-device memory and FLOPs of a config's train step, compiled ahead of time."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlguard_jax import storage


def register(commands: argparse._SubParsersAction) -> None:
    from vlguard_jax.models.config import KNOWN_ARCHITECTURES

    planner = commands.add_parser("plan", help="per-device memory and FLOPs of a config's train step (AOT, abstract)")
    source = planner.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path)
    source.add_argument("--audit", action="store_true",
                        help="instead of a train step: the llama_guard judge's scoring prefill of a data audit "
                             "(data audit --threshold) for --architecture (llama-guard-3-8b, …); prints json")
    target = planner.add_mutually_exclusive_group(required=True)
    target.add_argument("--devices", type=int, help="devices to plan for (virtual CPUs are fine)")
    target.add_argument("--topology", help="a TPU slice, compiled for by libtpu on this machine: v5e:2x4, "
                                           "v5p:2x2x2, v6e:2x4, … (pip install -e \".[tpu]\")")
    planner.add_argument("--max-batch", action="store_true",
                         help="with --topology: the largest per-device batch that fits (one compile per probe)")
    planner.add_argument("--mesh", help="e.g. data=1,fsdp=8,tensor=1 (default: the config's)")
    planner.add_argument("--architecture", help="a known shape instead of model.path: "
                                                 + ", ".join(KNOWN_ARCHITECTURES))
    planner.add_argument("--out", type=storage.path, help="write the plan as json")
    planner.add_argument("--batch", type=int, default=64, help="with --audit: the audit's --batch-size (default 64)")
    planner.add_argument("--prompt-length", type=int, default=512,
                         help="with --audit: the prompts' padded length, a bucket (default 512)")
    planner.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    planner.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import os

    import jax

    if args.topology is not None:
        if not os.environ.get("JAX_PLATFORMS"):  # the slice is compiled for, never run: leave local TPUs alone
            jax.config.update("jax_platforms", "cpu")
    else:
        jax.config.update("jax_num_cpu_devices", args.devices)  # before the first device query: virtual CPUs
    from vlguard_jax.config import load_config
    from vlguard_jax.plan import plan
    from vlguard_jax.topology import TopologyError

    if args.max_batch and args.topology is None:
        print("error: --max-batch needs --topology (only libtpu's compile says what does not fit)", file=sys.stderr)
        return 2
    if args.topology is None and jax.default_backend() == "cpu" and jax.device_count() < args.devices:
        print(f"error: only {jax.device_count()} devices are available", file=sys.stderr)
        return 2
    if args.audit:
        return _audit(args)
    overrides = list(args.overrides)
    if args.mesh:
        overrides += [f"mesh.{part}" for part in args.mesh.split(",")]
    try:
        result = plan(load_config(args.config, overrides), args.topology or args.devices, args.architecture,
                      max_batch=args.max_batch, log=lambda line: print(f"probe: {line}", flush=True))
    except TopologyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    gib = lambda b: f"{b / 2**30:.2f} GiB"
    print("attention: " + "; ".join(f"{part} {v['implementation']}" + (f" ({v['fallback_reason']})"
                                                                        if v["fallback_reason"] else "")
                                    for part, v in result["attention_parts"].items()))
    for name, value in result["per_device_bytes"].items():
        if value is not None:
            print(f"{name:>18}: {gib(value)} per device")
    if "fits" in result:
        where = f"{result['topology'] or result['devices']} ({result['device_kind']})"
        print(f"{where}: fits" if result["fits"] else f"{where}: does not fit: {result['compiler_message']}")
    if result["fits_hbm_gb"]:
        print("fits in HBM (GB): " + ", ".join(f"{gb}: {'yes' if ok else 'no'}"
                                              for gb, ok in result["fits_hbm_gb"].items()))
    print(f"model FLOPs per step: {result['model_flops_per_step']:.3e} ({result['model_flops_per_token']:.3e}/token)")
    images = (f", {result['image_crops_per_step']} image crops through the tower (padded slots included), up to "
              f"{result['max_image_tokens']} image tokens a row" if result["image_crops_per_step"] else "")
    print(f"per step: {result['tokens_per_step']} tokens (seq {result['seq_len']}){images}")
    for reshard in result["involuntary_rematerializations"]:
        print(f"warning: XLA replicates a tensor whole to reshard it (involuntary full rematerialization): {reshard}")
    if "max_per_device_batch" in result:
        print(f"largest per-device batch that fits at seq {result['seq_len']}: {result['max_per_device_batch']} "
              f"(rows per device per micro-batch)")
    if args.out:
        storage.write_json(args.out, result)
    return 0


def _audit(args: argparse.Namespace) -> int:
    """`plan --audit`: the judge's prefill (`vlguard_jax.plan_audit`), its plan printed as json."""
    import json

    from vlguard_jax.plan_audit import plan_audit
    from vlguard_jax.topology import TopologyError

    if args.architecture is None or args.mesh or args.overrides:
        print("error: --audit plans a judge by --architecture (e.g. llama-guard-3-8b), with no --mesh or KEY=VALUE",
              file=sys.stderr)
        return 2
    try:
        result = plan_audit(args.architecture, args.topology or args.devices, args.batch, args.prompt_length,
                            max_batch=args.max_batch, log=lambda line: print(f"probe: {line}", file=sys.stderr,
                                                                             flush=True))
    except TopologyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1))
    if args.out:
        storage.write_json(args.out, result)
    return 0
