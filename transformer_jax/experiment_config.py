"""Every experiment setting, declared once: its type, default, valid range and meaning.

An experiment is an `ExperimentConfig`: loop, evaluation and checkpoint settings at the top
level, and three blocks, `model` (a `TransformerConfig`; its vocabulary and special ids come from
the tokenizer), `data` (`DataConfig`) and `optim` (`OptimConfig`). `configs/*.py` start from
`base_config()`, a ConfigDict of these defaults, and override fields; `from_config_dict` then
validates the result once, at the edge (unknown key, wrong type, out-of-range value: one
`ConfigError` naming the key), before anything reads it. Nothing else holds a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import typing
from collections.abc import Mapping
from typing import Any, Literal

import ml_collections

from transformer_jax.config import TransformerConfig, check_choices, choices, require_int

log = logging.getLogger(__name__)

# Fixed by the tokenizer at training time, not by the config.
TOKENIZER_FIELDS = ("vocab_size", "pad_id", "bos_id", "eos_id")
ScheduleKind = Literal["paper", "rsqrt", "cosine", "constant"]
WeightDecayMask = Literal["all", "matrices"]
Parallelism = Literal["jit", "shard_map"]
BleuTokenizer = Literal["13a", "none", "intl", "zh", "char", "ja-mecab", "ko-mecab", "spm",
                        "flores101", "flores200"]
PARALLELISMS = choices(Parallelism)
TokenizerType = Literal["bpe", "unigram"]
ProcessSharding = Literal["shard", "rows"]
SyntheticTask = Literal["dates", "numbers"]


class ConfigError(ValueError):
  """A setting is unknown, of the wrong type, or out of range; the message names its key."""


def _check(condition: bool, key: str, value: Any, requirement: str) -> None:
  if not condition:
    raise ConfigError(f"config.{key}={value!r}: {requirement}.")


def _check_choices(block: Any, prefix: str) -> None:
  check_choices(block, f"config.{prefix}" if prefix else "config", ConfigError)


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """The `data` block: corpus, tokenizer and batches (read by `data.create_datasets`).

  Attributes:
    dataset: "synthetic", a Hugging Face hub id (e.g. "wmt14"), or "" when data_dir is set.
    hub_config: The hub dataset's configuration name (e.g. "de-en"); "" = none.
    data_dir: Local corpus directory; when set it wins over `dataset`.
    file_pattern: File names in data_dir: with "{lang}" two parallel text files per split
      ("{split}.{lang}", ".gz" found too; Multi30k tok/: "{split}.lc.norm.tok.{lang}"); without
      it one ".tsv" or ".jsonl" file per split (e.g. "{split}.tsv").
    source_lang: Source language code: file names, hub "translation" keys, JSONL keys.
    target_lang: Target language code (different from source_lang).
    source_field: Source column / key when it is not the language code ("" = auto; a column
      number for TSV, default 0).
    target_field: Target column / key ("" = auto; TSV default 1).
    translation_field: Name of the hub / JSONL dict column keyed by language.
    train_split: Split name for training.
    eval_split: Split name for evaluation ("validation" on the hub, "val" for Multi30k files).
    vocab_size: Requested SentencePiece vocabulary size, shared by both languages (>= 1).
    tokenizer_type: "bpe" (the paper's) or "unigram".
    tokenizer_max_sentences: Train the tokenizer on at most this many sentences (>= 1).
    max_len: Drop training pairs with more than max_len tokens on a side, counting the EOS / BOS
      the model adds (2 <= max_len <= seq_len; counted in the log).
    eval_max_len: The same for eval pairs; 0 = keep every eval pair (BLEU on the whole set).
    batch_size: Global rows per training batch (>= 1; divisible by the device count).
    seq_len: Tokens per training row L (>= max_len); ~96% are real tokens when packing.
    packing: First-fit pack several pairs per row (else one pair per row).
    packing_window: Consecutive examples (of the shuffled epoch) first-fit packed together
      (0 = auto: max(2048, 4 x rows x seq_len / 32), about 4 batches); larger packs a little
      denser, each worker then holds more rows.
    num_workers: Worker processes that pack and assemble batches (-1 = auto: 0 when training on
      CPU, where the cores run the step, else min(cores - 1, 8)); the batches do not depend on
      it, so a run may resume with another value.
    prefetch: Packing windows prepared ahead, in a background thread or per worker (0 = none).
    eval_batch_size: Global rows per eval batch (>= 1; divisible by the process count).
    num_eval_examples: Use the first N eval pairs (-1 = all).
    process_sharding: "shard": each process reads its own examples; "rows": every process
      builds the global batch and keeps its rows (same batches for any process count).
    synthetic_task: "dates" or "numbers" (dataset="synthetic").
    synthetic_train_size: Synthetic training pairs (>= 1).
    synthetic_eval_size: Synthetic eval pairs, disjoint from train (>= 1).
    synthetic_seed: Seed of the synthetic corpus (independent of the training seed).
  """
  dataset: str = "wmt14"
  hub_config: str = "de-en"
  data_dir: str = ""
  file_pattern: str = "{split}.{lang}"
  source_lang: str = "en"
  target_lang: str = "de"
  source_field: str = ""
  target_field: str = ""
  translation_field: str = "translation"
  train_split: str = "train"
  eval_split: str = "validation"
  vocab_size: int = 37_000
  tokenizer_type: TokenizerType = "bpe"
  tokenizer_max_sentences: int = 2_000_000
  max_len: int = 64
  eval_max_len: int = 0
  batch_size: int = 384
  seq_len: int = 64
  packing: bool = True
  packing_window: int = 0
  num_workers: int = -1
  prefetch: int = 2
  eval_batch_size: int = 64
  num_eval_examples: int = -1
  process_sharding: ProcessSharding = "shard"
  synthetic_task: SyntheticTask = "dates"
  synthetic_train_size: int = 20_000
  synthetic_eval_size: int = 500
  synthetic_seed: int = 0

  def __post_init__(self):
    for name in ("vocab_size", "tokenizer_max_sentences", "batch_size", "seq_len",
                 "eval_batch_size", "synthetic_train_size", "synthetic_eval_size"):
      _check(getattr(self, name) >= 1, f"data.{name}", getattr(self, name), "must be >= 1")
    for name in ("eval_max_len", "packing_window", "prefetch", "synthetic_seed"):
      _check(getattr(self, name) >= 0, f"data.{name}", getattr(self, name), "must be >= 0")
    _check(self.num_eval_examples >= -1, "data.num_eval_examples", self.num_eval_examples,
           "must be >= 0, or -1 for all")
    _check(-1 <= self.num_workers <= 256, "data.num_workers", self.num_workers,
           "must be in [0, 256] worker processes, or -1 for auto (0 on CPU, else one per spare "
           "core, at most 8)")
    _check(self.max_len >= 2, "data.max_len", self.max_len,
           "must be >= 2 (a token and the EOS)")
    _check(self.max_len <= self.seq_len, "data.max_len", self.max_len,
           f"exceeds data.seq_len={self.seq_len}: a pair must fit in a row; lower max_len or "
           "raise seq_len")
    _check_choices(self, "data")
    _check(bool(self.data_dir or self.dataset), "data.dataset", self.dataset,
           "set data.data_dir (a local corpus) or data.dataset ('synthetic' or a hub id)")
    _check(self.source_lang != self.target_lang, "data.target_lang", self.target_lang,
           "is the same as data.source_lang")

  @property
  def is_synthetic(self) -> bool:
    return not self.data_dir and self.dataset == "synthetic"

  def workers_for(self, platform: str, cpu_count: int | None = None) -> int:
    """`num_workers` made concrete for a step on `platform` ("cpu", "gpu", "tpu")."""
    if self.num_workers >= 0:
      return self.num_workers
    if platform == "cpu":
      return 0
    return max(0, min((cpu_count or os.cpu_count() or 1) - 1, 8))

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> DataConfig:
    """Validated block from a mapping; missing keys take their defaults."""
    return _build(cls, values, "data")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """The `optim` block: Adam, the learning-rate schedule, regularization (section 5.3).

  Attributes:
    schedule: paper (d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)), rsqrt (linear warmup
      to peak_learning_rate, then inverse square root), cosine (warmup, cosine decay to
      end_learning_rate_fraction * peak at num_train_steps) or constant.
    warmup_steps: Linear warmup length (>= 1; >= 0 for constant).
    schedule_scale: Multiplier of the paper's schedule (> 0).
    peak_learning_rate: Peak for rsqrt / cosine / constant (> 0).
    end_learning_rate_fraction: Cosine: final learning rate as a fraction of the peak, in [0, 1].
    b1: Adam beta1 (paper 0.9), in [0, 1).
    b2: Adam beta2 (paper 0.98), in [0, 1).
    eps: Adam epsilon (paper 1e-9), > 0.
    weight_decay: Decoupled, as in AdamW: p -= lr * weight_decay * p (paper 0), >= 0.
    weight_decay_mask: Decayed parameters: all, or matrices (kernels and embeddings only).
    label_smoothing: epsilon_ls (paper 0.1), in [0, 1).
    grad_clip_norm: Global-norm gradient clipping (0 = off), >= 0.
    grad_accum_steps: Accumulate gradients over k batches per update (optax.MultiSteps), >= 1.
  """
  schedule: ScheduleKind = "paper"
  warmup_steps: int = 4_000
  schedule_scale: float = 1.0
  peak_learning_rate: float = 1e-3
  end_learning_rate_fraction: float = 0.0
  b1: float = 0.9
  b2: float = 0.98
  eps: float = 1e-9
  weight_decay: float = 0.0
  weight_decay_mask: WeightDecayMask = "all"
  label_smoothing: float = 0.1
  grad_clip_norm: float = 0.0
  grad_accum_steps: int = 1

  def __post_init__(self):
    _check_choices(self, "optim")
    minimum = 0 if self.schedule == "constant" else 1
    _check(self.warmup_steps >= minimum, "optim.warmup_steps", self.warmup_steps,
           f"must be >= {minimum} for the {self.schedule!r} schedule")
    for name in ("schedule_scale", "peak_learning_rate", "eps"):
      _check(getattr(self, name) > 0, f"optim.{name}", getattr(self, name), "must be > 0")
    for name in ("b1", "b2", "label_smoothing"):
      _check(0 <= getattr(self, name) < 1, f"optim.{name}", getattr(self, name),
             "must be in [0, 1)")
    _check(0 <= self.end_learning_rate_fraction <= 1, "optim.end_learning_rate_fraction",
           self.end_learning_rate_fraction, "must be in [0, 1]")
    for name in ("weight_decay", "grad_clip_norm"):
      _check(getattr(self, name) >= 0, f"optim.{name}", getattr(self, name), "must be >= 0")
    _check(self.grad_accum_steps >= 1, "optim.grad_accum_steps", self.grad_accum_steps,
           "must be >= 1")

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> OptimConfig:
    """Validated block from a mapping; missing keys take their defaults."""
    return _build(cls, values, "optim")


def _default_model() -> TransformerConfig:
  return TransformerConfig(vocab_size=DataConfig.vocab_size)


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """A whole experiment: the loop, evaluation and checkpoints, and the model / data / optim blocks.

  Attributes:
    seed: Parameter init, dropout (fold_in(step)) and data shuffling (>= 0).
    num_train_steps: Steps to train (micro-batches when optim.grad_accum_steps > 1), >= 1.
    log_every_steps: metrics.jsonl / TensorBoard / NaN-check interval (>= 1).
    eval_every_steps: Eval loss (and BLEU when eval_bleu_examples != 0) interval; 0 = never.
    checkpoint_every_steps: Orbax checkpoint interval, plus the last step and SIGTERM (>= 1).
    keep_checkpoints: Keep the last K checkpoints (>= 1; the paper averages the last 5)...
    keep_every_steps: ...plus every N-th step forever (0 = none).
    eval_bleu_examples: Decode this many eval sentences for eval_bleu (0 = none, -1 = all).
    eval_beam_size: Beam size for eval_bleu (1 = greedy).
    eval_bleu_tokenize: sacreBLEU tokenizer: 13a on raw text, none on tokenized text.
    num_sample_translations: Sample translations printed at the end (>= 0).
    fsdp: Shard parameters and optimizer state over the data axis (else replicate them).
    parallelism: How the data-parallel step is written: "jit" (global step, collectives
      inserted by XLA) or "shard_map" (per-device step with explicit collectives); the same
      update either way.
    model: The architecture (`TransformerConfig`; vocab_size and special ids: the tokenizer's).
    data: Corpus, tokenizer and batches.
    optim: Optimizer and schedule.
  """
  seed: int = 0
  num_train_steps: int = 100_000
  log_every_steps: int = 100
  eval_every_steps: int = 5_000
  checkpoint_every_steps: int = 5_000
  keep_checkpoints: int = 5
  keep_every_steps: int = 0
  eval_bleu_examples: int = 0
  eval_beam_size: int = 4
  eval_bleu_tokenize: BleuTokenizer = "13a"
  num_sample_translations: int = 3
  fsdp: bool = False
  parallelism: Parallelism = "jit"
  model: TransformerConfig = dataclasses.field(default_factory=_default_model)
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)

  def __post_init__(self):
    _check(self.seed >= 0, "seed", self.seed, "must be >= 0")
    for name in ("num_train_steps", "log_every_steps", "checkpoint_every_steps",
                 "keep_checkpoints", "eval_beam_size"):
      _check(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
    for name in ("eval_every_steps", "keep_every_steps", "num_sample_translations"):
      _check(getattr(self, name) >= 0, name, getattr(self, name), "must be >= 0")
    _check(self.eval_bleu_examples >= -1, "eval_bleu_examples", self.eval_bleu_examples,
           "must be >= 0, or -1 for all")
    _check_choices(self, "")

  def to_dict(self) -> dict[str, Any]:
    """Plain nested dict of every setting (JSON-ready); `from_dict` reads it back."""
    d = dataclasses.asdict(self)
    for name in TOKENIZER_FIELDS:
      del d["model"][name]
    return d

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> ExperimentConfig:
    """Validated config from a nested mapping (a ConfigDict's `to_dict()`, or `to_dict()`).

    Missing keys take their defaults; anything unknown or invalid raises a `ConfigError`.
    """
    return _build(cls, values, "")

  def model_config(self, *, vocab_size: int, pad_id: int, bos_id: int,
                   eos_id: int) -> TransformerConfig:
    """The model to build: the `model` block with the tokenizer's vocabulary and special ids."""
    return self.model.replace(vocab_size=vocab_size, pad_id=pad_id, bos_id=bos_id, eos_id=eos_id)


# ----------------------------------------------------------------------------- the edge


def base_config(model: str = "base") -> ml_collections.ConfigDict:
  """Every setting at its default, the model block a `config.PRESETS` model ("tiny", "base",
  "big"): the ConfigDict that `configs/*.py` start from."""
  preset = TransformerConfig.preset(model, vocab_size=DataConfig.vocab_size)
  return ml_collections.ConfigDict(ExperimentConfig(model=preset).to_dict())


def from_config_dict(config: Any) -> ExperimentConfig:
  """Validates a ConfigDict (or nested dict) once; raises `ConfigError` naming the first bad key."""
  if isinstance(config, ExperimentConfig):
    return config
  values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  return ExperimentConfig.from_dict(values)


def all_keys() -> list[str]:
  """Every dotted key, e.g. "optim.warmup_steps" (for "did you mean" suggestions)."""
  keys = []
  for name, block in _blocks().items():
    for field in _fields(block, name):
      keys.append(f"{name}.{field}" if name else field)
  return keys


def suggest(key: str) -> str:
  """' (did you mean X?)' for the known key closest to `key`, or ''."""
  keys = all_keys()
  leaf = key.rsplit(".", 1)[-1]
  by_leaf = {k.rsplit(".", 1)[-1]: k for k in keys}
  match = difflib.get_close_matches(key, keys, n=1, cutoff=0.75)
  if not match:
    leaf_match = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.7)
    match = [by_leaf[leaf_match[0]]] if leaf_match else []
  return f" (did you mean {match[0]}?)" if match else ""


def _blocks() -> dict[str, type]:
  return {"": ExperimentConfig, "model": TransformerConfig, "data": DataConfig,
          "optim": OptimConfig}


def _fields(cls: type, prefix: str) -> list[str]:
  names = [f.name for f in dataclasses.fields(cls) if f.name not in ("model", "data", "optim")]
  return [n for n in names if not (prefix == "model" and n in TOKENIZER_FIELDS)]


# Settings that earlier versions saved in workdirs: read and ignored, with the reason.
RETIRED_KEYS = {"data.packing_bins": "packing is first-fit over data.packing_window examples"}


def _build(cls: type, values: Any, prefix: str):
  """`cls(**values)` after checking every key and type; its `__post_init__` checks ranges."""
  where = lambda key: f"{prefix}.{key}" if prefix else key
  if not isinstance(values, Mapping):
    raise ConfigError(f"config.{prefix} must be a block of settings, got {values!r:.80}.")
  hints = typing.get_type_hints(cls)
  known = set(_fields(cls, prefix)) | ({"model", "data", "optim"} if cls is ExperimentConfig
                                      else set())
  kwargs = {}
  for key, value in values.items():
    if prefix == "model" and key in TOKENIZER_FIELDS:
      raise ConfigError(f"config.model.{key} is set by the tokenizer, not the config"
                        + ("; set config.data.vocab_size instead." if key == "vocab_size"
                           else "."))
    if where(key) in RETIRED_KEYS:  # Saved by an earlier version (an old workdir's config).
      log.warning("config.%s is no longer a setting (%s); ignored.", where(key),
               RETIRED_KEYS[where(key)])
      continue
    if key not in known:
      raise ConfigError(f"config.{where(key)} is not a setting{suggest(where(key))}.")
    if key in ("model", "data", "optim") and cls is ExperimentConfig:
      kwargs[key] = _build(_blocks()[key], value, key)
    else:
      kwargs[key] = _coerce(value, hints[key], where(key))
  if cls is TransformerConfig:
    kwargs.setdefault("vocab_size", DataConfig.vocab_size)  # Replaced by the tokenizer's.
    if kwargs.get("decoder_start_is_pad"):
      kwargs.setdefault("bos_id", TransformerConfig.pad_id)  # Also the tokenizer's, later.
    try:
      return cls(**kwargs)
    except ValueError as e:  # Its own range checks name the field as TransformerConfig.X.
      raise ConfigError(str(e).replace("TransformerConfig.", "config.model.")) from None
  return cls(**kwargs)


_TYPE_NAMES = {int: "an integer", float: "a number", bool: "True or False", str: "a string"}


def _coerce(value: Any, kind: Any, key: str) -> Any:
  """`value` as `kind` (int, float, bool, str; Any = a dtype name), or a ConfigError."""
  if kind is Any or typing.get_origin(kind) is Literal:  # A dtype name, or a choice.
    kind = str
  if kind is int and isinstance(value, float) and value.is_integer():
    value = int(value)
  if kind is float and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if kind is int and not isinstance(value, bool) and isinstance(value, int):
    return require_int(f"config.{key}", value)
  if isinstance(value, kind) and not (kind is not bool and isinstance(value, bool)):
    return value
  raise ConfigError(f"config.{key}={value!r} should be {_TYPE_NAMES.get(kind, kind.__name__)}.")
