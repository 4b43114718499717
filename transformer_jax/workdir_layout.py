"""Every file and folder of a workdir, named in one place (no imports beyond the standard library).

```
WORKDIR/
  train.lock              one writer at a time (workdir.WorkdirLock)
  corpus.json             the corpus and tokenizer fingerprints (workdir.check_corpus)
  tokenizer.model         the trained SentencePiece model (data.bundle)
  marian_tokenizer/       an imported OPUS-MT tokenizer (import_marian), instead of the above
  marian_import.json      what import_marian imported, and its experiment config
  data_cache/             tokenized corpora, keyed by fingerprint (data.bundle)
  metrics.jsonl           one JSON object per logged step (monitoring.MetricsWriter)
  tensorboard/            the same metrics as TensorBoard events
  curves.png              the training curves, redrawn at the end of a run
  decode_tuning.json      tune_decoding's grid and its best setting
  checkpoints/<step>/     the training checkpoints: state/, data/, config/, integrity.json
  checkpoints/.pins/      readers' pins (integrity.Pin)
  checkpoints/corrupt-<step>-<time>/   a checkpoint that failed verification, set aside
  averaged/<step>/        the average of the last checkpoints (average_checkpoints)
```
"""

from __future__ import annotations

import os

LOCK_FILE = "train.lock"
CORPUS_FILE = "corpus.json"
TOKENIZER_FILE = "tokenizer.model"
MARIAN_TOKENIZER_DIR = "marian_tokenizer"
MARIAN_IMPORT_FILE = "marian_import.json"
DATA_CACHE_DIR = "data_cache"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
CURVES_FILE = "curves.png"
DECODE_TUNING_FILE = "decode_tuning.json"
CHECKPOINTS_DIR = "checkpoints"
AVERAGED_DIR = "averaged"

# Inside each checkpoint directory (`checkpoints/` or `averaged/`).
INTEGRITY_FILE = "integrity.json"
PIN_DIR = ".pins"
CORRUPT_PREFIX = "corrupt-"

# Names whose presence means a workdir already holds a model.
MODEL_ENTRIES = (CHECKPOINTS_DIR, MARIAN_TOKENIZER_DIR, TOKENIZER_FILE)
# What training and importing own: no other command's output may name these.
OWNED_ENTRIES = (LOCK_FILE, CORPUS_FILE, TOKENIZER_FILE, MARIAN_TOKENIZER_DIR, MARIAN_IMPORT_FILE,
                 DATA_CACHE_DIR, METRICS_FILE, TENSORBOARD_DIR, CURVES_FILE, CHECKPOINTS_DIR,
                 AVERAGED_DIR)


def owned_entry(workdir: str, target: str) -> str | None:
  """The entry of `OWNED_ENTRIES` that `target` is or lies in (paths resolved), else None."""
  root = os.path.realpath(workdir)
  resolved = os.path.realpath(target)
  for name in OWNED_ENTRIES:
    entry = os.path.join(root, name)
    if resolved == entry or resolved.startswith(entry + os.sep):
      return name
  return None


def check_local(workdir: str) -> str:
  """`workdir` if it is a local (or mounted) path; a ValueError for a URL such as gs://..."""
  if "://" in workdir:
    raise ValueError(
        f"--workdir {workdir}: object-store workdirs are not supported (the lock, metrics, "
        "tokenizer and data cache are local files). Use a local disk, or mount the bucket "
        "(e.g. gcsfuse) and give its mount path.")
  return workdir


def path(workdir: str, name: str) -> str:
  """`WORKDIR/name`."""
  return os.path.join(workdir, name)


def checkpoint_dir(workdir: str, subdir: str = CHECKPOINTS_DIR) -> str:
  """The absolute directory of a workdir's checkpoints (`checkpoints/`, or `averaged/`)."""
  return os.path.join(os.path.abspath(workdir), subdir)
