"""Generation: the static engine (`Generator`: one batch decoded to its longest row; also next-token
log-probabilities) and the continuous one (`Engine`: slots refilled as rows finish, shared image prefixes,
several LoRA adapters over one base in one pass)."""

from vlguard_jax.generate.engine import Engine, Request
from vlguard_jax.generate.sampling import PROMPT_BUCKETS, SamplingConfig
from vlguard_jax.generate.static import Generator

__all__ = ["Engine", "Generator", "PROMPT_BUCKETS", "Request", "SamplingConfig"]
