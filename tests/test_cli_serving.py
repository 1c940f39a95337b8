"""``recsampled export``, ``recommend`` and ``evaluate`` on a tiny trained run (in-process).

One run is trained per module (200 users, 300 items, 2 epochs, a few seconds) with a fake
MovieLens ``u.item`` as its item metadata; the artifacts are exported once and shared.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from recsampled import cli
from recsampled.config import Config
from recsampled.data import read_item_titles
from recsampled.evaluation import retrieval_scores
from recsampled.index import ArtifactError, Retriever
from recsampled.models import load_tower
from recsampled.runs import RunError, evaluate_run, load_run, train
from tests.runs.conftest import TINY

UNTITLED = 7  # the fake u.item leaves out the item with this original id


def fake_u_item(path: Path, item_ids: range) -> Path:
    """A MovieLens-style ``u.item``: ``id|title|date||url|genre flags``, Latin-1."""
    lines = [
        f"{i}|Movie {i} Caf\xe9 (19{i % 100:02d})|01-Jan-1995||http://example/{i}|0|1|0"
        for i in item_ids
        if i != UNTITLED
    ]
    path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("serving")
    values = copy.deepcopy(TINY)
    values["training"]["epochs"] = 2
    values["data"]["item_metadata"] = str(fake_u_item(folder / "u.item", range(300)))
    path = folder / "run"
    train(Config.from_dict(values), path)
    return path


@pytest.fixture(scope="module")
def flat_artifact(run_dir: Path) -> Path:
    output = run_dir.parent / "flat"
    assert (
        cli.main(["export", "--run", str(run_dir), "--output", str(output), "--index", "flat"]) == 0
    )
    return output


def _error(capsys: pytest.CaptureFixture, command: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]  # after any progress lines
    assert last.startswith(f"recsampled {command}: error: "), err
    return last


# -- export -----------------------------------------------------------------------------------


def test_export_writes_a_loadable_artifact_with_the_runs_metric_and_titles(flat_artifact, run_dir):
    retriever = Retriever.load(flat_artifact)
    run = load_run(run_dir)
    m = retriever.manifest
    assert (m.metric, m.num_items, m.num_users, m.embedding_dim) == ("cosine", 300, 200, 8)
    assert m.index.type == "flat" and m.recall.value == 1.0
    assert m.training_config["data"]["item_metadata"] == run.config.data.item_metadata
    assert np.array_equal(retriever.item_ids, run.items.original_ids)
    titles = dict(zip(retriever.item_ids.tolist(), retriever.item_titles.tolist(), strict=True))
    assert titles[UNTITLED] == "" and titles[42] == "Movie 42 Caf\xe9 (1942)"
    # The query model wraps the run's tower SavedModel as saved (not traced again from Keras):
    # the tower's variables are the run's, byte for byte, and it embeds every user as the run's
    # tower does, by user index and by original user id (TF-Serving signature).
    model = tf.saved_model.load(str(flat_artifact / "query_model" / "1"))
    tower = load_tower(run_dir / "towers" / "query")
    assert _variable_bytes(model.tower) == _variable_bytes(tower)
    users = tf.constant(np.arange(200), tf.int64)
    np.testing.assert_array_equal(model(users).numpy(), tower(users).numpy())
    by_id = model.signatures["serving_default"](user_ids=tf.constant(run.users.original_ids))
    np.testing.assert_allclose(by_id["embeddings"].numpy(), tower(users).numpy(), atol=1e-6)
    assert by_id["known"].numpy().all()


def _variable_bytes(module) -> list[tuple[str, bytes]]:
    return sorted((v.name, v.numpy().tobytes()) for v in module.tower.variables)


def test_export_tunes_an_ann_index_on_real_user_queries(run_dir, capsys):
    output = run_dir.parent / "hnsw"
    status = cli.main(["export", "--run", str(run_dir), "--output", str(output), "--index", "hnsw"])
    captured = capsys.readouterr()
    assert status == 0
    assert "embedding items: 300/300" in captured.err  # the progress bar
    assert "HNSW32,Flat (efSearch=" in captured.out and "on 200 users" in captured.out
    recall = Retriever.load(output).manifest.recall
    assert recall.query_source == "query_model" and recall.num_queries == 200
    assert recall.reached and recall.value >= 0.95


def test_export_refuses_to_replace_an_artifact_without_overwrite(flat_artifact, run_dir, capsys):
    argv = ["export", "--run", str(run_dir), "--output", str(flat_artifact), "--index", "flat"]
    assert cli.main(argv) == 2
    assert "already exists; pass overwrite=True" in _error(capsys, "export")


@pytest.mark.parametrize(
    "damage, part",
    [
        (lambda run: shutil.rmtree(run), "[folder]"),
        (lambda run: (run / "config.yaml").unlink(), "[config.yaml]"),
        (lambda run: (run / "vocabulary" / "items.parquet").write_text("x"),
         "[vocabulary/items.parquet]"),
        (lambda run: shutil.rmtree(run / "towers" / "query"), "[towers/query]"),
    ],
    ids=["no run", "no config", "bad vocabulary", "unfinished training"],
)  # fmt: skip
def test_export_of_a_broken_run_exits_2_naming_the_part(damage, part, run_dir, tmp_path, capsys):
    broken = tmp_path / "run"
    shutil.copytree(run_dir, broken)
    damage(broken)
    assert cli.main(["export", "--run", str(broken), "--output", str(tmp_path / "a")]) == 2
    assert part in _error(capsys, "export")
    assert not (tmp_path / "a").exists()


def test_export_with_unusable_metadata_names_the_config_key(run_dir, tmp_path, capsys):
    broken = tmp_path / "run"
    shutil.copytree(run_dir, broken)
    fake_u_item(tmp_path / "other.item", range(1000, 1010))  # no id in common
    config = (broken / "config.yaml").read_text()
    (broken / "config.yaml").write_text(config.replace(str(run_dir.parent / "u.item"),
                                                       str(tmp_path / "other.item")))  # fmt: skip
    assert cli.main(["export", "--run", str(broken), "--output", str(tmp_path / "a")]) == 2
    err = _error(capsys, "export")
    assert "[data.item_metadata]" in err and "lists none of the 300 item ids" in err


# -- recommend --------------------------------------------------------------------------------


def _exact_top(run_dir: Path, user_id: int, k: int) -> list[int]:
    """Reference: every unseen item scored by the towers in float64, best first."""
    run = load_run(run_dir)
    user = int(run.users.lookup([user_id])[0])
    items = run.item_embeddings().astype(np.float64)
    query = run.query_embeddings([user]).astype(np.float64)[0]
    scores = items @ query
    scores[run.seen()[user].indices] = -np.inf
    return run.items.original_ids[np.argsort(-scores, kind="stable")[:k]].tolist()


def test_recommend_json_is_the_exact_top_k_of_unseen_items_with_titles(
    flat_artifact, run_dir, capsys
):
    user = int(load_run(run_dir).users.original_ids[3])
    argv = ["recommend", "--artifacts", str(flat_artifact), "--user", str(user), "-k", "5"]
    assert cli.main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    (only,) = out["recommendations"]
    assert only["user"] == user and not only["fallback"] and out["k"] == 5
    items = [row["item"] for row in only["items"]]
    assert items == _exact_top(run_dir, user, 5)
    assert [row["rank"] for row in only["items"]] == [1, 2, 3, 4, 5]
    for row in only["items"]:
        assert row["title"] == ("" if row["item"] == UNTITLED else f"Movie {row['item']} Caf\xe9 "
                                f"(19{row['item'] % 100:02d})")  # fmt: skip
    scores = [row["score"] for row in only["items"]]
    assert scores == sorted(scores, reverse=True)


def test_recommend_prints_a_table_per_user(flat_artifact, run_dir, capsys):
    users = [str(u) for u in load_run(run_dir).users.original_ids[:2]]
    assert cli.main(["recommend", "--artifacts", str(flat_artifact), "--user", *users]) == 0
    out = capsys.readouterr().out
    assert out.count("Top 10 for user") == 2 and "(Flat, cosine)" in out
    assert "rank" in out and "title" in out and "Movie " in out


def test_recommend_unknown_user_exits_2_or_gets_popular_items(flat_artifact, capsys):
    argv = ["recommend", "--artifacts", str(flat_artifact), "--user", "no-such-user"]
    assert cli.main(argv) == 2
    assert "User id 'no-such-user' is not in the artifact's user vocabulary" in _error(
        capsys, "recommend"
    )
    assert cli.main([*argv, "--popular-fallback", "--json", "-k", "3"]) == 0
    (only,) = json.loads(capsys.readouterr().out)["recommendations"]
    assert only["fallback"]
    popular = Retriever.load(flat_artifact).popular_items(3).tolist()
    assert [row["item"] for row in only["items"]] == popular


def test_recommend_on_a_corrupt_artifact_names_the_part(flat_artifact, tmp_path, capsys):
    broken = tmp_path / "artifact"
    shutil.copytree(flat_artifact, broken)
    with open(broken / "index.faiss", "r+b") as f:
        f.truncate(100)
    assert cli.main(["recommend", "--artifacts", str(broken), "--user", "1"]) == 2
    assert "[index.faiss]" in _error(capsys, "recommend")
    assert cli.main(["recommend", "--artifacts", str(tmp_path / "none"), "--user", "1"]) == 2
    assert "[folder] Artifact not found" in _error(capsys, "recommend")


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_recommend_all_users_writes_every_users_top_k(flat_artifact, tmp_path, suffix, capsys):
    output = tmp_path / f"recs{suffix}"
    argv = ["recommend", "--artifacts", str(flat_artifact), "--all-users", "--output", str(output)]
    assert cli.main([*argv, "-k", "4", "--chunk-size", "64"]) == 0
    captured = capsys.readouterr()
    assert f"Wrote 800 recommendations (200 users, top 4) to {output}." in captured.out
    assert "recommending: 200/200" in captured.err  # the progress bar (log lines off a tty)
    frame = pd.read_parquet(output) if suffix == ".parquet" else pd.read_csv(output)
    assert frame.columns.tolist() == ["user_id", "rank", "item_id", "score"]
    retriever = Retriever.load(flat_artifact)
    top = retriever.recommend(retriever.user_ids, k=4)
    assert frame["user_id"].tolist() == np.repeat(retriever.user_ids, 4).tolist()
    assert frame["rank"].tolist() == [1, 2, 3, 4] * 200
    assert frame["item_id"].tolist() == top.ids.ravel().tolist()
    np.testing.assert_allclose(frame["score"], top.scores.ravel(), rtol=1e-6, atol=1e-6)
    assert not list(tmp_path.glob(".*"))  # no temporary file left
    users = [str(u) for u in retriever.user_ids[[5, 0]]]
    argv = ["recommend", "--artifacts", str(flat_artifact), "--user", *users]
    argv += ["--output", str(output)]
    assert cli.main([*argv, "-k", "2"]) == 0  # given users, in the order asked
    frame = pd.read_parquet(output) if suffix == ".parquet" else pd.read_csv(output)
    assert frame["user_id"].tolist() == [int(users[0])] * 2 + [int(users[1])] * 2
    assert frame["item_id"].tolist() == top.ids[[5, 0], :2].ravel().tolist()


def test_recommend_all_users_needs_an_output_with_a_known_suffix(flat_artifact, tmp_path, capsys):
    argv = ["recommend", "--artifacts", str(flat_artifact), "--all-users"]
    assert cli.main(argv) == 2
    assert "--all-users writes a file: give --output FILE" in _error(capsys, "recommend")
    assert cli.main([*argv, "--output", str(tmp_path / "recs.json")]) == 2
    assert "`output` must end in .parquet (or .pq) or .csv" in _error(capsys, "recommend")
    with pytest.raises(SystemExit):  # --user and --all-users exclude each other
        cli.main([*argv, "--user", "1", "--output", str(tmp_path / "r.csv")])


def test_export_shards_recommends_what_one_index_does(flat_artifact, run_dir, capsys):
    output = run_dir.parent / "sharded"
    argv = ["export", "--run", str(run_dir), "--output", str(output), "--index", "flat"]
    assert cli.main([*argv, "--shards", "3"]) == 0
    assert "in 3 shards." in capsys.readouterr().out
    sharded, single = Retriever.load(output), Retriever.load(flat_artifact)
    assert [s["num_items"] for s in sharded.manifest.index.shards] == [100, 100, 100]
    assert not (output / "index.faiss").exists()
    a = sharded.recommend(single.user_ids, k=10)
    b = single.recommend(single.user_ids, k=10)
    assert np.array_equal(a.ids, b.ids)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    assert cli.main([*argv[:-2], "--output", str(run_dir.parent / "x"), "--shards", "0"]) == 2
    assert "`shards` must be a positive integer" in _error(capsys, "export")


# -- evaluate ---------------------------------------------------------------------------------


def test_evaluate_exact_reproduces_training_and_flat_index_equals_exact(
    flat_artifact, run_dir, tmp_path, capsys
):
    output = tmp_path / "evaluation.json"
    argv = ["evaluate", "--run", str(run_dir), "--artifacts", str(flat_artifact)]
    assert cli.main([*argv, "--output", str(output)]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["metric", "exact", "index", "ials", "popularity"]
    for name in ("recall@10", "ndcg@5", "hit_rate@10", "mrr", "coverage@10"):
        assert any(line.startswith(name) for line in table.splitlines())
    data = json.loads(output.read_text())
    metrics = data["metrics"]
    trained = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["exact"] == pytest.approx(trained["model"], abs=1e-6)
    assert metrics["popularity"] == pytest.approx(trained["popularity"], abs=1e-12)
    for key, value in metrics["exact"].items():  # exact search through the index is exact
        if key != "mrr":  # the index's MRR only sees the top max(K) retrieved
            assert metrics["index"][key] == pytest.approx(value, abs=1e-6), key
    assert metrics["index"]["mrr"] <= metrics["exact"]["mrr"] + 1e-9
    assert data["artifact"]["served_recall"] == pytest.approx(1.0)  # Flat serves exact lists
    assert (
        data["artifact"]["factory"] == "Flat" and data["num_users"] == trained["model"]["num_users"]
    )


def test_evaluate_without_artifacts_prints_json_and_writes_it_in_the_run(run_dir, capsys):
    assert cli.main(["evaluate", "--run", str(run_dir), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert list(printed["metrics"]) == ["exact", "ials", "popularity"]
    assert printed["artifact"] is None
    assert json.loads((run_dir / "evaluation.json").read_text()) == printed


def test_evaluate_rejects_an_artifact_of_another_run(run_dir, tmp_path, capsys):
    other = tmp_path / "other"
    with pytest.raises(RunError):
        load_run(other)
    items = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)
    from recsampled.index import export_artifact

    export_artifact(other, item_embeddings=items, item_ids=np.arange(300) + 1000,
                    index="flat")  # fmt: skip
    assert cli.main(["evaluate", "--run", str(run_dir), "--artifacts", str(other)]) == 2
    err = _error(capsys, "evaluate")
    assert "[item_ids.npy]" in err and "was not exported from the run" in err
    with pytest.raises(ArtifactError):
        evaluate_run(run_dir, other)


# -- pieces -----------------------------------------------------------------------------------


def test_retrieval_scores_rank_only_what_was_retrieved():
    rows, scores = np.array([[2, 0, -1]]), np.array([[0.9, 0.5, 0.0]])
    score = retrieval_scores(
        lambda users: (rows.repeat(len(users), 0), scores.repeat(len(users), 0)), 4
    )
    out = score(np.array([0, 1]))
    assert out.shape == (2, 4) and out.dtype == np.float32
    assert out[0].tolist() == [0.5, -np.inf, np.float32(0.9), -np.inf]


def test_read_item_titles_csv_and_errors(tmp_path):
    csv = tmp_path / "movies.csv"
    csv.write_text('movieId,title,genres\n1,"Toy Story (1995)",Animation\nb,Other,Drama\n')
    assert read_item_titles(csv, np.array([1, 5])).tolist() == ["Toy Story (1995)", ""]
    assert read_item_titles(csv, np.array(["b"], dtype=object)).tolist() == ["Other"]
    (tmp_path / "bad.csv").write_text("id,name\n1,x\n")
    with pytest.raises(ValueError, match="no `title` column"):
        read_item_titles(tmp_path / "bad.csv", [1])
    with pytest.raises(FileNotFoundError):
        read_item_titles(tmp_path / "none.csv", [1])


def test_bench_index_on_a_trained_run(run_dir, tmp_path):
    from pipelines import bench_index

    output = tmp_path / "index.json"
    tiny = ["--num-items", "2000", "--dim", "8", "--num-queries", "100", "--num-clusters", "10",
            "--timing-queries", "20", "--threads", "1", "--repeats", "2", "--ef-search", "16",
            "--nprobe", "4", "--pq-nprobe", "4", "--pq-k-factor", "4", "--tfrs", "none",
            "--indexes", "hnsw,ivf", "--run", str(run_dir), "--output", str(output)]  # fmt: skip
    report = bench_index.main(tiny)
    real = report["real"]
    assert real["data"]["num_items"] == 300 and real["data"]["num_queries"] == 200
    assert real["data"]["metric"] == "cosine"
    assert [e["name"] for e in real["indexes"]] == ["Flat", "HNSW", "IVF-Flat"]  # Flat added
    assert len(report["load"]) == 4  # start, two rounds, end
    assert not output.with_suffix(".md").exists()  # JSON and a plot only (e34d9aa)
    assert output.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
