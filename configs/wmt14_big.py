"""Transformer-big on WMT14 en->de, the paper's settings: 300k steps, P_drop 0.3."""

from transformer_jax.experiment_config import base_config


def get_config():
  c = base_config()               # The paper's data, optimizer and schedule; the big model below.
  c.num_train_steps = 300_000
  c.checkpoint_every_steps = 2_000
  c.keep_checkpoints = 20         # The paper averages the last 20 checkpoints for big models.
  c.eval_bleu_examples = 1_000
  m = c.model
  m.d_model = 1024
  m.num_heads = 16
  m.d_ff = 4096
  m.dropout_rate = 0.3
  m.scan_layers = True            # Faster compiles at this size.
  return c
