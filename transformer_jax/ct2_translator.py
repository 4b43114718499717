"""Translate with a model exported to CTranslate2 (`export.py --to ctranslate2`).

The same input and output handling as `evaluation.translate`: our SentencePiece model (saved
beside the CTranslate2 model) encodes each line, long lines keep their first `max_len - 1`
tokens, EOS is appended, and the pieces CTranslate2 returns are decoded back to text. Empty
lines give empty translations.

Beam search: CTranslate2 divides a hypothesis's log-probability by length^alpha, as
transformers does (`--beam_convention huggingface` in translate.py); it has no GNMT penalty.
Its default search stops once `beam_size` hypotheses have finished, which can return a
hypothesis scored far below one still growing (the demo model, beam 4, alpha 1.0: 12 of 500
translations differ from ours, -0.9 BLEU); searching until `PATIENCE` x beam_size have finished
gives ours on all 500 (docs/performance.md#serving-with-ctranslate2).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

import tqdm

from transformer_jax import evaluation
from transformer_jax.data.tokenizer import Tokenizer
from transformer_jax.export_ct2 import RECORD_FILE, TOKENIZER_FILE, require_ctranslate2
from transformer_jax.decoding import EXTRA_LENGTH

PATIENCE = 2  # CTranslate2's beam search patience (its default, 1, stops early; see above).


class CTranslate2Translator:
  """An exported model directory, loaded with `ctranslate2.Translator`."""

  def __init__(self, directory: str, *, device: str = "cpu", compute_type: str = "default",
               threads: int = 0):
    record_path = os.path.join(directory, RECORD_FILE)
    if not os.path.isfile(record_path):
      raise FileNotFoundError(f"--model {directory} has no {RECORD_FILE}: give a directory "
                              "written by `python export.py --to ctranslate2`.")
    with open(record_path, encoding="utf-8") as f:
      self.record = json.load(f)
    ctranslate2 = require_ctranslate2()
    self.tokenizer = Tokenizer.load(os.path.join(directory, TOKENIZER_FILE))
    self.max_len = int(self.record["max_len"])
    self._translator = ctranslate2.Translator(os.fspath(directory), device=device,
                                              compute_type=compute_type,
                                              intra_threads=threads)
    self._ids = {self.tokenizer.id_to_piece(i): i for i in range(self.tokenizer.vocab_size)}

  def translate(self, lines: Sequence[str], *, beam_size: int = 4, alpha: float = 1.0,
                batch_tokens: int = 4096, progress: bool = False) -> list[str]:
    """Translations of `lines` in input order (`alpha`: CTranslate2's length_penalty)."""
    tok = self.tokenizer
    todo = [i for i, line in enumerate(lines) if line.strip()]
    ids = evaluation.bounded_sources(tok.encode_batch([lines[i] for i in todo]),
                                     [i + 1 for i in todo], self.max_len, tok.eos_id)
    pieces = [[tok.id_to_piece(i) for i in row] for row in ids]
    outputs = [""] * len(lines)
    order = sorted(range(len(todo)), key=lambda j: -len(ids[j]))
    with tqdm.tqdm(total=len(todo), desc="translate", unit="sentence", file=sys.stderr,
                   disable=not progress) as bar:
      for batch in evaluation.length_batches([len(ids[j]) for j in order], batch_tokens):
        members = [order[k] for k in batch.rows]
        # As ours: up to the source length (EOS included) + EXTRA_LENGTH tokens, here for the
        # longest source of the batch; a learned position table also caps it.
        limit = len(ids[members[0]]) + EXTRA_LENGTH
        if self.record.get("positional") == "learned":
          limit = min(limit, self.max_len)
        # EOS may come first (CTranslate2's default min_decoding_length is 1, ours 0); sources
        # are already bounded by max_len.
        results = self._translator.translate_batch(
            [pieces[j] for j in members], beam_size=beam_size, length_penalty=alpha,
            patience=PATIENCE, max_decoding_length=limit, min_decoding_length=0,
            max_input_length=0)
        for j, result in zip(members, results):
          outputs[todo[j]] = tok.decode(self._ids[p] for p in result.hypotheses[0])
        bar.update(len(members))
    return outputs

