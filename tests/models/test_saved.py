"""save_tower/load_tower (one SavedModel wrapper) and embed_ids (one batched embedding loop)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from recsampled.models import Tower, embed_ids, load_tower, save_tower


@pytest.mark.parametrize("seed", [0, 1])
def test_embed_ids_in_batches_equals_one_call(seed):
    tf.keras.utils.set_random_seed(seed)
    tower = Tower(50, 4, hidden_units=(8,), name="t")
    ids = np.random.default_rng(seed).integers(50, size=37)
    expected = tower(tf.constant(ids), training=False).numpy()
    for batch_size in (1, 5, 37, 1000):  # float32 matmuls round differently per batch shape
        np.testing.assert_allclose(embed_ids(tower, ids, batch_size=batch_size), expected,
                                   rtol=1e-5, atol=1e-6)  # fmt: skip
    np.testing.assert_allclose(embed_ids(tower, 50), tower(tf.range(50)).numpy(), rtol=1e-5,
                               atol=1e-6)  # fmt: skip
    assert embed_ids(tower, np.zeros(0, np.int64)).shape == (0, 0)


def test_embed_ids_checks_the_output_shape():
    with pytest.raises(ValueError, match=r"\[batch, embedding_dim\]"):
        embed_ids(lambda ids: tf.zeros([3]), np.arange(3))
    with pytest.raises(ValueError, match="`batch_size` must be"):
        embed_ids(lambda ids: tf.zeros([3, 2]), np.arange(3), batch_size=0)


def test_a_saved_tower_serves_the_same_embeddings(tmp_path):
    tower = Tower(7, 4, normalize=True, name="c")
    ids = tf.range(7, dtype=tf.int64)
    expected = tower(ids).numpy()
    loaded = load_tower(save_tower(tower, tmp_path / "candidate"))
    np.testing.assert_allclose(loaded(ids).numpy(), expected, rtol=1e-6)
    served = loaded.signatures["serving_default"](ids=ids)["embeddings"].numpy()
    np.testing.assert_allclose(served, expected, rtol=1e-6)
    assert loaded(ids).dtype == tf.float32
