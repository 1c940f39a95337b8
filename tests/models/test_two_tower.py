"""Tests of the towers and the two-tower model: shapes, features, fit, save/load round trips."""

from __future__ import annotations

# recsampled first: it sets TF_USE_LEGACY_KERAS before tensorflow_recommenders binds tf.keras.
import recsampled as rs

# isort: split
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_recommenders as tfrs

from recsampled.models import Tower, TwoTowerModel
from recsampled.samplers.frequency import FrequencyEstimator
from recsampled.tasks import Retrieval

NUM_USERS, NUM_ITEMS = 12, 30


def _towers(seed=0):
    rng = np.random.default_rng(seed)
    genres = (rng.uniform(size=(NUM_ITEMS, 5)) < 0.3).astype(np.float32)
    query = Tower(
        NUM_USERS,
        8,
        categorical_features={"gender": rng.integers(0, 2, NUM_USERS)},
        numeric_features={"age": rng.uniform(18, 70, NUM_USERS)},
        hidden_units=[16],
        normalize=True,
        name="query",
    )
    candidate = Tower(NUM_ITEMS, 8, categorical_features={"genres": genres}, normalize=True)
    return query, candidate


def _mixed_model(seed=0):
    query, candidate = _towers(seed)
    task = Retrieval(
        temperature=0.1,
        remove_accidental_hits=True,
        candidate_frequency=FrequencyEstimator(num_buckets=128, num_hashes=2, alpha=0.1),
        sampler=rs.UniformSampler(num_classes=NUM_ITEMS),
        num_sampled=6,
        candidate_model=candidate,
        seed=seed,
    )
    return TwoTowerModel(query, candidate, task, sample_weight_key="weight")


def _data(seed=0, size=64):
    rng = np.random.default_rng(seed)
    users = rng.integers(0, NUM_USERS, size)
    features = {
        "user_id": users,
        "item_id": (users * 2 + rng.integers(0, 3, size)) % NUM_ITEMS,  # learnable affinity
        "weight": rng.uniform(0.5, 1.5, size).astype(np.float32),
    }
    return tf.data.Dataset.from_tensor_slices(features).batch(16)


def test_id_only_tower_is_an_embedding_lookup():
    tower = Tower(5, 3)
    ids = tf.constant([4, 0, 4])
    np.testing.assert_array_equal(tower(ids), tf.gather(tower.id_embedding.embeddings, ids))
    assert tower.mlp is None


def test_tower_features_tables_and_normalisation():
    query, candidate = _towers()
    out = query(tf.constant([0, 3, 11]))
    assert out.shape == (3, 8)
    np.testing.assert_allclose(tf.norm(out, axis=1), 1.0, rtol=1e-5)
    # Numeric features are standardised; multi-hot rows are means (rows sum to 1, or 0 if empty).
    age = query._numeric[0].numpy()
    np.testing.assert_allclose([age.mean(), age.std()], [0.0, 1.0], atol=1e-5)
    genre_rows = candidate._categorical_tables[0].numpy().sum(axis=1)
    assert set(np.round(genre_rows, 5)) <= {0.0, 1.0}
    assert not any(v.trainable for v in query._numeric + query._categorical_tables)
    # Per-id features matter: two ids with the same ID embedding differ through their features.
    candidate(tf.constant([0]))  # builds the layers
    candidate.id_embedding.embeddings.assign(tf.zeros([NUM_ITEMS, 8]))
    emb = candidate(tf.range(NUM_ITEMS)).numpy()
    genres = candidate._categorical_tables[0].numpy()
    same = [(i, j) for i in range(NUM_ITEMS) for j in range(i) if (genres[i] == genres[j]).all()]
    differ = [(i, j) for i in range(NUM_ITEMS) for j in range(i) if (genres[i] != genres[j]).any()]
    for i, j in same[:3]:
        np.testing.assert_allclose(emb[i], emb[j], atol=1e-6)
    assert any(np.abs(emb[i] - emb[j]).max() > 1e-4 for i, j in differ[:3])


