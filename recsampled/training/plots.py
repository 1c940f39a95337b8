"""``history.png``: the training loss and the validation Recall/NDCG of every epoch.

matplotlib is optional (the ``bench`` extra): without it the plot is skipped with a log message.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)


def write_history_plot(path: str | Path, history: Sequence[dict]) -> Path | None:
    """Plots ``history`` (records of ``epoch``, ``loss`` and ``val_*`` keys) to a PNG file.

    Left: the mean batch loss per epoch; right: every ``val_recall_at_K`` and ``val_ndcg_at_K``
    per epoch (absent without validation).

    Returns:
        The path written, or None when matplotlib is missing or ``history`` is empty.
    """
    if not history:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed: %s not written.", path)
        return None
    epochs = [record["epoch"] for record in history]
    keys = sorted(
        {key for record in history for key in record if key.startswith(("val_recall", "val_ndcg"))}
    )
    figure, axes = plt.subplots(1, 2 if keys else 1, figsize=(10 if keys else 5, 3.5))
    loss_axis = axes[0] if keys else axes
    loss_axis.plot(epochs, [record["loss"] for record in history], marker="o")
    loss_axis.set(xlabel="epoch", ylabel="mean batch loss", title="training loss")
    if keys:
        for key in keys:
            shown = [r for r in history if key in r]
            values = [r[key] for r in shown]
            axes[1].plot([r["epoch"] for r in shown], values, marker="o", label=key[4:])
        axes[1].set(xlabel="epoch", title="validation (full catalogue)")
        axes[1].legend(fontsize="small")
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
