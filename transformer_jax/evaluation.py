"""BLEU and chrF through sacreBLEU, and translation of many sentences in length-bucketed batches.

Scores come with sacreBLEU's signature (tokenizer, case, version, ...), so that a reported
number can be reproduced. The paper's numbers are tokenized BLEU (multi-bleu.perl on tokenized
text): score already tokenized text with `tokenize="none"` (and `lowercase=True` for the
lowercased variant). Detokenized output is best scored with the default `tokenize="13a"`.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import logging
import sys
from typing import Any, Protocol

import numpy as np
from sacrebleu.metrics import BLEU, CHRF
import tqdm

from transformer_jax import decoding
from transformer_jax.config import require_int
from transformer_jax.model import Transformer

log = logging.getLogger(__name__)


class TokenizerLike(Protocol):
  """What `translate` needs of a tokenizer (e.g. `transformer_jax.data.tokenizer.Tokenizer`)."""

  pad_id: int
  bos_id: int
  eos_id: int

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids: Sequence[int]) -> str: ...


@dataclasses.dataclass(frozen=True)
class Score:
  """A corpus-level score.

  Attributes:
    name: "BLEU" or "chrF2" (chrF++ is "chrF2++").
    score: The number, 0-100.
    signature: sacreBLEU's signature, e.g. "nrefs:1|case:mixed|eff:no|tok:13a|...".
    details: sacreBLEU's one-line report, signature included (n-gram precisions, BP, ...).
  """

  name: str
  score: float
  signature: str
  details: str

  def __str__(self) -> str:
    return self.details


# ----------------------------------------------------------------------------- metrics


def bleu(hypotheses: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]], *,
         tokenize: str = "13a", lowercase: bool = False) -> Score:
  """Corpus BLEU of `hypotheses` against one reference each (a list of strings) or several
  (a list of reference streams, each as long as `hypotheses`).

  `tokenize="none"` scores text that is already tokenized (the paper's tokenized BLEU);
  `lowercase=True` ignores case.
  """
  streams = _reference_streams(hypotheses, references)
  # force: with tokenize="none" the text is tokenized on purpose, so sacreBLEU's "you forgot to
  # detokenize" warning would be wrong (force is not part of the signature or the score).
  metric = BLEU(tokenize=tokenize, lowercase=lowercase, force=tokenize == "none")
  return _score(metric, metric.corpus_score(list(hypotheses), streams))


def chrf(hypotheses: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]], *,
         word_order: int = 0, lowercase: bool = False) -> Score:
  """Corpus chrF (character n-gram F-score, beta 2); `word_order=2` gives chrF++."""
  streams = _reference_streams(hypotheses, references)
  metric = CHRF(word_order=word_order, lowercase=lowercase)
  return _score(metric, metric.corpus_score(list(hypotheses), streams))


def corpus_scores(hypotheses: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]],
                  *, tokenize: str = "13a", lowercase: bool = False) -> dict[str, Score]:
  """{"bleu": ..., "chrf": ...} for one set of translations."""
  return {"bleu": bleu(hypotheses, references, tokenize=tokenize, lowercase=lowercase),
          "chrf": chrf(hypotheses, references, lowercase=lowercase)}


def _score(metric, result) -> Score:
  signature = str(metric.get_signature())
  return Score(name=result.name, score=float(result.score), signature=signature,
               details=result.format(signature=signature))


def _reference_streams(hypotheses, references) -> list[list[str]]:
  if isinstance(hypotheses, str) or isinstance(references, str):
    raise ValueError("hypotheses and references must be lists of sentences, not one string.")
  references = list(references)
  streams = [references] if all(isinstance(r, str) for r in references) else references
  streams = [list(stream) for stream in streams]
  for i, stream in enumerate(streams):
    if len(stream) != len(hypotheses):
      raise ValueError(f"Reference stream {i} has {len(stream)} sentences but there are "
                       f"{len(hypotheses)} hypotheses; give one reference per hypothesis.")
  if not streams:
    raise ValueError("No references given.")
  return streams


# ----------------------------------------------------------------------------- translation


def bucket_length(length: int, minimum: int = 16) -> int:
  """The padded length of a batch: 16, 24, 32, 48, 64, 96, ... (a few shapes, so few compiles)."""
  power = minimum
  while True:
    for bucket in (power, power * 3 // 2):
      if length <= bucket:
        return bucket
    power *= 2


def _check_translate_args(config, tokenizer, lines, beam_size, batch_tokens, beam_convention):
  """One clear ValueError for an argument `translate` cannot use."""
  for name in ("pad_id", "bos_id", "eos_id"):
    value = getattr(tokenizer, name, None)
    value = value() if callable(value) else value
    if value != getattr(config, name):
      raise ValueError(f"tokenizer.{name}={value!r} but the model's TransformerConfig.{name}="
                       f"{getattr(config, name)}; use the tokenizer the model was trained with.")
  require_int("batch_tokens", batch_tokens, minimum=1)
  require_int("beam_size", beam_size, minimum=1)
  if beam_convention not in decoding.CONVENTIONS:
    raise ValueError(f"beam_convention={beam_convention!r} is not one of "
                     f"{decoding.CONVENTIONS}.")
  if isinstance(lines, str):
    raise ValueError("lines must be a list of sentences, not one string.")


def translate(model: Transformer, params: Any, tokenizer: TokenizerLike, lines: Sequence[str], *,
              beam_size: int = 4, alpha: float = 0.6, max_len: int | None = None,
              min_len: int = 0, batch_tokens: int = 4096, beam_convention: str = "gnmt",
              append_eos: bool = True, progress: bool = False) -> list[str]:
  """Translates `lines`, returned in input order.

  Sentences are sorted by length and batched by a token budget into a few fixed shapes (lengths
  from `bucket_length`, batch sizes powers of two), so that decoding compiles once per shape.
  Empty (or whitespace-only) lines give empty translations without being decoded.

  Args:
    model: The `Transformer`.
    params: Its parameters (the "params" collection, or `{"params": ...}`).
    tokenizer: `encode(str) -> ids`, `decode(ids) -> str`, and the model's `pad_id`, `bos_id`,
      `eos_id`.
    lines: Source sentences.
    beam_size: Beam width (the paper: 4); 1 = greedy search.
    alpha: Length penalty (the paper: 0.6; unused by greedy search).
    max_len: Most generated tokens; default each source's length + 50 (the paper).
    min_len: No EOS before this many tokens.
    batch_tokens: Padded source tokens per batch (beams multiply the decoder's share).
    beam_convention: "gnmt" (the paper's length penalty) or "huggingface" (transformers'
      beam search; `alpha` is then its `length_penalty`); see `decoding`.
    append_eos: Feed sources as ids + EOS, as the data pipeline does in training.
    progress: Show a progress bar on stderr.

  Returns:
    One translation per line.
  """
  config = model.config
  _check_translate_args(config, tokenizer, lines, beam_size, batch_tokens, beam_convention)
  outputs = [""] * len(lines)
  todo = [i for i, line in enumerate(lines) if line.strip()]
  encode = getattr(tokenizer, "encode_batch", None)
  texts = [lines[i] for i in todo]
  ids = encode(texts) if encode is not None else [tokenizer.encode(t) for t in texts]
  ids = bounded_sources([list(x) for x in ids], [todo_i + 1 for todo_i in todo], config.max_len,
                 config.eos_id if append_eos else None)
  order = sorted(range(len(todo)), key=lambda j: -len(ids[j]))  # Longest first.

  with tqdm.tqdm(total=len(todo), desc="translate", unit="sentence", file=sys.stderr,
                 disable=not progress) as bar:
    for batch in length_batches([len(ids[j]) for j in order], batch_tokens):
      members = [order[k] for k in batch.rows]
      src = np.full((batch.size, batch.length), config.pad_id, np.int32)
      for row, j in enumerate(members + members[:1] * (batch.size - len(members))):
        src[row, :len(ids[j])] = ids[j]  # Filler rows copy the first, so they end with it.
      best = _best_ids(model, params, src, beam_size=beam_size, alpha=alpha, max_len=max_len,
                       min_len=min_len, convention=beam_convention)
      for row, j in enumerate(members):
        outputs[todo[j]] = tokenizer.decode(best[row])
      bar.update(len(members))
  return outputs


def bounded_sources(ids: list[list[int]], line_numbers: list[int], limit: int,
             eos_id: int | None) -> list[list[int]]:
  """Source ids within the model's `max_len` (EOS included when `eos_id` is given): longer
  lines keep their first tokens, with one warning naming them, so that one runaway line cannot
  ask for unbounded memory and the others still translate."""
  keep = limit - (eos_id is not None)
  long = [(n, len(x)) for n, x in zip(line_numbers, ids) if len(x) > keep]
  if long:
    shown = ", ".join(f"line {n}: {length:,} tokens" for n, length in long[:3])
    log.warning("%d input line(s) exceed the model's max_len=%d source tokens (%s%s); "
                "translating their first %d tokens.", len(long), limit, shown,
                ", ..." if len(long) > 3 else "", keep)
  tail = [eos_id] if eos_id is not None else []
  return [x[:keep] + tail for x in ids]


def _best_ids(model: Transformer, params: Any, src: np.ndarray, *, beam_size: int, alpha: float,
              max_len: int | None, min_len: int, convention: str) -> list[list[int]]:
  """The best translation of each row as ids before EOS (greedy search when beam_size is 1)."""
  if beam_size == 1:
    tokens = decoding.greedy_search(model, params, src, max_len=max_len, min_len=min_len)
  else:
    tokens_BxNxT = decoding.beam_search(model, params, src, beam_size=beam_size, alpha=alpha,
                                        max_len=max_len, min_len=min_len,
                                        convention=convention)[0]
    tokens = np.asarray(tokens_BxNxT)[:, 0]  # Sliced on the host: no program to compile.
  return decoding.ids_until_eos(np.asarray(tokens), eos_id=model.config.eos_id,
                                pad_id=model.config.pad_id)


def translate_and_score(model: Transformer, params: Any, tokenizer: TokenizerLike,
                        sources: Sequence[str], references: Sequence[str], *,
                        tokenize: str = "13a", lowercase: bool = False,
                        **translate_kwargs) -> tuple[list[str], dict[str, Score]]:
  """Translates `sources` (see `translate`) and scores them: (hypotheses, corpus_scores)."""
  if len(sources) != len(references):
    raise ValueError(f"{len(sources)} sources but {len(references)} references; they must pair "
                     "up line by line.")
  hypotheses = translate(model, params, tokenizer, sources, **translate_kwargs)
  return hypotheses, corpus_scores(hypotheses, references, tokenize=tokenize, lowercase=lowercase)


@dataclasses.dataclass(frozen=True)
class _Batch:
  rows: list[int]  # Positions in the length-sorted order.
  size: int        # Rows in the array: a power of two >= len(rows).
  length: int      # Padded source length.


def length_batches(lengths_sorted: Sequence[int], batch_tokens: int) -> list[_Batch]:
  """Groups length-sorted (descending) sentences into batches of a few fixed shapes.

  Each batch's `rows` are positions in the sorted order; `size` and `length` the padded shape.
  """
  batches, start = [], 0
  while start < len(lengths_sorted):
    length = bucket_length(lengths_sorted[start])
    capacity = max(1, batch_tokens // length)
    capacity = 1 << (capacity.bit_length() - 1)  # A power of two.
    end = start
    while (end < len(lengths_sorted) and end - start < capacity
           and bucket_length(lengths_sorted[end]) == length):
      end += 1
    size = 1 << (end - start - 1).bit_length()  # The next power of two >= end - start.
    batches.append(_Batch(rows=list(range(start, end)), size=size, length=length))
    start = end
  return batches