def test_fit_with_mixed_task_updates_estimator_in_training_only():
    model = _mixed_model()
    model.compile(optimizer=tf.keras.optimizers.Adagrad(0.5))
    data = _data()
    history = model.fit(data, epochs=3, verbose=0).history["loss"]
    assert np.all(np.isfinite(history)) and history[-1] < history[0]
    estimator = model.task.candidate_frequency
    assert int(estimator.step) == 3 * 4
    model.evaluate(data, verbose=0)
    assert int(estimator.step) == 3 * 4
    names = [v.name for v in model.trainable_variables]
    assert len(names) == len(set(names))  # the candidate tower is shared, not duplicated


def test_works_with_the_tfrs_task_and_factorized_metrics():
    query, candidate = _towers()
    items = tf.data.Dataset.from_tensor_slices(np.arange(NUM_ITEMS)).batch(8)
    metrics = tfrs.metrics.FactorizedTopK(
        candidates=tfrs.layers.factorized_top_k.BruteForce().index_from_dataset(
            items.map(lambda i: (i, candidate(i)))
        ),
        ks=(1, 5),
    )
    model = TwoTowerModel(query, candidate, tfrs.tasks.Retrieval(metrics=metrics))
    model.compile(optimizer=tf.keras.optimizers.Adagrad(0.1))
    result = model.evaluate(_data(), verbose=0, return_dict=True)
    assert "factorized_top_k/top_5_categorical_accuracy" in result


def test_save_weights_round_trip_restores_towers_and_estimator(tmp_path):
    model = _mixed_model()
    model.compile(optimizer=tf.keras.optimizers.Adagrad(0.5))
    model.fit(_data(), epochs=1, verbose=0)
    model.save_weights(str(tmp_path / "weights"))

    restored = _mixed_model(seed=0)
    restored.compile(optimizer=tf.keras.optimizers.Adagrad(0.5))
    restored.load_weights(str(tmp_path / "weights"))
    users, items = tf.range(NUM_USERS), tf.range(NUM_ITEMS)
    np.testing.assert_array_equal(restored.query_model(users), model.query_model(users))
    np.testing.assert_array_equal(restored.candidate_model(items), model.candidate_model(items))
    saved, loaded = model.task.candidate_frequency, restored.task.candidate_frequency
    assert int(loaded.step) == int(saved.step) == 4
    np.testing.assert_array_equal(loaded.probability(items), saved.probability(items))


def test_query_tower_saved_model_round_trip(tmp_path):
    query, _ = _towers()
    users = tf.constant([0, 5, 11])
    expected = query(users)
    query.save(str(tmp_path / "query"))
    loaded = tf.keras.models.load_model(str(tmp_path / "query"))
    np.testing.assert_array_equal(loaded(users), expected)
    # Another batch size runs another matmul kernel: equal to float32 rounding.
    np.testing.assert_allclose(loaded(tf.constant([5])), expected[1:2], rtol=1e-5, atol=1e-7)


def test_bad_arguments():
    bad = [
        (dict(num_ids=0, embedding_dim=4), "`num_ids` must be a positive integer"),
        (dict(num_ids=3, embedding_dim=4, hidden_units=8), "`hidden_units` must be a sequence"),
        (dict(num_ids=3, embedding_dim=4, hidden_units=[0]), "`hidden_units` must be a positive"),
        (dict(num_ids=3, embedding_dim=4, normalize=1), "`normalize` must be a bool"),
        (
            dict(num_ids=3, embedding_dim=4, categorical_features={"g": [0, 1]}),
            r"must have one row per id: shape \[num_ids=3\]",
        ),
        (
            dict(num_ids=3, embedding_dim=4, categorical_features={"g": [0.5, 1, 2]}),
            "must hold integer categories",
        ),
        (
            dict(num_ids=3, embedding_dim=4, categorical_features={"g": [[0, 2]] * 3}),
            "must be multi-hot",
        ),
        (
            dict(num_ids=2, embedding_dim=4, numeric_features={"x": [1.0, np.nan]}),
            "must be finite numbers",
        ),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            Tower(**kwargs)
    with pytest.raises(ValueError, match="`task` must be a retrieval task"):
        TwoTowerModel(Tower(3, 2), Tower(3, 2), task=tf.keras.layers.Dense(1))
