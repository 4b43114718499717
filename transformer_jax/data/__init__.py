"""The data pipeline: corpora, the SentencePiece tokenizer, packed and evaluation batches.

The training code calls `create_datasets(config.data, workdir, seed=..., process_index=...,
process_count=...)`; the parts are exported for other uses (translation, benchmarks, tests).
"""

from transformer_jax.data.bundle import DataBundle, create_datasets, load_split
from transformer_jax.data.corpus import (
    hub_to_pairs,
    load_hub_split,
    load_jsonl,
    load_local_split,
    load_parallel_files,
    load_tsv,
    pairs_to_dataset,
    read_lines,
)
from transformer_jax.data.pipeline import (
    BATCH_KEYS,
    TokenizedSplit,
    TrainIterator,
    filter_pairs,
    make_eval_batches,
    make_example,
    make_train_iterator,
    tokenize_split,
)
from transformer_jax.data.synthetic import synthetic_pairs, synthetic_splits
from transformer_jax.data.marian_tokenizer import MarianTokenizer
from transformer_jax.data.tokenizer import Tokenizer
from transformer_jax.experiment_config import DataConfig

__all__ = [
    "BATCH_KEYS", "DataBundle", "DataConfig", "MarianTokenizer", "TokenizedSplit", "Tokenizer",
    "TrainIterator",
    "create_datasets", "filter_pairs", "hub_to_pairs", "load_hub_split", "load_jsonl",
    "load_local_split", "load_parallel_files", "load_split", "load_tsv", "make_eval_batches",
    "make_example", "make_train_iterator", "pairs_to_dataset", "read_lines", "synthetic_pairs",
    "synthetic_splits", "tokenize_split",
]
