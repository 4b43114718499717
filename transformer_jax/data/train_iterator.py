"""The training iterator: packed windows (made in-process or by worker processes) cut into
batches, with a position that can be saved and restored exactly."""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from transformer_jax.data import packing, workers
from transformer_jax.data.token_cache import TokenizedSplit

log = logging.getLogger(__name__)

STATE_VERSION = 2
Window = tuple[int, int]  # (epoch, window index)


class TrainIterator:
  """Infinite (or `num_epochs`) per-process training batches whose position can be saved.

  `get_state()` is a JSON-serializable dict; `set_state(state)` on an iterator built from the
  same corpus and settings continues with exactly the batch that followed the saved state, for
  any number of workers. The owner stops the workers and threads with `close()`, or uses the
  iterator as a context manager; one that is never closed is closed when it is collected, or
  at exit.
  """

  def __init__(self, planner: packing.WindowPlanner, source: _WindowSource, *, batch_rows: int,
               rows: slice, num_epochs: int | None, signature: dict[str, Any]):
    self._planner, self._source = planner, source
    self._batch_rows, self._rows, self._num_epochs = batch_rows, rows, num_epochs
    self._signature = signature
    self._position: dict[str, int] = {"epoch": 0, "window": 0, "row": 0}
    self._current: tuple[Window, dict[str, np.ndarray]] | None = None
    self._release: Callable[[], None] = _nothing  # Frees the current window's rows.
    # Per instance: closes the workers when this object is collected, or at exit while the
    # modules still exist; the callback holds the source, not `self`.
    self._finalizer = weakref.finalize(self, source.close)

  def __iter__(self) -> TrainIterator:
    return self

  def __enter__(self) -> TrainIterator:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def close(self) -> None:
    """Stops the workers / prefetch thread; idempotent. Using the iterator afterwards (next,
    get_state, set_state) raises ValueError."""
    self._finalizer()

  def worker_pids(self) -> list[int]:
    """The ids of the worker processes making the batches ([] when made in this process)."""
    pool = self._source._pool  # pylint: disable=protected-access
    return pool.pids if pool is not None else []

  def _check_open(self) -> None:
    if not self._finalizer.alive:
      raise ValueError("The training iterator is closed.")

  def __next__(self) -> dict[str, np.ndarray]:
    self._check_open()
    parts, need, done = [], self._batch_rows, []
    while need:
      window = self._window_rows(done)
      if window is None:  # The last epoch is done.
        break
      start, num_rows = self._position["row"], len(window["src"])
      if start >= num_rows:  # A position saved with other settings: the next window.
        self._advance(num_rows, num_rows)
        continue
      take = min(need, num_rows - start)
      parts.append({k: v[start:start + take] for k, v in window.items()})
      need -= take
      self._advance(start + take, num_rows)
    if not parts:
      raise StopIteration
    # A copy: the window's rows may live in a worker's slot, which is reused.
    batch = {k: np.concatenate([p[k] for p in parts]) if len(parts) > 1 else parts[0][k].copy()
             for k in packing.BATCH_KEYS}
    for release in done:  # Windows left behind, now that their rows are copied.
      release()
    if need:  # The stream ended mid-batch: complete it with empty rows.
      batch = {k: np.pad(v, ((0, need), (0, 0))) for k, v in batch.items()}
    return {k: v[self._rows] for k, v in batch.items()}

  def _window_rows(self, done: list) -> dict[str, np.ndarray] | None:
    """The rows of the window at the current position (None after the last epoch); the
    release of a window left behind goes to `done`, for after its rows are copied."""
    key = (self._position["epoch"], self._position["window"])
    if self._num_epochs is not None and key[0] >= self._num_epochs:
      return None
    if self._current is None or self._current[0] != key:
      done.append(self._release)
      self._release, self._current = _nothing, None
      rows, self._release = self._source.get(key)
      self._current = (key, rows)
    return self._current[1]

  def _drop_current(self) -> None:
    release, self._release, self._current = self._release, _nothing, None
    release()

  def _advance(self, row: int, num_rows: int) -> None:
    if row < num_rows:
      self._position["row"] = row
      return
    window = self._position["window"] + 1
    epoch = self._position["epoch"]
    if window == self._planner.windows_per_epoch:
      epoch, window = epoch + 1, 0
    self._position = {"epoch": epoch, "window": window, "row": 0}

  def get_state(self) -> dict[str, Any]:
    self._check_open()
    return {"version": STATE_VERSION, "pipeline": dict(self._signature),
            "position": dict(self._position)}

  def set_state(self, state: dict[str, Any]) -> None:
    """Continues after the batch at which `state` was saved.

    A state of the grain pipeline (before data-iterator version 2) restarts the order at the
    first batch with a warning; anything else that does not fit raises ValueError.
    """
    self._check_open()
    if isinstance(state, dict) and "grain" in state and "position" not in state:
      log.warning("The saved data-iterator state is from the grain pipeline of an earlier "
                  "version; the batch order restarts from the first batch of epoch 0.")
      self._drop_current()
      self._position = {"epoch": 0, "window": 0, "row": 0}
      return
    if not isinstance(state, dict) or "position" not in state:
      raise ValueError(f"Not a data-iterator state (expected a dict with 'position'): "
                       f"{state!r:.200}.")
    saved = state.get("pipeline", {})
    changed = {k: (saved.get(k), v) for k, v in self._signature.items() if saved.get(k) != v}
    if changed:
      log.warning("Resuming the data iterator with changed settings %s (saved, now): the batch "
                  "order differs from an uninterrupted run.", changed)
    try:
      position = {k: int(state["position"][k]) for k in ("epoch", "window", "row")}
    except (KeyError, TypeError, ValueError) as e:
      raise ValueError(f"Not a data-iterator position: {state['position']!r:.200}.") from e
    if (min(position.values()) < 0 or position["window"] >= self._planner.windows_per_epoch):
      raise ValueError(f"The saved data-iterator position {position} does not fit this "
                       f"pipeline; the settings changed: {changed}. Restore them, or start a new "
                       "workdir.")
    self._drop_current()
    self._position = position


