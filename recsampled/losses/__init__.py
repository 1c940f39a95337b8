"""Softmax losses: sampled (TF's contract, plus per-example samples) and full."""

from recsampled.losses.full_softmax import full_logits, full_softmax_loss
from recsampled.losses.sampled_softmax import sampled_logits, sampled_softmax_loss

__all__ = ["full_logits", "full_softmax_loss", "sampled_logits", "sampled_softmax_loss"]
