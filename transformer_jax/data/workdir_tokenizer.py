"""Where a workdir keeps its tokenizer, and loading it (no data pipeline imports: translate.py
starts faster without datasets)."""

from __future__ import annotations

import os

from transformer_jax.data.marian_tokenizer import MarianTokenizer
from transformer_jax.data.tokenizer import Tokenizer
from transformer_jax.workdir_layout import MARIAN_TOKENIZER_DIR, TOKENIZER_FILE



def load_workdir_tokenizer(workdir: str) -> Tokenizer | MarianTokenizer | None:
  """The tokenizer of a workdir: an imported Marian one (marian_tokenizer/), else the trained
  tokenizer.model; None when it has neither yet."""
  marian = os.path.join(workdir, MARIAN_TOKENIZER_DIR)
  if os.path.isdir(marian):
    return MarianTokenizer.load(marian)
  path = os.path.join(workdir, TOKENIZER_FILE)
  return Tokenizer.load(path) if os.path.exists(path) else None
