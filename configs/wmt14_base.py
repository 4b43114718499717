"""Transformer-base on WMT14 en->de, the paper's settings: 100k steps, ~25k+25k-token batches."""

from transformer_jax.experiment_config import base_config


def get_config():
  c = base_config()               # Already the paper's base model, data, optimizer and schedule.
  c.num_train_steps = 100_000
  c.checkpoint_every_steps = 2_000
  c.keep_checkpoints = 5          # The paper averages the last 5 checkpoints (10-min intervals).
  c.eval_bleu_examples = 1_000
  return c
