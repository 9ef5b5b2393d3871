"""One length-bucket rule for training batches, prompts and a score-head judge's inputs."""

import math

import pytest

from vlguard_jax.buckets import bucket, powers_of_two
from vlguard_jax.data.sources import DataError


def test_the_smallest_bucket_that_holds_the_length_whatever_the_order():
    assert [bucket(n, (256, 64, 128)) for n in (1, 64, 65, 128, 129, 256)] == [64, 64, 128, 128, 256, 256]


def test_past_the_largest_bucket_is_an_error_naming_what_was_bucketed():
    with pytest.raises(DataError, match="a sample of 257 tokens exceeds the largest bucket 256"):
        bucket(257, (128, 256), "a sample")
    with pytest.raises(ValueError, match="a prompt of 5 tokens"):  # DataError is a ValueError, as before
        bucket(5, (4,))


@pytest.mark.parametrize("largest", [1, 16, 17, 200, 256, 300])
def test_powers_of_two_pad_to_the_next_power_at_least_the_smallest(largest):
    sizes = powers_of_two(16, largest)
    for n in range(1, largest + 1):
        assert bucket(n, sizes) == max(16, 2 ** math.ceil(math.log2(n)))
