"""The benchmark's two stacks are handed the same work: same weights give the same loss on its batch."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from vlguard_jax.bench import theirs  # noqa: E402
from vlguard_jax.bench.shapes import SIZES  # noqa: E402
from vlguard_jax.bench.workload import train_batch  # noqa: E402
from vlguard_jax.checkpoints.hf import load_pretrained  # noqa: E402
from vlguard_jax.train.step import chunked_cross_entropy_sums  # noqa: E402


def test_bench_batch_gives_both_stacks_the_same_loss(tmp_path):
    size = SIZES["tiny"]
    hf = theirs.build(size).eval()
    hf.save_pretrained(tmp_path)
    model = load_pretrained(tmp_path)
    batch = train_batch(size.model, rows=2, length=64)
    assert (batch["input_ids"] == size.model.image_token_id).sum() == 2 * size.model.num_image_tokens
    assert (batch["labels"] != -100).sum() > 0

    with torch.no_grad():
        theirs_loss = hf(input_ids=torch.tensor(batch["input_ids"]).long(),
                         attention_mask=torch.tensor(batch["attention_mask"]),
                         pixel_values=torch.tensor(batch["pixel_values"]),
                         labels=torch.tensor(batch["labels"]).long()).loss.item()
    hidden, _ = model.hidden_states(batch["input_ids"], batch["pixel_values"], batch["attention_mask"],
                                    row_images=True)
    nll, count = chunked_cross_entropy_sums(hidden, batch["labels"], model.language_model.logits, 16)
    np.testing.assert_allclose(float(nll / count), theirs_loss, rtol=1e-5)
