"""Loading a trained workdir (model, checkpoint parameters, tokenizer) and text for decoding."""

from __future__ import annotations

import gzip
import os
import sys
from typing import Any

from transformer_jax import checkpoint as checkpoint_lib
from transformer_jax.data import Tokenizer
from transformer_jax.model import Transformer
from transformer_jax.train_lib import build_model_config


def load_params(workdir: str, checkpoint: str = "latest") -> tuple[Any, dict, str]:
  """(params, config_dict, description) for `checkpoint`: latest, a step, average:N or averaged."""
  if checkpoint == "latest":
    params, step, config = checkpoint_lib.load_params(workdir)
    return params, config, f"checkpoint {step}"
  if checkpoint == "averaged":
    params, step, config = checkpoint_lib.load_params(workdir, subdir="averaged")
    return params, config, f"averaged checkpoint ending at {step}"
  count = checkpoint.removeprefix("average:")
  if count != checkpoint and count.isdigit():
    params, steps, config = checkpoint_lib.average_params(workdir, int(count))
    return params, config, f"average of checkpoints {steps}"
  if checkpoint.isdigit():
    params, step, config = checkpoint_lib.load_params(workdir, int(checkpoint))
    return params, config, f"checkpoint {step}"
  raise ValueError(f"checkpoint={checkpoint!r}: use latest, a step, average:N or averaged.")


def load_translator(workdir: str, checkpoint: str = "latest"
                    ) -> tuple[Transformer, Any, Tokenizer, str]:
  """(model, params, tokenizer, description) for a trained workdir (see `load_params`)."""
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"--workdir {workdir} does not exist.")
  tokenizer_path = os.path.join(workdir, "tokenizer.model")
  if not os.path.isfile(tokenizer_path):
    raise FileNotFoundError(f"{tokenizer_path} is missing: is {workdir} a training workdir?")
  params, config, what = load_params(workdir, checkpoint)
  tokenizer = Tokenizer.load(tokenizer_path)
  model_config = build_model_config(config["model"], vocab_size=tokenizer.vocab_size,
                                    bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id)
  return Transformer(model_config), params, tokenizer, what


def read_lines(path: str) -> list[str]:
  """One sentence per line from `path` ('-' = stdin; a .gz file is read compressed)."""
  if path == "-":
    return sys.stdin.read().splitlines()
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--input/--reference file {path} does not exist.")
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rt", encoding="utf-8") as f:
    return f.read().splitlines()
