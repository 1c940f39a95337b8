"""``training.jit_compile``: the XLA train step of a real two-tower model equals the graph one.

Two models built by ``recsampled.runs.build_model`` from the same config (same seed, so the same
initial weights) take the same three steps on the same batches, one with ``jit_compile``; the
losses and every variable after the steps (both tables, optimiser slots) must agree to float32
rounding: XLA fuses the elementwise ops and may reorder sums, so not bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest

from recsampled.config import SPARSE_OPTIMIZERS, Config, TrainingConfig
from recsampled.data import synthetic, training_batches
from recsampled.runs import build_model

LOG = synthetic.generate(**synthetic.SIZES["tiny"], seed=0).to_interactions()
# XLA reorders sums: Adagrad's accumulators (sums of squared gradients, ~10^3) differ by up to
# ~4e-4 relative after 3 steps; embeddings (~0.1) by ~1e-6.
RTOL, ATOL = 2e-3, 1e-5


def test_xla_step_equals_the_graph_step():
    """With the shipped default optimiser, learning rate and row L2 (and a larger row L2)."""
    defaults = TrainingConfig()
    optimizer, learning_rate = defaults.optimizer, defaults.learning_rate
    row_l2 = max(defaults.row_l2, 0.5) if optimizer in SPARSE_OPTIMIZERS else 0.0
    models, losses = [], []
    for jit in (False, True):
        config = Config.from_dict({
            "model": {"embedding_dim": 8, "normalize": True},
            "task": {"temperature": 0.1, "logq": "counts", "remove_accidental_hits": True},
            "training": {"batch_size": 64, "optimizer": optimizer, "learning_rate": learning_rate,
                         "row_l2": row_l2, "jit_compile": jit, "seed": 3},
        })  # fmt: skip
        model = build_model(config, LOG)
        batches = training_batches(LOG, batch_size=64, seed=0, max_steps_per_epoch=3)
        history = model.fit(batches, epochs=1, verbose=0)
        models.append(model)
        losses.append(history.history["loss"][-1])
    assert losses[1] == pytest.approx(losses[0], rel=RTOL)
    graph, xla = ([v.numpy() for v in m.optimizer.variables()] for m in models)
    graph += [v.numpy() for v in models[0].trainable_variables]
    xla += [v.numpy() for v in models[1].trainable_variables]
    assert len(graph) == len(xla) > 2
    for a, b in zip(graph, xla, strict=True):
        np.testing.assert_allclose(b, a, rtol=RTOL, atol=ATOL)
    start = build_model(config, LOG).trainable_variables[0].numpy()
    assert not np.allclose(models[1].trainable_variables[0].numpy(), start)  # the steps moved it
