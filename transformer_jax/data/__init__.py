"""The data pipeline: corpora, the SentencePiece tokenizer, packed and evaluation batches.

The training code calls `create_datasets(config.data, workdir, seed=..., process_index=...,
process_count=...)`; the parts are exported for other uses (translation, benchmarks, tests).
Each name is imported from its module on first use, so that importing one light module (say
`transformer_jax.data.tokenizer`, as translate.py does) does not import datasets (or JAX, in a data worker process).
"""

import importlib

_EXPORTS = {
    "transformer_jax.data.bundle": ("DataBundle", "create_datasets", "load_split"),
    "transformer_jax.data.corpus": (
        "hub_to_pairs", "load_hub_split", "load_jsonl", "load_local_split", "load_parallel_files",
        "load_tsv", "pairs_to_dataset", "read_lines"),
    "transformer_jax.data.pipeline": (
        "BATCH_KEYS", "TokenizedSplit", "TrainIterator", "filter_pairs", "make_eval_batches",
        "make_example", "make_train_iterator", "tokenize_split"),
    "transformer_jax.data.workers": ("DataWorkerError",),
    "transformer_jax.data.synthetic": ("synthetic_pairs", "synthetic_splits"),
    "transformer_jax.data.marian_tokenizer": ("MarianTokenizer",),
    "transformer_jax.data.tokenizer": ("Tokenizer",),
    "transformer_jax.data.workdir_tokenizer": ("load_workdir_tokenizer",),
    "transformer_jax.experiment_config": ("DataConfig",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
  if name not in _MODULE_OF:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  return getattr(importlib.import_module(_MODULE_OF[name]), name)


def __dir__() -> list[str]:
  return sorted([*globals(), *__all__])
