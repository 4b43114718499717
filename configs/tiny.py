"""A seconds-long run for tests: the synthetic task with the tiny model (2+2 layers, d_model 32)."""

from transformer_jax.experiment_config import base_config


def get_config():
  c = base_config(model="tiny")
  c.num_train_steps = 20
  c.log_every_steps = 1
  c.eval_every_steps = 10
  c.checkpoint_every_steps = 10
  c.keep_checkpoints = 10

  d = c.data
  d.dataset = "synthetic"
  d.synthetic_task = "dates"
  d.synthetic_train_size = 2_000
  d.synthetic_eval_size = 64
  d.vocab_size = 128
  d.max_len = 48
  d.batch_size = 16
  d.seq_len = 64
  d.eval_batch_size = 16
  d.num_eval_examples = 32
  d.process_sharding = "rows"

  o = c.optim
  o.schedule = "rsqrt"
  o.warmup_steps = 10
  o.peak_learning_rate = 3e-3
  return c
