"""A run with side features named in the config: trained, evaluated and exported with them, and
the artifact still serves by user id (features inside the query tower's SavedModel)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from recsampled.config import Config
from recsampled.index import Retriever
from recsampled.runs import evaluate_run, export_run, train
from recsampled.runs.directory import load_run


def test_train_evaluate_export_with_side_features(tmp_path):
    users, items = tmp_path / "users.csv", tmp_path / "items.parquet"
    rng = np.random.default_rng(0)
    users.write_text(
        "user_id,segment,age\n"
        + "".join(f"{u},s{u % 3},{rng.integers(18, 70)}\n" for u in range(60))
    )
    pd.DataFrame({"item_id": range(80), "genre": [f"g{i % 4}" for i in range(80)]}).to_parquet(
        items
    )
    config = Config.from_dict(
        {
            "data": {
                "synthetic": {"num_users": 60, "num_items": 80, "num_interactions": 900,
                              "num_clusters": 4},
                "user_features": {"path": str(users), "categorical": ["segment"],
                                  "numeric": ["age"]},
                "item_features": {"path": str(items), "categorical": ["genre"]},
            },
            "model": {"embedding_dim": 8},
            "training": {"epochs": 1, "batch_size": 64},
            "evaluation": {"ks": [10], "baselines": []},
        }
    )  # fmt: skip
    result = train(config, tmp_path / "run")
    run = load_run(tmp_path / "run")
    assert run.config.data.item_features.categorical == ("genre",)
    evaluation = evaluate_run(run)
    assert evaluation.exact.as_dict() == result.metrics.as_dict()  # the saved towers' features
    info = export_run(run, tmp_path / "artifact", index="flat")
    retriever = Retriever.load(info.path)  # refuses any op outside the allowlist
    top = retriever.recommend(retriever.user_ids[:2], k=5, exclude_seen=False)
    # Served by original user id: the exported query tower (features inside) and the index give
    # the exact top 5 of the run's towers.
    queries, items = run.query_embeddings(np.arange(2)), run.item_embeddings()
    expected = np.sort(queries @ items.T, axis=1)[:, ::-1][:, :5]
    np.testing.assert_allclose(top.scores, expected, atol=1e-4)