def _nothing() -> None:
  pass


class _WindowSource:
  """Windows in stream order, prepared ahead: in this process (a thread) or by workers.

  `get(key)` returns the rows of window `key` and a function to call once they are read;
  asked in stream order it finds them ready.
  """

  def __init__(self, planner: packing.WindowPlanner, tokens: TokenizedSplit, *, seq_len: int,
               bos_id: int, eos_id: int, packing_on: bool, num_epochs: int | None,
               num_workers: int, prefetch: int):
    self._planner, self._tokens = planner, tokens
    self._format = dict(seq_len=seq_len, bos_id=bos_id, eos_id=eos_id)
    self._packing, self._num_epochs = packing_on, num_epochs
    self._permutations: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
    self._ahead: collections.deque[Window] = collections.deque()
    self._futures: collections.deque = collections.deque()
    self._pool, self._thread, self._tmpdir = None, None, None
    if num_workers:
      files = tokens.files()
      if files is None:  # In-memory ids: memory-map a temporary copy for the workers.
        self._tmpdir = tempfile.mkdtemp(prefix="transformer_jax_tokens_")
        files = tokens.save(os.path.join(self._tmpdir, "tokens"))
      self._pool = workers.WorkerPool(num_workers, files, packing=packing_on, seed=planner.seed,
                                      max_rows=planner.window, depth=max(prefetch, 1),
                                      **self._format)
      self._capacity = self._pool.capacity
    else:
      self._capacity = prefetch
      if prefetch:
        self._thread = concurrent.futures.ThreadPoolExecutor(1, "transformer_jax_batches")

  def get(self, key: Window) -> tuple[dict[str, np.ndarray], Callable[[], None]]:
    if self._ahead and self._ahead[0] != key:  # Moved (set_state): drop what was prepared.
      self._drop_ahead()
    if not self._capacity:
      return self._make(key), _nothing
    if not self._ahead:
      self._ahead.append(key)
      self._submit(key)
    while len(self._ahead) < self._capacity:
      nxt = self._following(self._ahead[-1])
      if nxt is None:
        break
      self._ahead.append(nxt)
      self._submit(nxt)
    self._ahead.popleft()
    return self._collect()

  def _following(self, key: Window) -> Window | None:
    epoch, window = key[0], key[1] + 1
    if window == self._planner.windows_per_epoch:
      epoch, window = epoch + 1, 0
    if self._num_epochs is not None and epoch >= self._num_epochs:
      return None
    return epoch, window

  def _examples(self, key: Window) -> packing.WindowExamples:
    epoch, window = key
    if epoch not in self._permutations:
      self._permutations[epoch] = self._planner.permutation(epoch)
      if len(self._permutations) > 2:
        self._permutations.popitem(last=False)
    return self._planner.examples(window, self._permutations[epoch])

  def _make(self, key: Window) -> dict[str, np.ndarray]:
    rows = packing.pack_rows(self._examples(key), seq_len=self._format["seq_len"],
                             packing=self._packing, seed=self._planner.seed, epoch=key[0],
                             window=key[1])
    return packing.assemble(*self._tokens.arrays(), rows, **self._format)

  def _submit(self, key: Window) -> None:
    if self._pool is not None:
      self._pool.submit(self._examples(key), *key)
    else:
      self._futures.append(self._thread.submit(self._make, key))

  def _collect(self) -> tuple[dict[str, np.ndarray], Callable[[], None]]:
    if self._pool is not None:
      return self._pool.result()
    return self._futures.popleft().result(), _nothing

  def _drop_ahead(self) -> None:
    while self._ahead:
      self._ahead.popleft()
      self._collect()[1]()

  def close(self) -> None:
    if self._pool is not None:
      self._pool.close()
    if self._thread is not None:
      for f in self._futures:
        f.cancel()
      self._thread.shutdown(wait=True)
    if self._tmpdir is not None:
      shutil.rmtree(self._tmpdir, ignore_errors=True)
