"""Validation inside ``fit``: full-catalogue ranking of a validation part after every epoch.

:class:`ValidationCallback` embeds every user and item with the two towers at the end of each
epoch and ranks the whole catalogue for the validation users with the library's one evaluation
entry point, :func:`recsampled.evaluation.evaluate` (training items removed), then writes the
metrics into the epoch's Keras ``logs`` as ``val_recall_at_20``, ``val_ndcg_at_20``, ...,
``val_mrr``, where later callbacks (the checkpoint's history, ``EarlyStopping``) read them. Place
it first in the callback list.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import tensorflow as tf

from recsampled.data import Interactions
from recsampled.evaluation import embedding_scores, evaluate
from recsampled.models import embed_ids

logger = logging.getLogger(__name__)


def log_key(metric: str) -> str:
    """``"recall@20"`` -> ``"val_recall_at_20"``, the Keras log key of a validation metric.

    Example:
        >>> log_key("ndcg@10"), log_key("mrr")
        ('val_ndcg_at_10', 'val_mrr')
    """
    return "val_" + metric.replace("@", "_at_")


class ValidationCallback(tf.keras.callbacks.Callback):
    """Ranks the catalogue for the validation users after every epoch (module docstring).

    Args:
        query_model: the query tower (user index -> ``[n, embedding_dim]``).
        candidate_model: the candidate tower (item index -> ``[n, embedding_dim]``).
        fit: the interactions the model trains on (removed from the rankings).
        validation: the validation interactions (same vocabularies).
        ks: the cut-offs K.
        batch_size: users scored per batch.
        max_users: rank a seeded subset of this many validation users (None: all).
        seed: the subset's seed.
    """

    def __init__(
        self,
        *,
        query_model: tf.keras.layers.Layer,
        candidate_model: tf.keras.layers.Layer,
        fit: Interactions,
        validation: Interactions,
        ks: Sequence[int] = (10, 20, 50),
        batch_size: int = 256,
        max_users: int | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.query_model, self.candidate_model = query_model, candidate_model
        self.fit, self.validation = fit, validation
        self.ks, self.batch_size = tuple(ks), batch_size
        self.max_users, self.seed = max_users, seed

    def metrics(self) -> dict[str, float]:
        """The validation metrics of the towers now, keyed by :func:`log_key`."""
        queries = embed_ids(self.query_model, self.fit.num_users, batch_size=1 << 16)
        candidates = embed_ids(self.candidate_model, self.fit.num_items, batch_size=1 << 16)
        result = evaluate(
            {"model": embedding_scores(queries, candidates)},
            self.fit,
            self.validation,
            ks=self.ks,
            batch_size=self.batch_size,
            max_users=self.max_users,
            seed=self.seed,
            popularity=False,
        )["model"]
        return {
            log_key(name): float(value)
            for name, value in result.as_dict().items()
            if name not in ("num_users", "num_items")
        }

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        metrics = self.metrics()
        if logs is not None:
            logs.update(metrics)
        shown = ", ".join(
            f"{key} {value:.4f}"
            for key, value in metrics.items()
            if key.startswith(("val_recall", "val_ndcg"))
        )
        logger.info("epoch %d validation: %s", epoch + 1, shown)


def best_epoch(history: Sequence[dict], *, monitor: str, mode: str = "max") -> int | None:
    """The 1-based epoch of the best ``monitor`` value in ``history`` (the first of ties).

    Example:
        >>> history = [{"epoch": 1, "val_mrr": 0.2}, {"epoch": 2, "val_mrr": 0.3},
        ...            {"epoch": 3, "val_mrr": 0.3}]
        >>> best_epoch(history, monitor="val_mrr")
        2
        >>> best_epoch(history, monitor="val_mrr", mode="min")
        1
    """
    best: tuple[float, int] | None = None
    for record in history:
        if monitor not in record:
            continue
        value = record[monitor] if mode == "max" else -record[monitor]
        if best is None or value > best[0]:
            best = (value, int(record["epoch"]))
    return None if best is None else best[1]


def should_stop(history: Sequence[dict], *, monitor: str, mode: str, patience: int) -> bool:
    """True when the last ``patience`` epochs of ``history`` brought no better ``monitor``."""
    best = best_epoch(history, monitor=monitor, mode=mode)
    return best is not None and int(history[-1]["epoch"]) - best >= patience


class EarlyStoppingCallback(tf.keras.callbacks.Callback):
    """Stops ``fit`` when ``monitor`` has not improved for ``patience`` epochs, and writes the
    model of every new best epoch to ``best_manager``.

    It reads the epoch records of ``history`` (a live list, e.g. ``CheckpointCallback.history``,
    which holds the ``val_*`` metrics): place it after the callback that appends to it. Since
    both the records and the best checkpoint are on disk, a resumed run stops (or goes on)
    exactly as an uninterrupted one. Restore the best epoch with :meth:`restore_best`.

    Args:
        history: the run's epoch records.
        best_manager: a ``tf.train.CheckpointManager`` over the model's weights.
        monitor, mode, patience: as ``training.early_stopping``.
    """

    def __init__(
        self,
        history: list[dict],
        best_manager: tf.train.CheckpointManager,
        *,
        monitor: str,
        mode: str,
        patience: int,
    ):
        super().__init__()
        self.history, self.best_manager = history, best_manager
        self.monitor, self.mode, self.patience = monitor, mode, patience

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.monitor not in self.history[-1]:
            raise ValueError(
                f"`monitor` must be a key of the epoch's validation logs. Received: "
                f"monitor={self.monitor!r}; the logs have {sorted(self.history[-1])}."
            )
        if best_epoch(self.history, monitor=self.monitor, mode=self.mode) == epoch + 1:
            self.best_manager.save(checkpoint_number=epoch + 1)
        if should_stop(self.history, monitor=self.monitor, mode=self.mode, patience=self.patience):
            logger.info(
                "Early stopping after epoch %d: %s has not improved for %d epochs.",
                epoch + 1, self.monitor, self.patience,
            )  # fmt: skip
            self.model.stop_training = True

    @staticmethod
    def restore_best(
        checkpoint: tf.train.Checkpoint, best_manager: tf.train.CheckpointManager
    ) -> int:
        """Restores the best epoch's weights; returns that epoch (0 if there is none)."""
        if best_manager.latest_checkpoint is None:
            return 0
        checkpoint.restore(best_manager.latest_checkpoint).assert_existing_objects_matched()
        return int(best_manager.latest_checkpoint.rsplit("-", 1)[-1])
