"""`vlguard-jax attack`: a PGD visual jailbreak of a model (Qi et al.), resumable, on any mesh; with `--grid`, the
robustness table of several models (attacked at each ε, then evaluated with the clean and each adversarial image)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlguard_jax.cli.common import DTYPES, add_distributed_arguments, distributed

PROTOCOL_BY_LAYOUT = {"llava": "vlguard", "minigpt_v2": "vlguard_minigptv2"}


def register(commands: argparse._SubParsersAction) -> None:
    attack = commands.add_parser(
        "attack", help="craft an adversarial image by PGD on its pixels (white-box visual jailbreak); re-run to resume")
    attack.add_argument("--model", required=True, action="append",
                        help="checkpoint directory or training workdir, local or gs://…; with --grid, NAME=PATH, "
                             "once per model (e.g. base=… and vlguard=…)")
    attack.add_argument("--corpus", required=True,
                        help="target sentences: CSV (first column, no header) or JSONL ('text' per line)")
    attack.add_argument("--image", default="noise",
                        help="initial image file, brought to the model's input size by its processor (default: "
                             "noise, a uniformly random image)")
    attack.add_argument("--epsilon", default="16/255",
                        help="L∞ budget around the initial image: 16/255, 32/255, 64/255, a number in (0, 1], or "
                             "unconstrained (default 16/255); with --grid, comma-separated")
    attack.add_argument("--alpha", default="1/255", help="step size of each signed-gradient step (default 1/255)")
    attack.add_argument("--steps", type=int, default=5000, help="PGD steps (default 5000, as upstream)")
    attack.add_argument("--batch", type=int, default=8,
                        help="targets per step, a multiple of the mesh's data × fsdp (default 8, as upstream)")
    attack.add_argument("--prompt", default="", help="text beside the image in the user turn (default none)")
    attack.add_argument("--protocol", choices=("vlguard", "vlguard_minigptv2", "llava"),
                        help="the prompt template and image processing of the attack and the grid's evaluations "
                             "(default: vlguard for LLaVA, vlguard_minigptv2 for MiniGPT-v2; with --grid, vlguard)")
    attack.add_argument("--seed", type=int, default=0, help="the random start and the minibatch draws")
    attack.add_argument("--max-target-tokens", type=int, default=128, help="longer targets are cut (counted)")
    attack.add_argument("--save-every", type=int, default=100, help="checkpoint and PNG every N steps")
    attack.add_argument("--log-every", type=int, default=10, help="loss to metrics.jsonl / TensorBoard every N steps")
    attack.add_argument("--loss-chunk", type=int, default=0,
                        help="vocabulary projection this many positions at a time (0: all at once)")
    attack.add_argument("--dtype", choices=DTYPES, default="bfloat16",
                        help="compute dtype of the frozen model (the pixels and their gradient stay fp32)")
    attack.add_argument("--mesh", help="e.g. data=2,fsdp=4,tensor=1 (default: fsdp over as many devices as --batch "
                                       "divides over, tensor over the rest)")
    attack.add_argument("--out", required=True, help="output directory, a local folder or gs://…")
    attack.add_argument("--overwrite", action="store_true", help="clear an attack with other settings from --out")
    grid = attack.add_argument_group("robustness table (--grid)")
    grid.add_argument("--grid", action="store_true",
                      help="attack every --model at every --epsilon, evaluate each with the clean image and every "
                           "adversarial image; OUT/robustness.{md,json,png}")
    grid.add_argument("--benchmark", help="--grid: the benchmark(s) scored, comma-separated (e.g. advbench)")
    grid.add_argument("--data", action="append", type=Path, help="--grid: one per benchmark, as for eval")
    grid.add_argument("--transfer-from", metavar="NAME",
                      help="--grid: also show every other model this model's adversarial images")
    grid.add_argument("--eval-batch-size", type=int, default=8, help="--grid: the evaluation engine's slots")
    grid.add_argument("--max-new-tokens", type=int, help="--grid: the evaluations' answer length (default: the "
                                                          "protocol's)")
    add_distributed_arguments(attack)
    attack.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from vlguard_jax.attack.pgd import Budget, parse_epsilon

    try:
        alpha = parse_epsilon(args.alpha)
        budgets = tuple(Budget(parse_epsilon(e), alpha) for e in args.epsilon.split(","))
        models = _models(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.grid and len(budgets) > 1:
        print("error: several --epsilon values make a grid: add --grid", file=sys.stderr)
        return 2
    distributed(args)
    from vlguard_jax.attack.run import AttackConfig
    from vlguard_jax.evaluate.runner import eval_mesh

    config = AttackConfig(args.corpus, budgets[0], args.image, args.steps, args.batch, args.prompt, args.seed,
                          args.max_target_tokens, args.save_every, args.log_every, args.loss_chunk)
    mesh = eval_mesh(args.mesh, args.batch)
    if args.grid:
        return _grid(args, models, budgets, config, mesh)
    return _single(args, models[""], config, mesh)


def _models(args: argparse.Namespace) -> dict[str, str]:
    """`--model`: one path, or with --grid NAME=PATH pairs."""
    if not args.grid:
        if len(args.model) > 1:
            raise ValueError("several --model values make a grid: add --grid (and name each: NAME=PATH)")
        return {"": args.model[0]}
    pairs = [value.partition("=") for value in args.model]
    if any(not name or not path for name, _, path in pairs):
        raise ValueError("with --grid, name each model: --model NAME=PATH")
    if args.benchmark is None or not args.data or len(args.data) != len(args.benchmark.split(",")):
        raise ValueError("--grid scores a benchmark: give --benchmark and one --data per benchmark")
    if args.transfer_from is not None and args.transfer_from not in {name for name, _, _ in pairs}:
        raise ValueError(f"--transfer-from {args.transfer_from}: not one of the --model names")
    return {name: path for name, _, path in pairs}


def _single(args: argparse.Namespace, model_path: str, config, mesh) -> int:
    import jax
    import jax.numpy as jnp

    from vlguard_jax.attack.run import run_attack, settings
    from vlguard_jax.train.trained import load_model_and_tokenizer

    from vlguard_jax.evaluate.protocols import protocol

    model, tokenizer = load_model_and_tokenizer(model_path, jnp.dtype(args.dtype), mesh=mesh)
    chosen = protocol(args.protocol or PROTOCOL_BY_LAYOUT.get(model.config.layout, "vlguard"))
    record = settings(model_path, config, chosen, args.dtype)
    result = run_attack(model, tokenizer, config, args.out, chosen, mesh, record, overwrite=args.overwrite)
    if jax.process_index() == 0:
        print(f"loss on the corpus: {result['loss_initial_image']:.4f} (initial image) → "
              f"{result['loss_attacked']:.4f} (attacked) / {result['loss_attacked_8bit']:.4f} (its 8-bit PNG, "
              f"{args.out}/adversarial.png)")
    return 0


def _grid(args: argparse.Namespace, models: dict[str, str], budgets, config, mesh) -> int:
    import jax

    from vlguard_jax import storage
    from vlguard_jax.attack.grid import Grid, robustness_grid
    from vlguard_jax.evaluate import benchmarks
    from vlguard_jax.evaluate.protocols import protocol
    from vlguard_jax.evaluate.runner import EvalConfig

    names = args.benchmark.split(",")
    suite = [b for name, data in zip(names, args.data) for b in benchmarks.load(name, data)]
    labels = [benchmarks.spec(name).label(5, 0) for name in names]
    files = [path for data in args.data for path in benchmarks.paths(data)]
    chosen = protocol(args.protocol or "vlguard", max_new_tokens=args.max_new_tokens)
    grid = Grid(models, {name: budgets for name in models}, config, args.transfer_from)
    robustness_grid(grid, suite, labels, files, EvalConfig(chosen, args.eval_batch_size),
                    args.out, mesh, args.dtype)
    if jax.process_index() == 0:
        print((storage.path(args.out) / "robustness.md").read_text())
    return 0
