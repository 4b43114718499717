"""`create_datasets`: the data config in, tokenizer + training iterator + evaluation batches out."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from transformer_jax.data import corpus as corpus_lib
from transformer_jax.data import pipeline, synthetic
from transformer_jax.data.tokenizer import Tokenizer

log = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.model"
CACHE_DIR = "data_cache"


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """Every key of the `data` config block, with its default.

  Attributes:
    dataset: "synthetic", a Hugging Face hub id (e.g. "wmt14"), or "" when data_dir is set.
    hub_config: The hub dataset's configuration name (e.g. "de-en"); "" = none.
    data_dir: Local corpus directory; when set it wins over `dataset`.
    file_pattern: File names in data_dir: with "{lang}" two parallel text files per split
      ("{split}.{lang}", ".gz" found too; Multi30k tok/: "{split}.lc.norm.tok.{lang}"); without
      it one ".tsv" or ".jsonl" file per split (e.g. "{split}.tsv").
    source_lang: Source language code: file names, hub "translation" keys, JSONL keys.
    target_lang: Target language code.
    source_field: Source column / key when it is not the language code ("" = auto; a column
      number for TSV, default 0).
    target_field: Target column / key ("" = auto; TSV default 1).
    translation_field: Name of the hub / JSONL dict column keyed by language.
    train_split: Split name for training ("train").
    eval_split: Split name for evaluation ("validation" on the hub, "val" for Multi30k files).
    vocab_size: Requested SentencePiece vocabulary size (shared by both languages).
    tokenizer_type: "bpe" (the paper's) or "unigram".
    tokenizer_max_sentences: Train the tokenizer on at most this many sentences.
    max_len: Drop training pairs with more than max_len tokens on a side, counting the EOS / BOS
      the model adds (counted in the log).
    eval_max_len: The same for eval pairs; 0 = keep every eval pair (BLEU on the whole set;
      eval rows are as long as the longest eval pair).
    batch_size: Global rows per training batch (divisible by the process count).
    seq_len: Tokens per training row L (>= max_len).
    packing: First-fit pack several pairs per row (else one pair per row).
    packing_bins: Rows packed at once (0 = max(rows per batch, 256)).
    prefetch: Training batches prepared ahead in a background thread (0 = none).
    eval_batch_size: Global rows per eval batch (divisible by the process count).
    num_eval_examples: Use the first N eval pairs (-1 = all).
    process_sharding: "shard": each process reads its own examples; "rows": every process
      builds the global batch and keeps its rows (same batches for any process count).
    synthetic_task: "dates" or "numbers" (dataset="synthetic").
    synthetic_train_size: Synthetic training pairs.
    synthetic_eval_size: Synthetic eval pairs (disjoint from train).
    synthetic_seed: Seed of the synthetic corpus (independent of the training seed).
  """
  dataset: str = "synthetic"
  hub_config: str = ""
  data_dir: str = ""
  file_pattern: str = "{split}.{lang}"
  source_lang: str = "en"
  target_lang: str = "de"
  source_field: str = ""
  target_field: str = ""
  translation_field: str = "translation"
  train_split: str = "train"
  eval_split: str = "validation"
  vocab_size: int = 8_000
  tokenizer_type: str = "bpe"
  tokenizer_max_sentences: int = 2_000_000
  max_len: int = 256
  eval_max_len: int = 0
  batch_size: int = 64
  seq_len: int = 256
  packing: bool = True
  packing_bins: int = 0
  prefetch: int = 2
  eval_batch_size: int = 64
  num_eval_examples: int = -1
  process_sharding: str = "shard"
  synthetic_task: str = "dates"
  synthetic_train_size: int = 20_000
  synthetic_eval_size: int = 500
  synthetic_seed: int = 0

  @classmethod
  def from_config(cls, config: Any) -> DataConfig:
    """From an `ml_collections.ConfigDict`, a dict, or a `DataConfig`; unset keys keep defaults."""
    if isinstance(config, DataConfig):
      return config
    values = dict(config.items()) if hasattr(config, "items") else dict(config)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
      raise ValueError(f"config.data.{unknown[0]} is not a data setting; known keys: "
                       f"{sorted(known)}.")
    for name, value in values.items():
      expected = type(known[name].default)
      if expected is int and isinstance(value, float) and value.is_integer():
        values[name] = int(value)
      elif not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ValueError(f"config.data.{name}={value!r} should be of type {expected.__name__}.")
    c = cls(**values)
    c.validate()
    return c

  def validate(self) -> None:
    for name in ("packing_bins", "prefetch"):
      if getattr(self, name) < 0:
        raise ValueError(f"config.data.{name} must be >= 0, got {getattr(self, name)}.")
    if self.eval_max_len < 0:
      raise ValueError(f"config.data.eval_max_len must be >= 0 (0 = no limit), got "
                       f"{self.eval_max_len}.")
    for name in ("vocab_size", "max_len", "batch_size", "seq_len", "eval_batch_size"):
      if getattr(self, name) <= 0:
        raise ValueError(f"config.data.{name} must be positive, got {getattr(self, name)}.")
    if self.max_len < 2:
      raise ValueError(f"config.data.max_len={self.max_len} leaves no room for a token and EOS.")
    if self.max_len > self.seq_len:
      raise ValueError(f"config.data.max_len={self.max_len} exceeds seq_len={self.seq_len}: a "
                       "pair must fit in a row. Lower max_len or raise seq_len.")
    if self.process_sharding not in ("shard", "rows"):
      raise ValueError(f"config.data.process_sharding={self.process_sharding!r} must be 'shard' "
                       "or 'rows'.")
    if not (self.data_dir or self.dataset):
      raise ValueError("config.data: set data_dir (a local corpus) or dataset ('synthetic' or "
                       "a hub id).")
    if self.source_lang == self.target_lang:
      raise ValueError(f"config.data.source_lang and target_lang are both {self.source_lang!r}.")


@dataclasses.dataclass
class DataBundle:
  """What `create_datasets` returns.

  Attributes:
    tokenizer: The shared tokenizer (workdir/tokenizer.model).
    train_iter: Infinite per-process training batches with get_state() / set_state().
    eval_sources: Raw source text of the eval examples, in eval order.
    eval_references: Raw target text of the same examples.
    num_train_examples: Training pairs after filtering (all processes together).
  """
  tokenizer: Tokenizer
  train_iter: pipeline.TrainIterator
  eval_sources: list[str]
  eval_references: list[str]
  num_train_examples: int
  _eval_tokens: pipeline.TokenizedSplit
  _eval_indices: np.ndarray
  _eval_kwargs: dict[str, Any]

  def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
    """A fresh pass over the eval split: every example once, in order, fixed-shape batches."""
    return pipeline.make_eval_batches(self._eval_tokens, self._eval_indices, **self._eval_kwargs)


def load_split(config: DataConfig, split: str):
  """A split of the configured corpus: a list of pairs or a `datasets.Dataset`."""
  c = config
  if c.data_dir:
    return corpus_lib.load_local_split(
        c.data_dir, split, source_lang=c.source_lang, target_lang=c.target_lang,
        file_pattern=c.file_pattern, source_field=c.source_field, target_field=c.target_field)
  return corpus_lib.load_hub_split(
      c.dataset, split, hub_config=c.hub_config, source_lang=c.source_lang,
      target_lang=c.target_lang, source_field=c.source_field, target_field=c.target_field,
      translation_field=c.translation_field)


def create_datasets(data_config, workdir: str | os.PathLike, *, seed: int, process_index: int = 0,
                    process_count: int = 1) -> DataBundle:
  """Loads the corpus, trains (or reuses) the tokenizer, and builds the batch pipelines.

  Args:
    data_config: The `data` config block (ConfigDict or dict; see `DataConfig` for the keys).
    workdir: Holds tokenizer.model and the token-id cache (data_cache/).
    seed: Shuffling seed.
    process_index, process_count: This process of a multi-process run.
  """
  c = DataConfig.from_config(data_config)
  if c.eval_batch_size % process_count:
    raise ValueError(f"config.data.eval_batch_size={c.eval_batch_size} must be a multiple of the "
                     f"process count {process_count}.")
  workdir = os.fspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  if not c.data_dir and c.dataset == "synthetic":
    train, eval_ = synthetic.synthetic_splits(c.synthetic_task, c.synthetic_train_size,
                                              c.synthetic_eval_size, seed=c.synthetic_seed)
    name = f"synthetic-{c.synthetic_task}"
  else:
    train, eval_ = load_split(c, c.train_split), load_split(c, c.eval_split)
    name = os.path.basename(os.path.normpath(c.data_dir)) if c.data_dir else c.dataset
  log.info("Corpus %s: %s train and %s eval pairs%s.", name, f"{len(train):,}", f"{len(eval_):,}",
           "" if name.startswith("synthetic") else f" ({c.source_lang} -> {c.target_lang})")

  tokenizer = _tokenizer(c, workdir, train)
  cache_dir = os.path.join(workdir, CACHE_DIR)
  train_tokens = pipeline.tokenize_split(train, tokenizer, cache_dir, name=f"{c.train_split}")
  train_keep = pipeline.filter_pairs(train_tokens, c.max_len, name=f"{name} {c.train_split}")
  train_iter = pipeline.make_train_iterator(
      train_tokens, train_keep, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id,
      batch_size=c.batch_size, seq_len=c.seq_len, packing=c.packing, seed=seed,
      process_index=process_index, process_count=process_count,
      process_sharding=c.process_sharding, packing_bins=c.packing_bins, prefetch=c.prefetch)

  eval_tokens = pipeline.tokenize_split(eval_, tokenizer, cache_dir, name=f"{c.eval_split}")
  eval_keep = pipeline.filter_pairs(eval_tokens, c.eval_max_len or None,
                                    name=f"{name} {c.eval_split}")
  if c.num_eval_examples >= 0:
    eval_keep = eval_keep[:c.num_eval_examples]
  sources, references = _texts(eval_, eval_keep)
  eval_kwargs = dict(bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id,
                     batch_size=c.eval_batch_size,
                     seq_len=pipeline.eval_length(eval_tokens, eval_keep),
                     process_index=process_index, process_count=process_count)
  return DataBundle(tokenizer, train_iter, sources, references, int(len(train_keep)),
                    eval_tokens, eval_keep, eval_kwargs)


def _tokenizer(c: DataConfig, workdir: str, train) -> Tokenizer:
  """workdir/tokenizer.model if present, else trained on both sides of the train split."""
  path = os.path.join(workdir, TOKENIZER_FILE)
  if os.path.exists(path):
    tok = Tokenizer.load(path)
    log.info("Reusing the tokenizer %s (%d pieces).", path, tok.vocab_size)
    if tok.vocab_size > c.vocab_size:
      log.warning("%s has %d pieces but data.vocab_size=%d; delete it to retrain.", path,
                  tok.vocab_size, c.vocab_size)
    return tok
  if isinstance(train, list):
    n = len(train)
    sample = (range(n) if 2 * n <= c.tokenizer_max_sentences else
              np.sort(np.random.default_rng(0).choice(n, c.tokenizer_max_sentences // 2, False)))
    texts = [s for i in sample for s in train[i]]
  else:
    n = len(train)
    ds = train if 2 * n <= c.tokenizer_max_sentences else train.select(
        np.sort(np.random.default_rng(0).choice(n, c.tokenizer_max_sentences // 2, False)))
    texts = [s or "" for s in ds["source"]] + [s or "" for s in ds["target"]]
  return Tokenizer.train(texts, c.vocab_size, path, model_type=c.tokenizer_type,
                         max_sentences=c.tokenizer_max_sentences)


def _texts(split, indices: np.ndarray) -> tuple[list[str], list[str]]:
  if isinstance(split, list):
    return [split[i][0] for i in indices], [split[i][1] for i in indices]
  rows = split.select(indices)
  return ([(s or "").strip() for s in rows["source"]], [(t or "").strip() for t in rows["target"]])
