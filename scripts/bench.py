"""Same as `vlguard-jax bench` (see `vlguard-jax bench --help`)."""

import sys

from vlguard_jax.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
