"""Transformer-base on WMT14 en->de, the paper's settings: 100k steps, ~25k+25k-token batches."""

from transformer_jax.experiment_config import base_config


def get_config():
  c = base_config()               # The base block already holds the paper's base model.
  c.num_train_steps = 100_000
  c.checkpoint_every_steps = 2_000
  c.keep_checkpoints = 5          # The paper averages the last 5 checkpoints (10-min intervals).
  c.eval_bleu_examples = 1_000
  c.data.dataset = "wmt14"
  c.data.hub_config = "de-en"
  c.data.vocab_size = 37_000      # Shared source-target BPE of about 37k tokens.
  c.data.batch_size = 384         # 384 rows x 64 tokens x ~96% packing ~ 24k tokens per side.
  c.data.seq_len = 64
  c.data.max_len = 64
  c.optim.schedule = "paper"
  c.optim.warmup_steps = 4_000
  c.optim.label_smoothing = 0.1
  return c
