"""The embedded offline demo: a small model learns to spell dates as words, on 2 CPU cores.

The default of `train.py` and `transformer-jax-train`, carried by the package so that an
installed copy runs it without the repository (`configs/default.py` re-exports it).
"""

from transformer_jax.experiment_config import base_config


def get_config():
  c = base_config()
  c.num_train_steps = 600         # BLEU 100 on held-out dates by step ~500.
  c.log_every_steps = 50
  c.eval_every_steps = 200
  c.checkpoint_every_steps = 200
  c.keep_checkpoints = 3
  c.eval_bleu_examples = 200      # BLEU on 200 eval sentences at each eval step (greedy).
  c.eval_beam_size = 1
  c.num_sample_translations = 5

  m = c.model
  m.d_model = 64
  m.num_heads = 4
  m.d_ff = 256
  m.num_encoder_layers = 2
  m.num_decoder_layers = 2
  m.dropout_rate = 0.1
  m.max_len = 128

  d = c.data
  d.dataset = "synthetic"         # Generated in code: no download, no files.
  d.synthetic_task = "dates"
  d.synthetic_train_size = 20_000
  d.synthetic_eval_size = 500
  d.vocab_size = 256
  d.max_len = 64
  d.batch_size = 32
  d.seq_len = 96
  d.eval_batch_size = 64
  d.num_eval_examples = 500
  d.process_sharding = "rows"     # The same global batch however many processes share it.

  o = c.optim
  o.schedule = "rsqrt"
  o.warmup_steps = 200
  o.peak_learning_rate = 3e-3
  o.grad_clip_norm = 1.0
  return c
