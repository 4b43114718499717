"""Multi30k English->German on a 2-core CPU (see benchmarks/multi30k.sh).

Reads `data.data_dir` when set (e.g. ../shared/data/multi30k, or its tok/ directory with
`--config.data.file_pattern={split}.lc.norm.tok.{lang}`), else the hub id.
"""

from transformer_jax.experiment_config import base_config


def get_config():
  c = base_config()
  c.num_train_steps = 6_000
  c.log_every_steps = 50
  c.eval_every_steps = 1_000
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 5
  c.eval_bleu_examples = -1

  m = c.model                      # Transformer-Tiny sized (Wu et al., 2021): 4+4 x 128.
  m.d_model = 128
  m.num_heads = 4
  m.d_ff = 512
  m.num_encoder_layers = 4
  m.num_decoder_layers = 4
  m.dropout_rate = 0.3
  m.max_len = 256

  d = c.data
  d.dataset = "bentrevett/multi30k"  # Hub mirror with "en"/"de" columns; offline: set data_dir.
  d.hub_config = ""
  d.data_dir = ""
  d.source_lang = "en"
  d.target_lang = "de"
  d.train_split = "train"
  d.eval_split = "val"            # The local layout's name; the hub mirror calls it "validation".
  d.vocab_size = 8_000
  d.max_len = 128
  d.batch_size = 64
  d.seq_len = 128
  d.eval_batch_size = 64

  o = c.optim
  o.schedule = "rsqrt"
  o.warmup_steps = 1_000
  o.peak_learning_rate = 2e-3
  o.grad_clip_norm = 1.0
  return c
