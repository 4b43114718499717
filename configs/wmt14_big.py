"""Transformer-big on WMT14 en->de, the paper's settings: 300k steps, P_drop 0.3."""

from transformer_jax.experiment_config import base_config


def get_config():
  c = base_config()
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
  c.data.dataset = "wmt14"
  c.data.hub_config = "de-en"
  c.data.vocab_size = 37_000
  c.data.batch_size = 384         # 384 rows x 64 tokens x ~96% packing ~ 24k tokens per side.
  c.data.seq_len = 64
  c.data.max_len = 64
  c.optim.schedule = "paper"
  c.optim.warmup_steps = 4_000
  c.optim.label_smoothing = 0.1
  return c
