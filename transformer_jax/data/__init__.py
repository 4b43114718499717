"""The data pipeline: corpora, the SentencePiece tokenizer, packed and evaluation batches.

The training code calls `create_datasets(config.data, workdir, seed=..., process_index=...,
process_count=...)`; the parts are exported for other uses (translation, benchmarks, tests).
Each name is imported from its module on first use, so that importing one light module (say
`transformer_jax.data.tokenizer`, as translate.py does) does not import grain and datasets.
"""

import importlib

_EXPORTS = {
    "bundle": ("DataBundle", "create_datasets", "load_split"),
    "corpus": ("hub_to_pairs", "load_hub_split", "load_jsonl", "load_local_split",
               "load_parallel_files", "load_tsv", "pairs_to_dataset", "read_lines"),
    "pipeline": ("BATCH_KEYS", "TokenizedSplit", "TrainIterator", "filter_pairs",
                 "make_eval_batches", "make_example", "make_train_iterator", "tokenize_split"),
    "synthetic": ("synthetic_pairs", "synthetic_splits"),
    "marian_tokenizer": ("MarianTokenizer",),
    "tokenizer": ("Tokenizer",),
    "workdir_tokenizer": ("load_workdir_tokenizer",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted([*_MODULE_OF, "DataConfig"])


def __getattr__(name: str):
  if name == "DataConfig":
    from transformer_jax.experiment_config import DataConfig  # pylint: disable=import-outside-toplevel
    return DataConfig
  if name not in _MODULE_OF:
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
  return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)


def __dir__() -> list[str]:
  return sorted([*globals(), *__all__])
