"""Token ids (cached), filtering, and batches: packed, seeded, resumable training batches through
grain, and in-order evaluation batches.

A batch is a dict of int32 numpy arrays, all `[B, L]`:
  src            source ids followed by EOS; 0 = padding
  tgt_in         BOS followed by target ids (the decoder input, shifted right)
  tgt_out        target ids followed by EOS (the labels; loss where tgt_segments > 0)
  src_segments   1, 2, ... for the packed examples of a row, 0 on padding (same for tgt_*)
  tgt_segments
  src_positions  0, 1, ... restarting at each example, 0 on padding
  tgt_positions
A pair's source and target go into the same row with the same segment number, so the model's
segment masks keep every example to itself. Evaluation batches hold one example per row
(segments 1, positions 0..n-1) and empty rows at the end of the last batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import weakref
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np

from transformer_jax.data.tokenizer import Tokenizer

log = logging.getLogger(__name__)

BATCH_KEYS = ("src", "tgt_in", "tgt_out", "src_segments", "tgt_segments", "src_positions",
              "tgt_positions")
_CACHE_VERSION = "1"  # Bump when the cached token format changes.
_STATE_VERSION = 1


# ----------------------------------------------------------------------------- token ids


@dataclasses.dataclass(frozen=True)
class TokenizedSplit:
  """Token ids of a corpus split, flat: example i's source is `src_values[src_offsets[i]:
  src_offsets[i + 1]]` (no BOS/EOS); the same for the target."""
  src_values: np.ndarray
  src_offsets: np.ndarray
  tgt_values: np.ndarray
  tgt_offsets: np.ndarray

  def __len__(self) -> int:
    return len(self.src_offsets) - 1

  def src(self, i: int) -> np.ndarray:
    return self.src_values[self.src_offsets[i]:self.src_offsets[i + 1]]

  def tgt(self, i: int) -> np.ndarray:
    return self.tgt_values[self.tgt_offsets[i]:self.tgt_offsets[i + 1]]

  @property
  def src_lengths(self) -> np.ndarray:
    return np.diff(self.src_offsets)

  @property
  def tgt_lengths(self) -> np.ndarray:
    return np.diff(self.tgt_offsets)


def tokenize_split(corpus, tokenizer: Tokenizer, cache_dir: str | None,
                   name: str = "split") -> TokenizedSplit:
  """Token ids of every pair (empty pairs stay, as empty id lists), cached on disk.

  Tokenization runs through `datasets.Dataset.map(batched=True)` into the Arrow file
  `cache_dir/tokens-{name}-{key}.arrow`, keyed on the dataset's fingerprint (a content hash for
  `corpus.pairs_to_dataset`, the hub's own otherwise) and the tokenizer model, so a restart loads
  ids instead of recomputing them.

  Args:
    corpus: A `datasets.Dataset` with string columns `source` and `target`
      (`corpus.pairs_to_dataset` makes one from a list of pairs).
    tokenizer: The shared tokenizer.
    cache_dir: Directory of the cache file; None = no cache (in memory).
    name: Names the cache file and log lines (e.g. "train").

  Raises:
    TypeError: `corpus` is not such a dataset.
  """
  import datasets  # pylint: disable=g-import-not-at-top
  if not (isinstance(corpus, datasets.Dataset) and
          {"source", "target"} <= set(corpus.column_names)):
    raise TypeError(f"tokenize_split takes a datasets.Dataset with columns 'source' and "
                    f"'target', not {type(corpus).__name__}; convert a list of pairs with "
                    "transformer_jax.data.corpus.pairs_to_dataset(pairs).")
  fingerprint = corpus._fingerprint  # pylint: disable=protected-access
  key = hashlib.sha1(f"{_CACHE_VERSION}|{fingerprint}|{tokenizer.fingerprint}"
                     .encode()).hexdigest()[:16]
  cache_file = None
  if cache_dir:
    os.makedirs(cache_dir, exist_ok=True)
    cache_file = os.path.join(cache_dir, f"tokens-{name}-{key}.arrow")
    cached = os.path.exists(cache_file)
    log.info("%s: %s token ids %s %s.", name, "loading" if cached else "computing and caching",
             "from" if cached else "in", cache_file)

  def encode(batch):
    return {"src": _encode_texts(tokenizer, batch["source"]),
            "tgt": _encode_texts(tokenizer, batch["target"], target=True)}

  features = datasets.Features({"src": datasets.Sequence(datasets.Value("int32")),
                                "tgt": datasets.Sequence(datasets.Value("int32"))})
  tokens = corpus.map(encode, batched=True, batch_size=10_000,
                      remove_columns=corpus.column_names, features=features,
                      cache_file_name=cache_file, load_from_cache_file=True,
                      keep_in_memory=cache_file is None, new_fingerprint=key,
                      desc=f"Tokenizing {name}")
  src_values, src_offsets = _flat_list_column(tokens.data.column("src"))
  tgt_values, tgt_offsets = _flat_list_column(tokens.data.column("tgt"))
  return TokenizedSplit(src_values, src_offsets, tgt_values, tgt_offsets)


def _encode_texts(tokenizer: Tokenizer, texts: Sequence[str | None], *,
                  target: bool = False) -> list[list[int]]:
  texts = [(t or "").strip() for t in texts]
  ids = tokenizer.encode_batch(texts, target=target)
  return [x if t else [] for t, x in zip(texts, ids)]


def _flat_list_column(column) -> tuple[np.ndarray, np.ndarray]:
  """(values, offsets) of an Arrow list<int32> column, without copying when possible."""
  array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
  offsets = array.offsets.to_numpy().astype(np.int64)
  values = array.values.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
  return values, offsets


def filter_pairs(tokens: TokenizedSplit, max_len: int | None, name: str = "split") -> np.ndarray:
  """Indices of the pairs kept: both sides non-empty and at most `max_len` tokens with the
  EOS / BOS the model adds (so `len(ids) + 1 <= max_len`; None = any length). Drops are
  counted in the log.

  Raises:
    ValueError: nothing is left.
  """
  src_len, tgt_len = tokens.src_lengths, tokens.tgt_lengths
  empty = (src_len == 0) | (tgt_len == 0)
  limit = np.iinfo(np.int64).max if max_len is None else max_len
  too_long = ~empty & ((src_len + 1 > limit) | (tgt_len + 1 > limit))
  keep = np.flatnonzero(~(empty | too_long))
  n = len(tokens)
  message = (f"{name}: kept {len(keep):,} of {n:,} pairs; dropped {int(empty.sum()):,} with an "
             f"empty side and {int(too_long.sum()):,} longer than max_len={max_len} tokens.")
  if len(keep) < n:
    log.warning(message)
  else:
    log.info(message)
  if not len(keep):
    longest = int(max(src_len.max(initial=0), tgt_len.max(initial=0)))
    raise ValueError(f"{message} No pair is left: check the corpus or raise data.max_len "
                     f"(the longest side has {longest} tokens without EOS).")
  return keep


def make_example(src_ids: np.ndarray, tgt_ids: np.ndarray, bos_id: int,
                 eos_id: int) -> dict[str, np.ndarray]:
  """One unpadded example: `src` = ids + EOS, `tgt_in` = BOS + ids, `tgt_out` = ids + EOS."""
  eos = np.array([eos_id], np.int32)
  tgt_ids = np.asarray(tgt_ids, np.int32)
  return {"src": np.concatenate([np.asarray(src_ids, np.int32), eos]),
          "tgt_in": np.concatenate([np.array([bos_id], np.int32), tgt_ids]),
          "tgt_out": np.concatenate([tgt_ids, eos])}


class PairSource(Sequence):
  """Random access to the examples `indices` of a `TokenizedSplit` (a grain data source)."""

  def __init__(self, tokens: TokenizedSplit, indices: np.ndarray, bos_id: int, eos_id: int):
    self._tokens, self._indices = tokens, np.asarray(indices, np.int64)
    self._bos_id, self._eos_id = bos_id, eos_id

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, i):
    j = self._indices[i]
    return make_example(self._tokens.src(j), self._tokens.tgt(j), self._bos_id, self._eos_id)


# ----------------------------------------------------------------------------- training batches


class TrainIterator:
  """Infinite per-process training batches whose position can be saved and restored.

  `get_state()` is a JSON-serializable dict; `set_state(state)` on an iterator built from the
  same corpus and settings continues with exactly the batch that followed the saved state.
  The owner stops the prefetch thread with `close()`, or uses the iterator as a context manager
  (`with make_train_iterator(...) as it:`); one that is never closed is closed when it is
  collected, or at exit.
  """

  def __init__(self, dataset: grain.IterDataset, rows: slice, signature: dict[str, Any]):
    self._pipeline = _OpenPipeline(iter(dataset))
    self._rows = rows
    self._signature = signature
    # Per instance, not a registry of ours: weakref.finalize calls `release` when this object is
    # collected or, if it is still alive then, at exit while grain's modules still exist (grain's
    # own __del__ would close it later, during module teardown, printing "Exception ignored").
    # The callback holds the pipeline, not `self`, so it does not keep this iterator alive.
    self._finalizer = weakref.finalize(self, self._pipeline.release)

  def __iter__(self) -> TrainIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._pipeline.iterator())
    return {k: batch[k][self._rows] for k in BATCH_KEYS}

  def __enter__(self) -> TrainIterator:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def close(self) -> None:
    """Stops the prefetch thread and frees the pipeline; idempotent.

    Using the iterator afterwards (next, get_state, set_state) raises ValueError.
    """
    self._finalizer()

  def get_state(self) -> dict[str, Any]:
    return {"version": _STATE_VERSION, "pipeline": dict(self._signature),
            "grain": self._pipeline.iterator().get_state()}

  def set_state(self, state: dict[str, Any]) -> None:
    if not isinstance(state, dict) or "grain" not in state:
      raise ValueError(f"Not a data-iterator state (expected a dict with 'grain'): {state!r:.200}.")
    saved = state.get("pipeline", {})
    changed = {k: (saved.get(k), v) for k, v in self._signature.items() if saved.get(k) != v}
    if changed:
      log.warning("Resuming the data iterator with changed settings %s (saved, now): the batch "
                  "order differs from an uninterrupted run.", changed)
    iterator = self._pipeline.iterator()
    try:
      iterator.set_state(state["grain"])
    except (KeyError, TypeError, ValueError, IndexError) as e:
      raise ValueError(f"The saved data-iterator state does not fit this pipeline ({e!r}); the "
                       f"settings changed: {changed}. Restore them, or start a new workdir.") from e


class _OpenPipeline:
  """A TrainIterator's grain iterator, until `release` closes and drops it."""

  def __init__(self, iterator: grain.DatasetIterator):
    self._iterator = iterator

  def iterator(self) -> grain.DatasetIterator:
    if self._iterator is None:
      raise ValueError("The training iterator is closed.")
    return self._iterator

  def release(self) -> None:
    # Dropped, not only closed: grain's prefetch iterator closes itself again in __del__, which
    # must happen now rather than during interpreter teardown.
    iterator, self._iterator = self._iterator, None
    if iterator is not None:
      iterator.close()


def make_train_iterator(tokens: TokenizedSplit, indices: np.ndarray, *, bos_id: int, eos_id: int,
                        batch_size: int, seq_len: int, packing: bool = True, seed: int = 0,
                        process_index: int = 0, process_count: int = 1,
                        process_sharding: str = "shard", packing_bins: int = 0,
                        num_epochs: int | None = None, prefetch: int = 2) -> TrainIterator:
  """Shuffled (reseeded every epoch), infinitely repeated, packed or padded batches.

  Args:
    tokens, indices: The examples (see `tokenize_split`, `filter_pairs`).
    bos_id, eos_id: Special ids of the tokenizer.
    batch_size: Global rows per batch; each process gets batch_size / process_count rows.
    seq_len: Row length L; every example must fit (`filter_pairs` with max_len <= seq_len).
    packing: First-fit pack several examples per row (else one example per row).
    seed: Shuffle and bin-shuffle seed.
    process_index, process_count: This process and how many share the batch.
    process_sharding: "shard": each process reads a disjoint 1/P of the examples;
      "rows": every process builds the same global batch and keeps rows
      [i * B / P, (i + 1) * B / P), so the global batch is the same for any P (the choice is
      validated by `DataConfig`; anything but "rows" shards).
    packing_bins: First-fit bins open at once (0 = max(per-pipeline rows, 256)); more bins
      pack tighter.
    num_epochs: None = repeat forever (training); N = stop after N epochs, the last batch
      completed with empty rows (for tests and benchmarks).
    prefetch: Batches prepared ahead in a background thread while the model trains (0 = off);
      the saved state still points just after the last batch handed out.
  """
  local_rows = rows_per_process(batch_size, process_index, process_count, "data.batch_size")
  by_rows = process_sharding == "rows"
  longest = int(max(tokens.src_lengths[indices].max(), tokens.tgt_lengths[indices].max())) + 1
  if longest > seq_len:
    raise ValueError(f"An example has {longest} tokens (with EOS/BOS) but rows hold data.seq_len="
                     f"{seq_len}; set data.max_len <= data.seq_len.")
  ds = grain.MapDataset.source(PairSource(tokens, indices, bos_id, eos_id))
  if not by_rows and process_count > 1:
    ds = ds[process_index::process_count]
    if len(ds) == 0:
      raise ValueError(f"Process {process_index} of {process_count} got no training examples "
                       f"({len(indices)} in all); use process_sharding='rows' for tiny corpora.")
  pipeline_rows = batch_size if by_rows else local_rows
  ds = ds.shuffle(seed=seed).repeat(num_epochs)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
  if packing:
    lengths = {"src": seq_len, "tgt_in": seq_len, "tgt_out": seq_len}
    it = grain.experimental.FirstFitPackIterDataset(
        it, length_struct=lengths, num_packing_bins=packing_bins or max(pipeline_rows, 256),
        seed=seed, shuffle_bins=True)
    it = it.map(_rename_packed)
  else:
    it = it.map(lambda ex: _pad_example(ex, seq_len))
  it = it.batch(pipeline_rows, drop_remainder=num_epochs is None)
  if num_epochs is not None:
    it = it.map(lambda batch: _pad_rows(batch, pipeline_rows))
  if prefetch:
    it = grain.experimental.ThreadPrefetchIterDataset(it, prefetch_buffer_size=prefetch)
  rows = (slice(process_index * local_rows, (process_index + 1) * local_rows) if by_rows
          else slice(None))
  signature = {"num_examples": int(len(indices)), "batch_size": batch_size, "seq_len": seq_len,
               "packing": bool(packing), "seed": seed, "process_count": process_count,
               "process_sharding": process_sharding}
  return TrainIterator(it, rows, signature)


def rows_per_process(batch_size: int, process_index: int, process_count: int,
                     key: str = "data.batch_size") -> int:
  """`batch_size / process_count`: the rows each process feeds of a global batch.

  Raises:
    ValueError: `batch_size` (the setting `key`) is not a positive multiple of `process_count`,
      or `process_index` is not in [0, process_count).
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is outside [0, process_count="
                     f"{process_count}).")
  if batch_size <= 0 or batch_size % process_count:
    raise ValueError(f"{key}={batch_size} must be a positive multiple of the process count "
                     f"{process_count}: each process feeds batch_size / process_count rows.")
  return batch_size // process_count


def _rename_packed(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {"src": row["src"], "tgt_in": row["tgt_in"], "tgt_out": row["tgt_out"],
          "src_segments": row["src_segment_ids"], "tgt_segments": row["tgt_in_segment_ids"],
          "src_positions": row["src_positions"], "tgt_positions": row["tgt_in_positions"]}


def _pad_rows(batch: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
  """Completes a short final batch with empty rows."""
  return {k: np.pad(v, ((0, rows - len(v)), (0, 0))) for k, v in batch.items()}


def _pad_example(example: dict[str, np.ndarray], length: int) -> dict[str, np.ndarray]:
  """One example alone in a row of `length`: segments 1, positions 0..n-1, zeros after."""
  row = {}
  for key, side in (("src", "src"), ("tgt_in", "tgt"), ("tgt_out", None)):
    ids = example[key]
    padded = np.zeros(length, np.int32)
    padded[:len(ids)] = ids
    row[key] = padded
    if side:
      segments = np.zeros(length, np.int32)
      segments[:len(ids)] = 1
      positions = np.zeros(length, np.int32)
      positions[:len(ids)] = np.arange(len(ids))
      row[f"{side}_segments"], row[f"{side}_positions"] = segments, positions
  return row


# ----------------------------------------------------------------------------- evaluation batches


def eval_length(tokens: TokenizedSplit, indices: np.ndarray, multiple: int = 8) -> int:
  """Row length for evaluation: the longest example (with EOS/BOS), rounded up to `multiple`."""
  longest = int(max(tokens.src_lengths[indices].max(), tokens.tgt_lengths[indices].max())) + 1
  return -(-longest // multiple) * multiple


def make_eval_batches(tokens: TokenizedSplit, indices: np.ndarray, *, bos_id: int, eos_id: int,
                      batch_size: int, seq_len: int | None = None, process_index: int = 0,
                      process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
  """Every example once, in order, one per row, in fixed-shape `[batch_size / P, seq_len]`
  batches; the last global batch is completed with empty rows (all 0). Process i gets rows
  [i * B / P, (i + 1) * B / P) of each global batch.

  Args:
    seq_len: Row length; None = `eval_length(tokens, indices)`.

  Raises:
    ValueError: (at the call, not the first batch) `batch_size` is not a multiple of
      `process_count`.
  """
  local = rows_per_process(batch_size, process_index, process_count, "data.eval_batch_size")
  return _eval_batches(tokens, indices, bos_id, eos_id, batch_size, local,
                       seq_len or eval_length(tokens, indices), process_index)


def _eval_batches(tokens: TokenizedSplit, indices: np.ndarray, bos_id: int, eos_id: int,
                  batch_size: int, local: int, seq_len: int,
                  process_index: int) -> Iterator[dict[str, np.ndarray]]:
  """The batches of `make_eval_batches`, once its arguments are checked."""
  empty = {k: np.zeros(seq_len, np.int32) for k in BATCH_KEYS}
  for start in range(0, len(indices), batch_size):
    rows = []
    for j in range(start + process_index * local, start + (process_index + 1) * local):
      if j < len(indices):
        i = indices[j]
        rows.append(_pad_example(make_example(tokens.src(i), tokens.tgt(i), bos_id, eos_id),
                                 seq_len))
      else:
        rows.append(empty)
    yield {k: np.stack([r[k] for r in rows]) for k in BATCH_KEYS}
