"""Transformer-big on WMT14 en->de, the paper's settings: 300k steps, P_drop 0.3."""

from transformer_jax.experiment_config import base_config


def get_config():
  c = base_config(model="big")    # The paper's big model, data, optimizer and schedule.
  c.num_train_steps = 300_000
  c.checkpoint_every_steps = 2_000
  c.keep_checkpoints = 20         # The paper averages the last 20 checkpoints for big models.
  c.eval_bleu_examples = 1_000
  # Unrolled layers: on TPUs the scanned stack needs 2.8x the HBM (v6e-8, 64k tokens per chip:
  # 39.0 GiB, does not fit 32, against 13.8) for the same step time (docs/tpu.md).
  c.model.scan_layers = False
  c.data.seq_len = 128            # As wmt14_base.py: 192 rows of 128 tokens (TPU-friendly).
  c.data.max_len = 128
  c.data.batch_size = 192
  return c
