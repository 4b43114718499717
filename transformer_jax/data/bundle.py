"""`create_datasets`: the data config in, tokenizer + training iterator + evaluation batches out."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from transformer_jax.data import corpus as corpus_lib
from transformer_jax.data import pipeline, synthetic
from transformer_jax.data.marian_tokenizer import MarianTokenizer
from transformer_jax.data.tokenizer import Tokenizer
from transformer_jax.data.workdir_tokenizer import load_workdir_tokenizer
from transformer_jax.experiment_config import DataConfig
from transformer_jax.workdir_layout import DATA_CACHE_DIR, TOKENIZER_FILE

log = logging.getLogger(__name__)

@dataclasses.dataclass
class DataBundle:
  """What `create_datasets` returns; its owner calls `close()` when training ends.

  Attributes:
    tokenizer: The shared tokenizer (workdir/tokenizer.model, or an imported Marian one).
    train_iter: Infinite per-process training batches with get_state() / set_state().
    eval_sources: Raw source text of the eval examples, in eval order.
    eval_references: Raw target text of the same examples.
  """
  tokenizer: Tokenizer
  train_iter: pipeline.TrainIterator
  eval_sources: list[str]
  eval_references: list[str]
  _eval_tokens: pipeline.TokenizedSplit
  _eval_indices: np.ndarray
  _eval_kwargs: dict[str, Any]

  def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
    """A fresh pass over the eval split: every example once, in order, fixed-shape batches."""
    return pipeline.make_eval_batches(self._eval_tokens, self._eval_indices, **self._eval_kwargs)

  def close(self) -> None:
    """Stops the training iterator's workers and prefetch thread; idempotent."""
    self.train_iter.close()


def load_split(config: DataConfig, split: str):
  """A split of the configured corpus (data_dir, else the hub) as a `datasets.Dataset` with
  string columns `source` and `target`."""
  c = config
  if c.data_dir:
    return corpus_lib.pairs_to_dataset(corpus_lib.load_local_split(
        c.data_dir, split, source_lang=c.source_lang, target_lang=c.target_lang,
        file_pattern=c.file_pattern, source_field=c.source_field, target_field=c.target_field))
  return corpus_lib.load_hub_split(
      c.dataset, split, hub_config=c.hub_config, source_lang=c.source_lang,
      target_lang=c.target_lang, source_field=c.source_field, target_field=c.target_field,
      translation_field=c.translation_field)


def create_datasets(data_config: DataConfig | Mapping[str, Any], workdir: str | os.PathLike, *,
                    seed: int, process_index: int = 0, process_count: int = 1,
                    num_workers: int = 0,
                    check_corpus: Callable[[dict[str, str]], None] | None = None) -> DataBundle:
  """Loads the corpus, trains (or reuses) the tokenizer, and builds the batch pipelines.

  Args:
    data_config: The `data` block: a `DataConfig`, or a mapping of its keys (validated here).
    workdir: Holds tokenizer.model and the token-id cache (data_cache/).
    seed: Shuffling seed.
    process_index, process_count: This process of a multi-process run.
    num_workers: Worker processes for training batches (the resolved `data.num_workers`:
      `DataConfig.workers_for(platform)`).
    check_corpus: Called with the fingerprints of the training corpus and the tokenizer
      (`{"train_corpus": ..., "tokenizer": ...}`) before anything is tokenized or cached; it may
      raise to refuse them (training checks that a resumed workdir keeps its corpus).

  Raises:
    ConfigError: a bad setting in a mapping `data_config`.
    ValueError: a corpus error, or a batch size that is not a multiple of `process_count`.
  """
  c = data_config if isinstance(data_config, DataConfig) else DataConfig.from_dict(data_config)
  # Checked now, not at the first evaluation hours into training.
  pipeline.rows_per_process(c.eval_batch_size, process_index, process_count,
                            "data.eval_batch_size")
  workdir = os.fspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  name, train, eval_ = _load_corpus(c)
  tokenizer = _tokenizer(c, workdir, train)
  if check_corpus is not None:
    check_corpus({"train_corpus": train._fingerprint,  # pylint: disable=protected-access
                  "tokenizer": tokenizer.fingerprint})
  cache_dir = os.path.join(workdir, DATA_CACHE_DIR)
  train_tokens = pipeline.tokenize_split(train, tokenizer, cache_dir, name=f"{c.train_split}")
  train_keep = pipeline.filter_pairs(train_tokens, c.max_len, name=f"{name} {c.train_split}")
  train_iter = pipeline.make_train_iterator(
      train_tokens, train_keep, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id,
      batch_size=c.batch_size, seq_len=c.seq_len, packing=c.packing, seed=seed,
      process_index=process_index, process_count=process_count,
      process_sharding=c.process_sharding, window=c.packing_window, prefetch=c.prefetch,
      num_workers=num_workers)

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
  return DataBundle(tokenizer, train_iter, sources, references, eval_tokens, eval_keep,
                    eval_kwargs)


def _load_corpus(c: DataConfig):
  """(name for the log, train split, eval split), both splits `datasets.Dataset`s."""
  if c.is_synthetic:
    train, eval_ = synthetic.synthetic_splits(c.synthetic_task, c.synthetic_train_size,
                                              c.synthetic_eval_size, seed=c.synthetic_seed)
    name = f"synthetic-{c.synthetic_task}"
    train, eval_ = corpus_lib.pairs_to_dataset(train), corpus_lib.pairs_to_dataset(eval_)
  else:
    train, eval_ = load_split(c, c.train_split), load_split(c, c.eval_split)
    name = os.path.basename(os.path.normpath(c.data_dir)) if c.data_dir else c.dataset
  log.info("Corpus %s: %s train and %s eval pairs%s.", name, f"{len(train):,}", f"{len(eval_):,}",
           "" if c.is_synthetic else f" ({c.source_lang} -> {c.target_lang})")
  return name, train, eval_


def _tokenizer(c: DataConfig, workdir: str, train) -> Tokenizer | MarianTokenizer:
  """The workdir's tokenizer if present, else one trained on both sides of the train split."""
  tok = load_workdir_tokenizer(workdir)
  if tok is not None:
    log.info("Reusing the tokenizer %s (%d pieces).", tok.path, tok.vocab_size)
    if tok.vocab_size > c.vocab_size and isinstance(tok, Tokenizer):
      log.warning("%s has %d pieces but data.vocab_size=%d; delete it to retrain.", tok.path,
                  tok.vocab_size, c.vocab_size)
    return tok
  path = os.path.join(workdir, TOKENIZER_FILE)
  n = len(train)
  if 2 * n > c.tokenizer_max_sentences:  # A seeded sample of pairs, kept in corpus order.
    train = train.select(
        np.sort(np.random.default_rng(0).choice(n, c.tokenizer_max_sentences // 2, False)))
  # Source and target of each pair in turn; blank sentences are dropped by Tokenizer.train.
  texts = [s or "" for pair in zip(train["source"], train["target"]) for s in pair]
  return Tokenizer.train(texts, c.vocab_size, path, model_type=c.tokenizer_type,
                         max_sentences=c.tokenizer_max_sentences)


def _texts(split, indices: np.ndarray) -> tuple[list[str], list[str]]:
  """Source and target text of the examples `indices` of `split`, in that order."""
  rows = split.select(indices)
  return ([(s or "").strip() for s in rows["source"]], [(t or "").strip() for t in rows["target"]])
