"""A trained run directory as serving needs it: load, export, evaluate.

``recsampled export``, ``recsampled evaluate``, the demo and the index benchmark share these:

- :func:`load_run`: the parts of ``RUN_DIR`` (``recsampled.training.outputs``) that serving
  uses: config, vocabularies, query and candidate towers; every part is checked, and a
  :class:`RunError` names the one at fault. :meth:`TrainedRun.split` reloads the data as the
  config says and checks that it still gives the run's vocabularies.
- :func:`export_run`: embeds the catalogue with the candidate tower (progress on stderr) and
  calls :func:`~recsampled.index.export_artifact` with the run's metric (``cosine`` when the
  towers normalise, else ``dot``), its users' query tower, their training items (excluded when
  recommending), the item counts (popular-items fallback), the titles of
  ``data.item_metadata`` and the config; ANN indexes are tuned on real queries from the run's
  users.
- :func:`evaluate_run`: Recall@K, NDCG@K, HitRate@K, MRR and coverage on the test split
  (training items removed), by exact search over the towers' embeddings, through an artifact's
  index, and for popularity, on the same users (:func:`recsampled.evaluation.ranking_metrics`).
- :func:`read_item_titles`: MovieLens ``u.item`` / ``movies.dat`` or a CSV with a ``title``
  column.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsampled.config import Config, ConfigError
from recsampled.data import DataError, Vocabulary
from recsampled.data.splits import Split
from recsampled.errors import RunError
from recsampled.evaluation import (
    RankingMetrics,
    embedding_scores,
    popularity_scores,
    ranking_metrics,
    retrieval_scores,
    top_k,
)
from recsampled.index.artifact import ArtifactError, check_output_dir
from recsampled.index.build import DEFAULT_TARGET_RECALL, IndexChoice, Metric
from recsampled.index.export import ArtifactInfo, embed_catalogue, embed_ids, export_artifact
from recsampled.index.retriever import Retriever
from recsampled.training.build import load_split
from recsampled.training.outputs import RunDirectory, load_tower
from recsampled.training.pipeline import evaluation_arguments

EVALUATION_SCHEMA_VERSION = 1


@dataclasses.dataclass
class TrainedRun:
    """The parts of a finished run that export and evaluation use (see :func:`load_run`).

    Attributes:
        path: the run directory.
        config: its ``config.yaml``.
        users: the user vocabulary (index -> original id): the query tower's input.
        items: the item vocabulary: the candidate tower's input, the index's rows.
        query_model: the query tower SavedModel: ``[n]`` int64 user indices -> ``[n, D]``.
        candidate_model: the candidate tower SavedModel: item indices -> ``[n, D]``.
        embedding_dim: D.
    """

    path: Path
    config: Config
    users: Vocabulary
    items: Vocabulary
    query_model: Any
    candidate_model: Any
    embedding_dim: int
    _split: Split | None = dataclasses.field(default=None, repr=False)

    @property
    def metric(self) -> Metric:
        """``"cosine"`` when the towers normalise their output (``model.normalize``), else
        ``"dot"``: the score the model was trained with."""
        return "cosine" if self.config.model.normalize else "dot"

    @property
    def num_users(self) -> int:
        return len(self.users)

    @property
    def num_items(self) -> int:
        return len(self.items)

    def split(self) -> Split:
        """The train/test split, reloaded as the config says (cached).

        Raises:
            RunError: (part ``"data"``) if the data cannot be read or no longer gives the run's
                vocabularies (it changed since training).
        """
        if self._split is None:
            where = self.config.data.path or "the synthetic generator"
            try:
                split = load_split(self.config.data)
            except (DataError, FileNotFoundError, ValueError) as e:
                raise RunError(
                    f"The data of the run at {self.path} ({where}) cannot be loaded: {e}",
                    path=self.path,
                    part="data",
                ) from e
            for name, saved, now in (
                ("users", self.users, split.train.users),
                ("items", self.items, split.train.items),
            ):
                if saved != now:
                    raise RunError(
                        f"The data of the run at {self.path} ({where}) no longer gives the "
                        f"run's {name} (vocabulary/{name}.parquet: {len(saved)} ids, the data "
                        f"now: {len(now)}); it changed since training. Train again.",
                        path=self.path,
                        part="data",
                    )
            self._split = split
        return self._split

    def item_embeddings(self, *, batch_size: int = 4096, progress: bool = True) -> np.ndarray:
        """``[num_items, D]`` float32 embeddings of every item (candidate tower, in batches)."""
        return embed_catalogue(
            self.candidate_model, self.num_items, batch_size=batch_size, progress=progress
        )

    def query_embeddings(
        self, users: np.ndarray | None = None, *, batch_size: int = 4096, progress: bool = False
    ) -> np.ndarray:
        """``[n, D]`` float32 query embeddings of user indices ``users`` (default: all)."""
        users = np.arange(self.num_users) if users is None else np.asarray(users, np.int64)
        return embed_ids(
            self.query_model, users, batch_size=batch_size, progress=progress, label="users"
        )

    def seen(self) -> tuple[np.ndarray, np.ndarray]:
        """Training items of each user as CSR ``(indptr [num_users + 1], item indices)``."""
        train = self.split().train
        order = np.argsort(train.user_ids, kind="stable")
        counts = np.bincount(train.user_ids, minlength=self.num_users)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return indptr, train.item_ids[order].astype(np.int64)

    def item_titles(self) -> np.ndarray | None:
        """``[num_items]`` titles from ``data.item_metadata`` (None when not configured)."""
        path = self.config.data.item_metadata
        if path is None:
            return None
        try:
            return read_item_titles(path, self.items.original_ids)
        except (OSError, ValueError) as e:
            raise RunError(
                f"The item metadata of the run at {self.path} (data.item_metadata={path!r}) "
                f"cannot be used: {e}",
                path=self.path,
                part="data.item_metadata",
            ) from e


def load_run(run_dir: str | os.PathLike) -> TrainedRun:
    """Loads and checks what a finished ``recsampled train`` run holds for serving.

    Args:
        run_dir: the run directory (``recsampled train --output RUN_DIR``).

    Returns:
        A :class:`TrainedRun`.

    Raises:
        RunError: naming the part that is missing, unreadable or inconsistent (e.g.
            ``towers/query`` missing because training did not finish).
    """
    run = RunDirectory(Path(run_dir).absolute())
    path = run.path

    def fail(part: str, message: str, cause: BaseException | None = None) -> RunError:
        error = RunError(f"The run at {path} {message}", path=path, part=part)
        error.__cause__ = cause
        return error

    if not path.is_dir():
        raise fail("folder", "does not exist. Train it with `recsampled train --output RUN_DIR`.")
    if not run.config_file.is_file():
        raise fail("config.yaml", "has no config.yaml: it is not a recsampled run directory.")
    try:
        config = Config.from_yaml(run.config_file.read_text(), source=str(run.config_file))
    except (ConfigError, OSError) as e:
        raise fail("config.yaml", f"has an unreadable config.yaml: {e}", e) from e

    vocabularies = {}
    for name in ("users", "items"):
        part = f"vocabulary/{name}.parquet"
        try:
            vocabularies[name] = Vocabulary.load(path / part)
        except FileNotFoundError as e:
            raise fail(part, f"has no {part}: training did not get that far.", e) from e
        except ValueError as e:
            raise fail(part, f"has an unreadable {part}: {e}", e) from e

    towers = {}
    for name in ("query", "candidate"):
        part = f"towers/{name}"
        if not (run.towers / name).is_dir():
            raise fail(
                part,
                f"has no {part} SavedModel: training has not finished (run `recsampled train` "
                "again on it to resume).",
            )
        try:
            towers[name] = load_tower(run.towers / name)
        except Exception as e:  # noqa: BLE001  (TensorFlow raises many kinds)
            raise fail(part, f"has an unreadable {part} SavedModel: {e}", e) from e
    dim = config.model.embedding_dim
    for name, vocabulary in (
        ("query", vocabularies["users"]),
        ("candidate", vocabularies["items"]),
    ):
        try:
            probe = np.asarray(towers[name](np.array([0, len(vocabulary) - 1], np.int64)))
        except Exception as e:  # noqa: BLE001
            raise fail(
                f"towers/{name}",
                f"has a {name} tower that cannot embed indices 0 and {len(vocabulary) - 1} "
                f"(vocabulary of {len(vocabulary)}): {e}",
                e,
            ) from e
        if probe.shape != (2, dim):
            raise fail(
                f"towers/{name}",
                f"has a {name} tower with output shape {probe.shape[1:]}, but config.yaml says "
                f"model.embedding_dim={dim}.",
            )
    return TrainedRun(
        path=path,
        config=config,
        users=vocabularies["users"],
        items=vocabularies["items"],
        query_model=towers["query"],
        candidate_model=towers["candidate"],
        embedding_dim=dim,
    )


def export_run(
    run: TrainedRun | str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    index: IndexChoice = "auto",
    target_recall: float = DEFAULT_TARGET_RECALL,
    overwrite: bool = False,
    batch_size: int = 4096,
    seed: int = 0,
    progress: bool = True,
) -> ArtifactInfo:
    """Exports a trained run as an artifact folder (module docstring).

    Args:
        run: a :class:`TrainedRun` or a run directory.
        output_dir: the artifact folder, written atomically.
        index: ``"flat"``, ``"hnsw"``, ``"ivf"``, ``"ivfpq"`` or ``"auto"``.
        target_recall: recall@10 against exact search that ANN tuning must reach, measured on
            up to 1000 of the run's users through the query tower.
        overwrite: replace an existing artifact.
        batch_size: items embedded per call.
        seed: seeds the tuning sample.
        progress: progress on stderr.

    Returns:
        The :class:`ArtifactInfo` (final path, manifest).

    Raises:
        RunError: for a run that cannot be loaded or whose data changed.
        FileExistsError: if ``output_dir`` exists and ``overwrite`` is false.
        ValueError: for bad arguments.
    """
    check_output_dir(output_dir, overwrite=overwrite)  # fail before the work
    run = run if isinstance(run, TrainedRun) else load_run(run)
    split = run.split()
    titles = run.item_titles()
    embeddings = run.item_embeddings(batch_size=batch_size, progress=progress)
    config = run.config.to_dict()
    return export_artifact(
        output_dir,
        item_embeddings=embeddings,
        item_ids=run.items.original_ids,
        query_model=run.query_model,
        user_ids=run.users.original_ids,
        metric=run.metric,
        index=index,
        seen=run.seen(),
        item_popularity=split.train.item_counts,
        item_titles=titles,
        training_config=config,
        target_recall=target_recall,
        overwrite=overwrite,
        seed=seed,
        progress=progress,
    )


# ---------------------------------------------------------------------------------------------
# Evaluation.


@dataclasses.dataclass(frozen=True)
class RunEvaluation:
    """Full-catalogue metrics of a run on its test split, exact and through an index.

    Attributes:
        run_dir: the run directory.
        split: the split's method, e.g. ``"leave_last_out(num_test=1)"``.
        exact: the model by exact search (every item scored by ``Q·Cᵀ``).
        popularity: the popularity baseline (training counts).
        index: the model through the artifact's index (``Retriever.recommend``), or None.
        artifact: the artifact folder, index factory, search parameters and the recall@10
            measured at export; None without an artifact.
    """

    run_dir: Path
    split: str
    exact: RankingMetrics
    popularity: RankingMetrics
    index: RankingMetrics | None = None
    artifact: dict[str, Any] | None = None

    def columns(self) -> dict[str, RankingMetrics]:
        """Column name -> metrics, in table order."""
        columns = {"exact": self.exact}
        if self.index is not None:
            columns["index"] = self.index
        columns["popularity"] = self.popularity
        return columns

    def as_dict(self) -> dict[str, Any]:
        """JSON-able: the protocol, the artifact and one flat metrics dict per column."""
        return {
            "schema_version": EVALUATION_SCHEMA_VERSION,
            "run_dir": str(self.run_dir),
            "protocol": "full catalogue, training items removed, mean over test users",
            "split": self.split,
            "num_users": self.exact.num_users,
            "num_items": self.exact.num_items,
            "artifact": self.artifact,
            "metrics": {name: m.as_dict() for name, m in self.columns().items()},
        }

    def table(self) -> str:
        """One row per metric, one column per scorer (exact, index, popularity)."""
        columns = {name: m.as_dict() for name, m in self.columns().items()}
        keys = [k for k in columns["exact"] if k not in ("num_users", "num_items")]
        order = [k for p in ("recall", "ndcg", "hit_rate", "mrr", "coverage") for k in keys
                 if k.split("@")[0] == p]  # fmt: skip
        lines = [f"{'metric':<14}" + "".join(f"{name:>12}" for name in columns)]
        for key in order:
            lines.append(f"{key:<14}" + "".join(f"{c[key]:>12.4f}" for c in columns.values()))
        lines.append(
            f"({self.exact.num_users} test users, {self.exact.num_items} items, {self.split}; "
            "training items excluded)"
        )
        if self.artifact is not None:
            a = self.artifact
            params = ", ".join(f"{k}={v}" for k, v in a["search_params"].items()) or "exact"
            lines.append(
                f"index: {a['factory']} ({params}), recall@{a['recall_k']} vs exact "
                f"{a['recall']:.4f} measured at export; the served top {a['depth']} (seen items "
                f"excluded) holds {a['served_recall']:.4f} of the exact top {a['depth']}; its MRR "
                f"counts only those {a['depth']}."
            )
        return "\n".join(lines)


def evaluate_run(
    run: TrainedRun | str | os.PathLike,
    artifacts: str | os.PathLike | Retriever | None = None,
    *,
    progress: bool = False,
) -> RunEvaluation:
    """Evaluates a run on its test split: exact, through an artifact's index, and popularity.

    The cut-offs, batch size and user sample are the run's ``evaluation`` section, so the exact
    column reproduces the run's ``metrics.json``. Through the index, each user's top
    ``max(ks)`` unseen items come from ``Retriever.recommend`` (query tower, index, seen-item
    exclusion of the artifact), scored by :func:`recsampled.evaluation.retrieval_scores`.

    Args:
        run: a :class:`TrainedRun` or a run directory.
        artifacts: an artifact folder (or a loaded :class:`Retriever`) exported from this run.
        progress: progress on stderr.

    Returns:
        A :class:`RunEvaluation`.

    Raises:
        RunError: for a run that cannot be loaded.
        ArtifactError: for an artifact that cannot be loaded or does not belong to the run.
    """
    run = run if isinstance(run, TrainedRun) else load_run(run)
    split = run.split()
    train, test = split.train, split.test
    settings = run.config.evaluation
    arguments = evaluation_arguments(
        train, test, settings, num_users=run.num_users, num_items=run.num_items
    )
    users = arguments["users"]
    queries = np.zeros((run.num_users, run.embedding_dim), np.float32)
    queries[users] = run.query_embeddings(users, progress=progress)
    items = run.item_embeddings(progress=progress)
    exact = ranking_metrics(embedding_scores(queries, items), **arguments)
    popularity = ranking_metrics(popularity_scores(train.item_counts), **arguments)

    index = info = None
    if artifacts is not None:
        retriever = artifacts if isinstance(artifacts, Retriever) else Retriever.load(artifacts)
        check_artifact_matches(retriever, run)
        depth = min(max(settings.ks), run.num_items)

        def retrieve(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            top = retriever.recommend(retriever.user_ids[batch], k=depth, exclude_seen=True)
            return top.rows, top.scores

        index = ranking_metrics(retrieval_scores(retrieve, run.num_items), **arguments)
        manifest = retriever.manifest
        info = {
            "path": str(retriever.path),
            "factory": manifest.index.factory,
            "search_params": dict(manifest.index.search_params),
            "recall_k": manifest.recall.k,
            "recall": manifest.recall.value,
            "depth": depth,
            "served_recall": served_recall(
                run, retrieve, queries, items, users, depth, settings.batch_size
            ),
        }
    return RunEvaluation(
        run_dir=run.path,
        split=split.report.method,
        exact=exact,
        popularity=popularity,
        index=index,
        artifact=info,
    )


def served_recall(
    run: TrainedRun,
    retrieve: Any,
    queries: np.ndarray,
    items: np.ndarray,
    users: np.ndarray,
    depth: int,
    batch_size: int,
) -> float:
    """Mean ``|served ∩ exact| / depth`` of the top ``depth`` unseen items of ``users``: how
    close the lists the index serves (seen items excluded, as recommended) are to exact search.
    Lower than the recall@10 measured at export when users have seen many of their nearest
    items (the index must then find ``depth + seen`` neighbours)."""
    indptr, seen = run.seen()
    score = embedding_scores(queries, items)
    overlaps = []
    for start in range(0, users.size, batch_size):
        batch = users[start : start + batch_size]
        scores = np.array(score(batch), np.float32)
        sizes = indptr[batch + 1] - indptr[batch]
        rows = np.repeat(np.arange(batch.size), sizes)
        scores[rows, np.concatenate([seen[indptr[u] : indptr[u + 1]] for u in batch])] = -np.inf
        exact = top_k(scores, depth)
        served, _ = retrieve(batch)
        for want, got in zip(exact, served, strict=True):
            overlaps.append(np.intersect1d(want, got[got >= 0]).size / depth)
    return float(np.mean(overlaps))


def check_artifact_matches(retriever: Retriever, run: TrainedRun) -> None:
    """Raises :class:`ArtifactError` unless the artifact has the run's items, users and seen
    items (it was exported from this run)."""
    path = retriever.path

    def fail(part: str, message: str) -> ArtifactError:
        return ArtifactError(
            f"The artifact at {path} was not exported from the run at {run.path}: {message}",
            path=path,
            part=part,
        )

    if retriever.embedding_dim != run.embedding_dim:
        raise fail(
            "manifest.json",
            f"embedding_dim {retriever.embedding_dim} != the run's {run.embedding_dim}.",
        )
    for part, mine, theirs in (
        ("item_ids.npy", retriever.item_ids, run.items.original_ids),
        ("user_ids.npy", retriever.user_ids, run.users.original_ids),
    ):
        if mine is None:
            raise fail(part, f"it has no {part}.")
        if len(mine) != len(theirs) or not np.array_equal(
            np.asarray(mine).astype(str), np.asarray(theirs).astype(str)
        ):
            raise fail(part, f"{part} ({len(mine)} ids) differs from the run's vocabulary "
                       f"({len(theirs)} ids).")  # fmt: skip
    if retriever.seen is None:
        raise fail("seen.npz", "it has no seen items, so they cannot be excluded.")
    indptr, indices = run.seen()
    if not (np.array_equal(retriever.seen[0], indptr) and len(retriever.seen[1]) == len(indices)):
        raise fail("seen.npz", "its seen items differ from the run's training items.")


# ---------------------------------------------------------------------------------------------
# Item metadata.


def read_item_titles(path: str | os.PathLike, item_ids: object) -> np.ndarray:
    """Titles of ``item_ids`` from a metadata file, ``""`` for ids it does not list.

    Formats, by file name: ``*.item`` (MovieLens 100K ``u.item``: ``id|title|...``, Latin-1),
    ``movies.dat`` (MovieLens 1M: ``id::title::genres``, Latin-1); anything else is CSV (or TSV
    for ``.tsv``) with a header, the item id in the first column and a ``title`` column.
    Ids match as text, so integer and string ids both work.

    Args:
        path: the metadata file.
        item_ids: ``[num_items]`` original item ids (the artifact's rows).

    Returns:
        ``[num_items]`` unicode titles.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: for an unreadable file, no ``title`` column, or no id in common.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Item metadata file not found: {path}")
    name = path.name.lower()
    try:
        if name.endswith(".item") or name == "movies.dat":
            separator = "|" if name.endswith(".item") else "::"
            frame = pd.read_csv(
                path,
                sep=separator if separator == "|" else "::",
                header=None,
                usecols=[0, 1],
                names=["id", "title"],
                dtype=str,
                encoding="latin-1",
                engine="python" if separator == "::" else "c",
                keep_default_na=False,
            )
        else:
            frame = pd.read_csv(
                path,
                sep="\t" if name.endswith(".tsv") else ",",
                dtype=str,
                keep_default_na=False,
            )
            if "title" not in frame.columns:
                raise ValueError(
                    f"{path} has no `title` column (columns: {list(frame.columns)}); a metadata "
                    "CSV needs the item id first and a `title` column."
                )
            frame = frame.rename(columns={frame.columns[0]: "id"})[["id", "title"]]
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        if isinstance(e, ValueError) and "title" in str(e) and "column" in str(e):
            raise
        raise ValueError(f"{path} cannot be read as item metadata: {e}") from e
    titles = dict(zip(frame["id"].str.strip(), frame["title"].str.strip(), strict=True))
    keys = [str(i) for i in np.asarray(item_ids).tolist()]
    found = [titles.get(key, "") for key in keys]
    if keys and not any(key in titles for key in keys):
        raise ValueError(
            f"{path} lists none of the {len(keys)} item ids (e.g. {keys[:3]}); its ids look "
            f"like {list(titles)[:3]}."
        )
    return np.array(found, dtype=str) if found else np.zeros(0, "U1")
