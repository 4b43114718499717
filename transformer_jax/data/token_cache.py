"""Token ids of a corpus split: tokenized once in batches, cached as memory-mapped `.npy` files.

The arrays are flat (values + offsets), so a batch is a gather from them and worker processes
share them through the page cache instead of holding copies.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
import os
import tempfile
from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)

_CACHE_VERSION = "2"  # Bump when the cached token format changes.
_ARRAYS = ("src_values", "src_offsets", "tgt_values", "tgt_offsets")
_ENCODE_BATCH = 20_000  # Sentences per tokenizer call (its own threads split each call).


@dataclasses.dataclass(frozen=True)
class TokenizedSplit:
  """Token ids of a corpus split, flat: example i's source is `src_values[src_offsets[i]:
  src_offsets[i + 1]]` (no BOS/EOS); the same for the target. Cached splits are read-only
  memory maps."""
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

  def arrays(self) -> tuple[np.ndarray, ...]:
    """(src_values, src_offsets, tgt_values, tgt_offsets)."""
    return tuple(getattr(self, name) for name in _ARRAYS)

  def files(self) -> list[str] | None:
    """The `.npy` files behind the arrays when all four are memory-mapped, else None."""
    names = [getattr(a, "filename", None) for a in self.arrays()]
    return names if all(names) else None

  def save(self, prefix: str) -> list[str]:
    """Writes `{prefix}.{array}.npy` for the four arrays (each atomically); returns the paths."""
    paths = []
    for name, array in zip(_ARRAYS, self.arrays()):
      path = f"{prefix}.{name}.npy"
      fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", suffix=".tmp")
      try:
        with os.fdopen(fd, "wb") as f:
          np.save(f, np.ascontiguousarray(array))
        os.replace(tmp, path)
      except BaseException:
        if os.path.exists(tmp):
          os.remove(tmp)
        raise
      paths.append(path)
    return paths

  @classmethod
  def load(cls, prefix: str) -> TokenizedSplit | None:
    """The split saved at `prefix`, memory-mapped; None if any file is missing."""
    paths = [f"{prefix}.{name}.npy" for name in _ARRAYS]
    if not all(os.path.exists(p) for p in paths):
      return None
    return cls(*(np.load(p, mmap_mode="r") for p in paths))


def tokenize_split(corpus, tokenizer, cache_dir: str | None,
                   name: str = "split") -> TokenizedSplit:
  """Token ids of every pair (empty pairs stay, as empty id lists), cached on disk.

  The corpus is read in batches of 20,000 pairs and each side encoded in one tokenizer call
  (SentencePiece splits it over every core). With `cache_dir` the ids are saved as
  `cache_dir/tokens-{name}-{key}.*.npy`, keyed on the dataset's fingerprint (a content hash
  for `corpus.pairs_to_dataset`, the hub's own otherwise) and the tokenizer model, and a restart
  memory-maps them instead of recomputing.

  Args:
    corpus: A `datasets.Dataset` with string columns `source` and `target`
      (`corpus.pairs_to_dataset` makes one from a list of pairs).
    tokenizer: The shared tokenizer (`encode_batch(texts, target=...)`).
    cache_dir: Directory of the cache files; None = no cache (in memory).
    name: Names the cache files and log lines (e.g. "train").

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
  prefix = None
  if cache_dir:
    prefix = os.path.join(cache_dir, f"tokens-{name}-{key}")
    cached = TokenizedSplit.load(prefix)
    if cached is not None:
      log.info("%s: loading token ids from %s.*.npy.", name, prefix)
      return cached
    log.info("%s: computing and caching token ids in %s.*.npy.", name, prefix)
  tokens = _tokenize(corpus, tokenizer, name)
  if prefix is None:
    return tokens
  os.makedirs(cache_dir, exist_ok=True)
  tokens.save(prefix)
  return TokenizedSplit.load(prefix)


def _tokenize(corpus, tokenizer, name: str) -> TokenizedSplit:
  """Both sides of every pair, encoded batch by batch into flat arrays."""
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  sides = {"src": ([], [np.zeros(1, np.int64)]), "tgt": ([], [np.zeros(1, np.int64)])}
  total = {"src": 0, "tgt": 0}
  with tqdm(total=len(corpus), desc=f"Tokenizing {name}", unit="pair", unit_scale=True,
            mininterval=1.0, disable=len(corpus) < 100_000) as bar:
    for batch in corpus.iter(batch_size=_ENCODE_BATCH):
      for side, column in (("src", "source"), ("tgt", "target")):
        ids = encode_texts(tokenizer, batch[column], target=side == "tgt")
        lengths = np.fromiter(map(len, ids), np.int64, len(ids))
        values, offsets = sides[side]
        values.append(np.fromiter(itertools.chain.from_iterable(ids), np.int32,
                                  int(lengths.sum())))
        offsets.append(total[side] + np.cumsum(lengths))
        total[side] += int(lengths.sum())
      bar.update(len(batch["source"]))
  return TokenizedSplit(*(np.concatenate(part) for side in ("src", "tgt")
                          for part in sides[side]))


def encode_texts(tokenizer, texts: Sequence[str | None], *,
                 target: bool = False) -> list[list[int]]:
  """Ids of each text, stripped; a blank text gives no ids."""
  texts = [(t or "").strip() for t in texts]
  ids = tokenizer.encode_batch(texts, target=target)
  return [x if t else [] for t, x in zip(texts, ids)]
