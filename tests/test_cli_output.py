"""The CLI's output speaks of the run: library lines a user cannot act on are dropped, the rest still prints."""

import logging
import os
import subprocess
import sys

import pytest

from train_fixtures import write_config
from vlguard_jax.cli.quiet import quiet_libraries

# A newcomer's install: no torch (find_spec and import both fail, as datasets and transformers check each way).
NO_TORCH = """
import sys


class NoTorch:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, name):
        return getattr(self.finder, name)


sys.meta_path[:] = [NoTorch(f) if hasattr(f, "find_spec") else f for f in sys.meta_path]
from vlguard_jax.cli import main

assert main(["train", "--config", sys.argv[1], "--workdir", sys.argv[2], "train.max_steps=2",
             "train.checkpoint_every=2"]) == 0
sys.exit(main(["export", "--workdir", sys.argv[2], "--out", sys.argv[3]]))
"""


@pytest.mark.slow
def test_train_and_export_print_no_library_noise(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_VERBOSITY"}  # as a newcomer's shell has it
    env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run([sys.executable, "-c", NO_TORCH, str(write_config(tmp_path)), str(tmp_path / "run"),
                             str(tmp_path / "merged")], env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "finished at step 2/2" in output and f"wrote merged export of {tmp_path / 'run'}" in output
    for noise in ("PyTorch was not found", "read only", "read_only"):
        assert noise not in output, output[-3000:]


def test_filters_drop_only_the_named_lines(caplog):
    """The same loggers' other lines still print, so a filter that swallowed a whole logger would fail here."""
    quiet_libraries()
    quiet_libraries()  # a second `main` in one process installs nothing twice
    assert sum(type(f).__name__ == "_Drop" for f in logging.getLogger("absl").filters) == 1
    from absl import logging as absl_logging

    loggers = [logging.getLogger("transformers"), absl_logging.get_absl_logger()]
    levels = [logger.level for logger in loggers]
    for logger in loggers:  # once imported, transformers' logger propagates nothing and may pass errors only
        logger.addHandler(caplog.handler)
        logger.setLevel(logging.WARNING)
    try:
        logging.getLogger("transformers").warning("PyTorch was not found. Models won't be available")
        logging.getLogger("transformers").warning("tokenizer has no pad token")
        absl_logging.warning("Given directory is read only=%s", "/tmp/run/checkpoints")
        absl_logging.warning("CheckpointManagerOptions.read_only=True, setting max_to_keep=None.")
        absl_logging.warning("Waiting for checkpoint %s", 4)
    finally:
        for logger, level in zip(loggers, levels):
            logger.removeHandler(caplog.handler)
            logger.setLevel(level)
    assert {r.getMessage() for r in caplog.records} == {"tokenizer has no pad token", "Waiting for checkpoint 4"}
