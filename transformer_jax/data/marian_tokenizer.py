"""Marian's (OPUS-MT's) tokenizer behind the project's tokenizer interface.

A Marian model tokenizes the source with `source.spm` and the target with `target.spm`, two
SentencePiece models, and maps their pieces to ids through one shared `vocab.json` (piece -> id),
as Hugging Face's `MarianTokenizer` does. A leading language token of multilingual models, e.g.
`>>fra<<`, is kept whole. Marian's ids are permuted once so that padding is id 0, as everywhere
in this project: its padding id and id 0 (its EOS in OPUS-MT models) trade places, the importer
permutes the embedding rows and logits bias the same way, and every other id is Marian's own. The
decoder starts with the padding id (`TransformerConfig.decoder_start_is_pad`), so `bos_id` is 0.

The tokenizer lives in `WORKDIR/marian_tokenizer/`: the three files and `marian.json` (the
vocabulary size and Marian's own special ids).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Sequence

import sentencepiece as spm

FILES = ("source.spm", "target.spm", "vocab.json")
META_FILE = "marian.json"
PAD, EOS, UNK = "<pad>", "</s>", "<unk>"


class MarianTokenizer:
  """Text <-> ids through Marian's two SentencePiece models and shared vocabulary.

  Attributes:
    pad_id: 0 (Marian's padding id, permuted to 0).
    bos_id: 0: the decoder starts with the padding id, as in Marian.
    eos_id: Marian's EOS id (permuted).
    unk_id: Marian's `<unk>` id (permuted).
    vocab_size: The model's vocabulary size (rows of its embedding matrix).
    path: The directory the tokenizer was loaded from.
  """

  def __init__(self, directory: str):
    self.path = os.fspath(directory)
    missing = [f for f in FILES + (META_FILE,) if not os.path.isfile(os.path.join(self.path, f))]
    if missing:
      raise FileNotFoundError(f"Marian tokenizer {self.path} lacks {', '.join(missing)}; "
                              "import the model again with import_marian.py.")
    with open(os.path.join(self.path, META_FILE), encoding="utf-8") as f:
      meta = json.load(f)
    with open(os.path.join(self.path, "vocab.json"), encoding="utf-8") as f:
      vocab = json.load(f)
    self.vocab_size = int(meta["vocab_size"])
    self._marian_pad = int(meta["marian_pad_id"])
    self._piece_to_id = {piece: self._permute(int(i)) for piece, i in vocab.items()}
    self._id_to_piece = {i: piece for piece, i in self._piece_to_id.items()}
    self.pad_id = self.bos_id = 0
    self.eos_id = self._piece_to_id[EOS]
    self.unk_id = self._piece_to_id[UNK]
    self._special = {self.pad_id, self.eos_id, self.unk_id}
    self._source = spm.SentencePieceProcessor(model_file=os.path.join(self.path, "source.spm"))
    self._target = spm.SentencePieceProcessor(model_file=os.path.join(self.path, "target.spm"))

  def _permute(self, i: int) -> int:
    """Marian id <-> our id (the permutation is its own inverse): pad and 0 trade places."""
    return 0 if i == self._marian_pad else self._marian_pad if i == 0 else i

  def to_marian(self, ids: Iterable[int]) -> list[int]:
    """Our ids as Marian's (e.g. to compare with Hugging Face's output)."""
    return [self._permute(int(i)) for i in ids]

  # --------------------------------------------------------------------------- construction

  @classmethod
  def write(cls, source_dir: str, directory: str, *, vocab_size: int, pad_id: int,
            eos_id: int) -> MarianTokenizer:
    """Copies Marian's tokenizer files from `source_dir` into `directory` and loads them.

    Args:
      source_dir: A Hugging Face Marian checkpoint directory.
      directory: Where to write them (e.g. `WORKDIR/marian_tokenizer`).
      vocab_size, pad_id, eos_id: The model's, from its config.json (Marian's ids).

    Raises:
      FileNotFoundError: a tokenizer file is missing.
      ValueError: vocab.json does not fit the model's ids.
    """
    for name in FILES:
      if not os.path.isfile(os.path.join(source_dir, name)):
        raise FileNotFoundError(f"{os.path.join(source_dir, name)} is missing: a Marian model "
                                f"directory holds {', '.join(FILES)}.")
    with open(os.path.join(source_dir, "vocab.json"), encoding="utf-8") as f:
      vocab = json.load(f)
    _check_vocab(vocab, vocab_size=vocab_size, pad_id=pad_id, eos_id=eos_id,
                 where=os.path.join(source_dir, "vocab.json"))
    os.makedirs(directory, exist_ok=True)
    for name in FILES:
      shutil.copyfile(os.path.join(source_dir, name), os.path.join(directory, name))
    with open(os.path.join(directory, META_FILE), "w", encoding="utf-8") as f:
      json.dump({"vocab_size": vocab_size, "marian_pad_id": pad_id, "marian_eos_id": eos_id}, f,
                indent=1)
    return cls(directory)

  @classmethod
  def load(cls, directory: str | os.PathLike) -> MarianTokenizer:
    """Reads a tokenizer written by `write`."""
    return cls(os.fspath(directory))

  # --------------------------------------------------------------------------- use

  def encode(self, text: str, *, target: bool = False) -> list[int]:
    """Ids of `text` (source language, or target language with `target`), without EOS."""
    return self.encode_batch([text], target=target)[0]

  def encode_batch(self, texts: Sequence[str], *, target: bool = False) -> list[list[int]]:
    """`encode` over many texts (one SentencePiece call)."""
    codes, rests = zip(*map(_language_code, texts)) if texts else ((), ())
    model = self._target if target else self._source
    lookup = lambda p: self._piece_to_id.get(p, self.unk_id)
    return [([lookup(code)] if code else []) + [lookup(p) for p in pieces]
            for code, pieces in zip(codes, model.encode(list(rests), out_type=str))]

  def decode(self, ids: Iterable[int]) -> str:
    """Target text of `ids`: stops at the first EOS; padding, `<unk>` and unknown ids are
    skipped (as Hugging Face's `decode(..., skip_special_tokens=True)` does)."""
    pieces = []
    for i in ids:
      i = int(i)
      if i == self.eos_id:
        break
      if i not in self._special and i in self._id_to_piece:
        pieces.append(self._id_to_piece[i])
    return self._target.decode_pieces(pieces).replace("\u2581", " ").strip()

  def id_to_piece(self, i: int) -> str:
    """The piece string of id `i` (for debugging and plots)."""
    return self._id_to_piece.get(int(i), UNK)

  @property
  def marian_pad_id(self) -> int:
    """Marian's own padding id (ours is 0; the two trade places)."""
    return self._marian_pad

  @property
  def fingerprint(self) -> str:
    """A hash of the files, for cache keys."""
    h = hashlib.sha1()
    for name in FILES + (META_FILE,):
      with open(os.path.join(self.path, name), "rb") as f:
        h.update(f.read())
    return h.hexdigest()[:16]

  def __repr__(self) -> str:
    return f"MarianTokenizer(vocab_size={self.vocab_size}, path={self.path!r})"


def _language_code(text: str) -> tuple[str, str]:
  """(">>fra<<", rest) for a text that starts with a language token, else ("", text)."""
  if text.startswith(">>"):
    end = text.find("<<")
    if end != -1:
      return text[:end + 2], text[end + 2:]
  return "", text


def _check_vocab(vocab, *, vocab_size: int, pad_id: int, eos_id: int, where: str) -> None:
  """Raises a ValueError unless `vocab` maps pieces to ids below vocab_size with Marian's
  special pieces at the model's ids."""
  if not isinstance(vocab, dict) or not vocab:
    raise ValueError(f"{where} is not a piece -> id mapping.")
  ids = list(vocab.values())
  if not all(isinstance(i, int) and 0 <= i < vocab_size for i in ids):
    raise ValueError(f"{where} holds ids outside the model's vocabulary [0, vocab_size="
                     f"{vocab_size}).")
  for piece, expected in ((PAD, pad_id), (EOS, eos_id), (UNK, None)):
    if piece not in vocab:
      raise ValueError(f"{where} has no {piece} piece; Marian vocabularies hold {PAD}, {EOS} "
                       f"and {UNK}.")
    if expected is not None and vocab[piece] != expected:
      raise ValueError(f"{where} maps {piece} to {vocab[piece]} but config.json's id is "
                       f"{expected}; the files come from different models.")
