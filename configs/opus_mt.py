"""Fine-tune an imported OPUS-MT (Marian) model: `--config configs/opus_mt.py:WORKDIR`.

With a workdir written by import_marian.py, the experiment it stored: the imported model's
architecture and fine-tuning defaults (cosine schedule peaking at 5e-5, clipping at 1.0). Set
the data on the command line, e.g. `--config.data.data_dir=DIR --config.data.file_pattern=...`.
Without an argument, the same settings around an OPUS-MT-sized Marian architecture (6+6 layers,
512 wide, swish, sinusoids split, logits bias), to train from scratch with our own tokenizer.
"""

import ml_collections

from transformer_jax import marian
from transformer_jax.config import TransformerConfig


def get_config(workdir: str | None = None):
  if workdir:
    return ml_collections.ConfigDict(marian.imported_experiment(workdir))
  model = TransformerConfig(vocab_size=58_101, activation="swish", sinusoid_layout="split",
                            scale_embeddings=True, logits_bias=True, layer_norm_epsilon=1e-5,
                            max_len=512)
  c = ml_collections.ConfigDict(marian.experiment_for(model).to_dict())
  c.data.vocab_size = 32_000
  return c
