"""Loading a trained workdir for decoding: model, checkpoint parameters and tokenizer.

A workdir describes itself: every checkpoint stores the experiment configuration it was trained
with, and `tokenizer.model` (or an imported model's `marian_tokenizer/`) sits beside them. The
model is rebuilt from those alone (no config file, no training library), with the compute dtype
resolved for the device at hand (`model.dtype="auto"`: bfloat16 on GPU/TPU, float32 on CPU).
"""

from __future__ import annotations

import os
from typing import Any

from transformer_jax import checkpoint_reader
from transformer_jax import workdir_layout as layout
from transformer_jax.data.workdir_tokenizer import TOKENIZER_FILE, load_workdir_tokenizer
from transformer_jax.data.marian_tokenizer import MarianTokenizer
from transformer_jax.data.tokenizer import Tokenizer
from transformer_jax.experiment_config import ConfigError, ExperimentConfig
from transformer_jax.model import Transformer

CHECKPOINT_CHOICES = "latest, a step number, average:N or averaged"


def load_params(workdir: str, checkpoint: str = "latest") -> tuple[Any, dict, str]:
  """(params, config_dict, description) for `checkpoint`: latest, a step, average:N or averaged."""
  if checkpoint == "latest":
    params, step, config = checkpoint_reader.read_params(workdir)
    return params, config, f"checkpoint {step}"
  if checkpoint == layout.AVERAGED_DIR:
    params, step, config = checkpoint_reader.read_params(workdir, subdir=layout.AVERAGED_DIR)
    return params, config, f"averaged checkpoint ending at {step}"
  count = checkpoint.removeprefix("average:")
  if count != checkpoint and count.isdigit():
    params, steps, config = checkpoint_reader.average_params(workdir, int(count))
    return params, config, f"average of checkpoints {steps}"
  if checkpoint.isdigit():
    params, step, config = checkpoint_reader.read_params(workdir, int(checkpoint))
    return params, config, f"checkpoint {step}"
  raise ValueError(f"--checkpoint {checkpoint!r}: use {CHECKPOINT_CHOICES}.")


def check_writable(path: str, flag: str) -> None:
  """Raises a ValueError now, before any decoding, if `path` cannot be written as a file."""
  if os.path.isdir(path):
    raise ValueError(f"{flag} {path} is a directory; give a file path.")
  parent = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(parent):
    raise ValueError(f"{flag} {path}: directory {parent} does not exist; create it first.")
  if not os.access(parent, os.W_OK):
    raise ValueError(f"{flag} {path}: directory {parent} is not writable.")


def load_tokenizer(workdir: str) -> Tokenizer | MarianTokenizer:
  """The workdir's tokenizer (written by training, or by import_marian.py)."""
  if os.path.isfile(workdir):
    raise FileNotFoundError(f"--workdir {workdir} is a file, not a training workdir.")
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"--workdir {workdir} does not exist.")
  tokenizer = load_workdir_tokenizer(workdir)
  if tokenizer is None:
    raise FileNotFoundError(f"{os.path.join(workdir, TOKENIZER_FILE)} is missing: is {workdir} "
                            "a training workdir?")
  return tokenizer


def experiment_from_checkpoint(config: dict | None, workdir: str) -> ExperimentConfig:
  """The `ExperimentConfig` a checkpoint stores, or a ValueError saying how to fix the workdir."""
  if not config:
    raise ValueError(f"The checkpoints of {workdir} store no experiment configuration (written "
                     "by a very old version). Resume training once with `python train.py "
                     "--config ORIGINAL_CONFIG --workdir ...` and a higher num_train_steps so that "
                     "a new checkpoint stores it.")
  try:
    return ExperimentConfig.from_dict(config)
  except ConfigError as e:
    raise ValueError(f"The configuration stored in {workdir}'s checkpoints does not load in this "
                     f"version: {e} Rename or drop that setting in the checkpoint's config/ "
                     "metadata (JSON), or retrain.") from None


def model_for(experiment: ExperimentConfig,
              tokenizer: Tokenizer | MarianTokenizer) -> Transformer:
  """The Transformer of `experiment` with the tokenizer's vocabulary and special ids."""
  return Transformer(experiment.model_config(
      vocab_size=tokenizer.vocab_size, pad_id=tokenizer.pad_id, bos_id=tokenizer.bos_id,
      eos_id=tokenizer.eos_id))


def load_translator(workdir: str, checkpoint: str = "latest"
                    ) -> tuple[Transformer, Any, Tokenizer | MarianTokenizer, str]:
  """(model, params, tokenizer, description) for a trained workdir (see `load_params`)."""
  tokenizer = load_tokenizer(workdir)
  params, config, what = load_params(workdir, checkpoint)
  model = model_for(experiment_from_checkpoint(config, workdir), tokenizer)
  return model, params, tokenizer, what
