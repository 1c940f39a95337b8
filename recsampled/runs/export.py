"""Exporting a run: its catalogue, query tower, users and training items into an artifact.

:func:`export_run` embeds the catalogue with the candidate tower and calls
:func:`recsampled.index.export_artifact` with the run's metric (``cosine`` when the towers
normalise, else ``dot``), its query tower SavedModel (``towers/query``, wrapped as saved, not
re-traced, in the TF-Serving query model that maps original user ids),
its users, their training items (excluded when recommending), the item counts (popular-items
fallback), the titles of ``data.item_metadata`` and the config; ANN indexes are tuned on real
queries from the run's users (``recsampled export``).
"""

from __future__ import annotations

import os

from recsampled._validation import check_positive_int
from recsampled.index.artifact import check_output_dir
from recsampled.index.build import DEFAULT_TARGET_RECALL, IndexChoice
from recsampled.index.export import ArtifactInfo, export_artifact
from recsampled.runs.directory import TrainedRun, load_run


def export_run(
    run: TrainedRun | str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    index: IndexChoice = "auto",
    target_recall: float = DEFAULT_TARGET_RECALL,
    shards: int = 1,
    overwrite: bool = False,
    batch_size: int = 4096,
    seed: int = 0,
) -> ArtifactInfo:
    """Exports a trained run as an artifact folder (module docstring).

    Args:
        run: a :class:`TrainedRun` or a run directory.
        output_dir: the artifact folder, written atomically.
        index: ``"flat"``, ``"hnsw"``, ``"ivf"``, ``"ivfpq"`` or ``"auto"``.
        target_recall: recall@10 against exact search that ANN tuning must reach, measured on
            up to 1000 of the run's users through the query tower.
        shards: index shard files of successive rows, searched together (1: one index).
        overwrite: replace an existing artifact.
        batch_size: items embedded per call.
        seed: seeds the tuning sample.

    Returns:
        The :class:`ArtifactInfo` (final path, manifest).

    Raises:
        RunError: for a run that cannot be loaded or whose data changed.
        FileExistsError: if ``output_dir`` exists and ``overwrite`` is false.
        ValueError: for bad arguments.
    """
    shards = check_positive_int("shards", shards)
    check_output_dir(output_dir, overwrite=overwrite)  # fail before the work
    run = run if isinstance(run, TrainedRun) else load_run(run)
    split = run.split()
    titles = run.item_titles()
    embeddings = run.item_embeddings(batch_size=batch_size)
    config = run.config.to_dict()
    return export_artifact(
        output_dir,
        item_embeddings=embeddings,
        item_ids=run.items.original_ids,
        query_model=run.query_tower_dir,
        user_ids=run.users.original_ids,
        metric=run.metric,
        index=index,
        seen=run.seen(),
        item_popularity=split.train.item_counts,
        item_titles=titles,
        training_config=config,
        target_recall=target_recall,
        shards=shards,
        overwrite=overwrite,
        seed=seed,
    )
