"""A SentencePiece subword tokenizer with the model's special ids: pad 0, bos 1, eos 2, unk 3.

One vocabulary is shared by source and target (the paper's shared BPE). Training options are
chosen so that ordinary text round-trips exactly: no normalization, whitespace kept as is, every
character of the training text covered, and (for vocabularies of at least `BYTE_FALLBACK_MIN_VOCAB`
pieces) unseen characters spelled as UTF-8 bytes instead of becoming `<unk>`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
from collections.abc import Iterable, Sequence

import numpy as np
import sentencepiece as spm

log = logging.getLogger(__name__)

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
# Byte fallback needs 256 byte pieces; below this size they would crowd out real subwords.
BYTE_FALLBACK_MIN_VOCAB = 1024
# SentencePiece's BPE trainer gives thread-count-dependent results; a fixed count makes every
# host of a multi-process run train the identical model.
TRAIN_THREADS = 2


class Tokenizer:
  """Text <-> token ids through a SentencePiece model.

  Attributes:
    pad_id: Padding id (always 0).
    bos_id: Beginning-of-sequence id (1), first id of every decoder input.
    eos_id: End-of-sequence id (2), appended to sources and targets by the pipeline.
    unk_id: Unknown-piece id (3).
    vocab_size: Number of pieces, special ids included.
  """

  def __init__(self, model_proto: bytes, path: str | None = None):
    self._proto = bytes(model_proto)
    self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
    self.path = path
    self.pad_id = self._sp.pad_id()
    self.bos_id = self._sp.bos_id()
    self.eos_id = self._sp.eos_id()
    self.unk_id = self._sp.unk_id()
    self.vocab_size = self._sp.get_piece_size()
    if self.pad_id != PAD_ID or len({self.pad_id, self.bos_id, self.eos_id}) != 3:
      where = path or "the given model"
      raise ValueError(
          f"SentencePiece model {where} has pad_id={self.pad_id}, bos_id={self.bos_id}, "
          f"eos_id={self.eos_id}; the model needs pad_id=0 and three distinct special ids. "
          "Train it with Tokenizer.train (or delete it so that it is retrained).")
    self._special = np.zeros(self.vocab_size, bool)
    self._special[[self.pad_id, self.bos_id, self.eos_id]] = True

  # --------------------------------------------------------------------------- construction

  @classmethod
  def train(cls, texts: Iterable[str], vocab_size: int, path: str | os.PathLike, *,
            model_type: str = "bpe", byte_fallback: bool | None = None,
            max_sentences: int = 2_000_000, seed: int = 0) -> Tokenizer:
    """Trains a model on `texts` and writes it to `path` (atomically); returns the tokenizer.

    Args:
      texts: Sentences, one string each (both languages for a shared vocabulary).
      vocab_size: Requested number of pieces, special ids included. On a small corpus the
        model may come out smaller (`hard_vocab_limit=False`); read `.vocab_size`.
      path: Where to write the model, e.g. `workdir/tokenizer.model`.
      model_type: "bpe" (the paper's) or "unigram".
      byte_fallback: Spell unseen characters as bytes; None = on when vocab_size >=
        `BYTE_FALLBACK_MIN_VOCAB`.
      max_sentences: Train on at most this many sentences (a seeded sample) for speed.
      seed: Seed of that sample.

    Raises:
      ValueError: no non-empty text, or a vocabulary too small for the corpus's characters.
    """
    sentences = [t for t in texts if t and not t.isspace()]
    if not sentences:
      raise ValueError(f"Cannot train a tokenizer for {path}: the training text is empty "
                       "(no non-blank sentence). Check the train split of the corpus.")
    if len(sentences) > max_sentences:
      keep = np.sort(np.random.default_rng(seed).choice(len(sentences), max_sentences,
                                                        replace=False))
      sentences = [sentences[i] for i in keep]
    if byte_fallback is None:
      byte_fallback = vocab_size >= BYTE_FALLBACK_MIN_VOCAB
    model = io.BytesIO()
    spm.set_random_generator_seed(seed)
    try:
      spm.SentencePieceTrainer.train(
          sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size,
          model_type=model_type, pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID, unk_id=UNK_ID,
          byte_fallback=byte_fallback, character_coverage=1.0,
          normalization_rule_name="identity", remove_extra_whitespaces=False,
          split_digits=True, input_sentence_size=0, max_sentence_length=1 << 16,
          hard_vocab_limit=False, num_threads=TRAIN_THREADS, minloglevel=2)
    except RuntimeError as e:
      raise ValueError(f"SentencePiece training for {path} failed with vocab_size={vocab_size} "
                       f"on {len(sentences)} sentences: {e}. Raise vocab_size (it must hold the "
                       "special ids and every distinct character).") from e
    tok = cls(model.getvalue(), path=os.fspath(path))
    tok.save(path)
    log.info("Trained a %s tokenizer with %d pieces on %d sentences; saved to %s.", model_type,
             tok.vocab_size, len(sentences), path)
    return tok

  @classmethod
  def load(cls, path: str | os.PathLike) -> Tokenizer:
    """Reads a model written by `train` (or `save`)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"Tokenizer model {path} does not exist; train one with "
                              "Tokenizer.train(texts, vocab_size, path) or point to a .model file.")
    with open(path, "rb") as f:
      proto = f.read()
    try:
      return cls(proto, path=path)
    except RuntimeError as e:
      raise ValueError(f"{path} is not a SentencePiece model ({e}); delete it to retrain.") from e

  def save(self, path: str | os.PathLike) -> None:
    """Writes the model to `path` through a temporary file and a rename (never half-written)."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tokenizer-")
    with os.fdopen(fd, "wb") as f:
      f.write(self._proto)
    os.replace(tmp, path)
    self.path = path

  # --------------------------------------------------------------------------- use

  def encode(self, text: str, *, target: bool = False) -> list[int]:
    """Subword ids of `text`, without BOS or EOS.

    `target` says the text is in the target language; one model serves both sides here
    (tokenizers with one model per side, like Marian's, use it).
    """
    del target  # One shared model.
    return self._sp.encode(text)

  def encode_batch(self, texts: Sequence[str], *, target: bool = False) -> list[list[int]]:
    """`encode` over many texts (in C++, faster than a Python loop)."""
    del target  # One shared model.
    return self._sp.encode(list(texts))

  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids`: stops at the first EOS; padding, BOS and out-of-range ids are skipped."""
    out = []
    for i in ids:
      i = int(i)
      if i == self.eos_id:
        break
      if 0 <= i < self.vocab_size and not self._special[i]:
        out.append(i)
    return self._sp.decode(out)

  def id_to_piece(self, i: int) -> str:
    """The piece string of id `i` (for debugging)."""
    return self._sp.id_to_piece(int(i))

  @property
  def fingerprint(self) -> str:
    """A hash of the model, for cache keys."""
    return hashlib.sha1(self._proto).hexdigest()[:16]

  def __repr__(self) -> str:
    return f"Tokenizer(vocab_size={self.vocab_size}, path={self.path!r})"
