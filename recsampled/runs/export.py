"""Exporting a run: its catalogue, query tower, users and training items into an artifact.

:func:`export_run` embeds the catalogue with the candidate tower and calls
:func:`recsampled.index.export_artifact` with the run's metric (``cosine`` when the towers
normalise, else ``dot``), its query tower SavedModel (``towers/query``, wrapped as saved, not
re-traced, in the TF-Serving query model that maps original user ids),
its users, their training items (excluded when recommending), the item counts (popular-items
fallback), the titles of ``data.item_metadata`` and the config; ANN indexes are tuned on real
queries from the run's users (``recsampled export``).

The export holds, for its whole length, the lock of its output (a hidden sibling
``.{name}.lock``: a second export to the same folder fails at once, naming the holder's pid)
and a shared lock of the run (a train into the run fails at once meanwhile); the output is
checked again under the lock, and published without replacing a folder made meanwhile.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from recsampled._io import claim
from recsampled._validation import check_positive_int
from recsampled.index.artifact import check_output_dir
from recsampled.index.build import DEFAULT_TARGET_RECALL, IndexChoice
from recsampled.index.export import ArtifactInfo, export_artifact
from recsampled.runs.directory import RunDirectory, TrainedRun, load_run


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
    key: bytes | str | None = None,
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
        key: signs the manifest (HMAC) with this key (None: ``$RECSAMPLED_ARTIFACT_KEY`` if
            set; see :func:`recsampled.index.export_artifact`).

    Returns:
        The :class:`ArtifactInfo` (final path, manifest).

    Raises:
        RunError: for a run that cannot be loaded or whose data changed.
        FileExistsError: if ``output_dir`` exists and ``overwrite`` is false.
        FolderInUseError: if another export to ``output_dir``, or a train into the run, runs.
        ValueError: for bad arguments.
    """
    shards = check_positive_int("shards", shards)
    output = check_output_dir(output_dir, overwrite=overwrite)  # fail before the work
    lock = output.parent / f".{output.name}.lock"
    run_dir = Path(run.path if isinstance(run, TrainedRun) else run)
    with claim(lock, folder=output, what="export into it"):
        check_output_dir(output, overwrite=overwrite)  # again, under the lock
        reading = RunDirectory(run_dir.absolute()).claim("export it", shared=True)
        # Only a folder with a run's config is locked (a folder that is no run is left as it is).
        is_run = (run_dir / "config.yaml").is_file()
        with reading if is_run else contextlib.nullcontext():
            return _export(
                run, output, index=index, target_recall=target_recall, shards=shards,
                overwrite=overwrite, batch_size=batch_size, seed=seed, key=key,
            )  # fmt: skip


def _export(
    run: TrainedRun | str | os.PathLike,
    output_dir: Path,
    *,
    index: IndexChoice,
    target_recall: float,
    shards: int,
    overwrite: bool,
    batch_size: int,
    seed: int,
    key: bytes | str | None,
) -> ArtifactInfo:
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
        key=key,
    )
