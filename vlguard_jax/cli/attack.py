"""`vlguard-jax attack`: a PGD visual jailbreak of a model (Qi et al.), resumable, on any mesh."""

from __future__ import annotations

import argparse
import sys

from vlguard_jax import storage
from vlguard_jax.cli.common import DTYPES, add_distributed_arguments, distributed

PROTOCOL_BY_LAYOUT = {"llava": "vlguard", "minigpt_v2": "vlguard_minigptv2"}


def register(commands: argparse._SubParsersAction) -> None:
    attack = commands.add_parser(
        "attack", help="craft an adversarial image by PGD on its pixels (white-box visual jailbreak); re-run to resume")
    attack.add_argument("--model", required=True, type=storage.path,
                        help="checkpoint directory or training workdir, local or gs://…")
    attack.add_argument("--corpus", required=True,
                        help="target sentences: CSV (first column, no header) or JSONL ('text' per line)")
    attack.add_argument("--image", default="noise",
                        help="initial image file, brought to the model's input size by its processor (default: "
                             "noise, a uniformly random image)")
    attack.add_argument("--epsilon", default="16/255",
                        help="L∞ budget around the initial image: 16/255, 32/255, 64/255, a number in (0, 1], or "
                             "unconstrained (default 16/255)")
    attack.add_argument("--alpha", default="1/255", help="step size of each signed-gradient step (default 1/255)")
    attack.add_argument("--steps", type=int, default=5000, help="PGD steps (default 5000, as upstream)")
    attack.add_argument("--batch", type=int, default=8,
                        help="targets per step, a multiple of the mesh's data × fsdp (default 8, as upstream)")
    attack.add_argument("--prompt", default="", help="text beside the image in the user turn (default none)")
    attack.add_argument("--protocol", choices=("vlguard", "vlguard_minigptv2", "llava"),
                        help="the prompt template and image processing (default: vlguard for LLaVA, "
                             "vlguard_minigptv2 for MiniGPT-v2, as the attacked model is evaluated)")
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
    add_distributed_arguments(attack)
    attack.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from vlguard_jax.attack.pgd import Budget, parse_epsilon

    try:
        budget = Budget(parse_epsilon(args.epsilon), parse_epsilon(args.alpha))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    distributed(args)
    import jax
    import jax.numpy as jnp

    from vlguard_jax.attack.run import AttackConfig, run_attack, settings
    from vlguard_jax.evaluate.protocols import protocol
    from vlguard_jax.evaluate.runner import eval_mesh
    from vlguard_jax.train.trained import load_model_and_tokenizer

    config = AttackConfig(args.corpus, budget, args.image, args.steps, args.batch, args.prompt, args.seed,
                          args.max_target_tokens, args.save_every, args.log_every, args.loss_chunk)
    mesh = eval_mesh(args.mesh, args.batch)
    model, tokenizer = load_model_and_tokenizer(args.model, jnp.dtype(args.dtype), mesh=mesh)
    chosen = protocol(args.protocol or PROTOCOL_BY_LAYOUT.get(model.config.layout, "vlguard"))
    record = settings(args.model, config, chosen, args.dtype)
    result = run_attack(model, tokenizer, config, args.out, chosen, mesh, record, overwrite=args.overwrite)
    if jax.process_index() == 0:
        print(f"loss on the corpus: {result['loss_initial_image']:.4f} (initial image) → {result['loss_attacked']:.4f} "
              f"(attacked) / {result['loss_attacked_8bit']:.4f} (its 8-bit PNG, {args.out}/adversarial.png)")
    return 0
