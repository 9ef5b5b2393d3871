"""Benchmarks as lists of prompts, read from the public file formats at paths the user gives.

A benchmark name may stand for several parts (subsets): `vlguard` → its three test subsets, `advbench` → vanilla
and suffix injection, `xstest` → safe and unsafe prompts. Each family's module registers its benchmarks
(`registry.register`) when imported below.
"""

import importlib

from vlguard_jax.evaluate.benchmarks.base import Benchmark, Prompt
from vlguard_jax.evaluate.benchmarks.registry import REGISTRY, Spec, load, paths, spec
from vlguard_jax.evaluate.benchmarks.safety import ADVBENCH_SUFFIX, FIGSTEP_PROMPT

for _family in ("safety", "vlguard_references", "mm_safetybench", "vlsafe", "jailbreakv", "siuo", "harmful_score",
                "generic", "jailbreak_llms", "visual_attack", "mmlu", "alpaca_eval",
                "tasks"):  # registers them, in listing order
    importlib.import_module(f"{__name__}.{_family}")

__all__ = ["ADVBENCH_SUFFIX", "Benchmark", "FIGSTEP_PROMPT", "Prompt", "REGISTRY", "Spec", "load",
           "paths", "spec"]
