"""`python -m vlguard_jax.cli`: the same as `vlguard-jax`."""

import sys

from vlguard_jax.cli import main

sys.exit(main())
