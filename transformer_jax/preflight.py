"""Checks a training run makes before it writes anything: settings that these devices cannot
run, and a config that does not fit the model a workdir already holds."""

from __future__ import annotations

import dataclasses
import os

import jax

from transformer_jax import workdir_layout as layout
from transformer_jax.experiment_config import ExperimentConfig


def check_runnable(config: ExperimentConfig, num_devices: int, platform: str) -> None:
  """A one-line ValueError for settings these devices cannot run, before any file is written.

  Checked here rather than in the config: they depend on the devices (`num_devices` in the
  mesh, all processes together; `platform` "cpu", "gpu" or "tpu").
  """
  for key in ("batch_size", "eval_batch_size") if config.eval_every_steps else ("batch_size",):
    rows = getattr(config.data, key)
    if rows % num_devices:
      raise ValueError(
          f"config.data.{key}={rows} is not a multiple of the {num_devices} devices of the mesh "
          f"({jax.process_count()} process(es)): each device takes {key} / {num_devices} rows. "
          f"Use a multiple of {num_devices}, e.g. {-(-rows // num_devices) * num_devices}.")
  impl = config.model.attention_impl
  if impl == "cudnn" and platform != "gpu":
    raise ValueError(f"config.model.attention_impl='cudnn' needs an NVIDIA GPU, and this run's "
                     f"devices are {platform}: use 'auto' (the best for the device), 'xla' or "
                     "'plain'.")


def check_imported_model(config: ExperimentConfig, workdir: str) -> None:
  """A one-line ValueError, before any write, when `workdir` holds an imported OPUS-MT model
  and `config.model` is not its architecture (a config other than configs/opus_mt.py:WORKDIR)."""
  path = layout.path(workdir, layout.MARIAN_IMPORT_FILE)
  if not os.path.isfile(path):
    return
  from transformer_jax import marian  # pylint: disable=g-import-not-at-top
  imported = marian.imported_experiment(workdir)["model"]
  mine = dataclasses.asdict(config.model)
  # What a fine-tune may change: regularization and how the same arithmetic is computed.
  skip = {"dropout_rate", "attention_dropout_rate", "dtype", "param_dtype", "attention_impl",
          "remat", "scan_layers", "vocab_size", "pad_id", "bos_id", "eos_id"}
  differ = [k for k in sorted(imported) if k not in skip and k in mine and mine[k] != imported[k]]
  if differ:
    k = differ[0]
    raise ValueError(
        f"{workdir} holds an imported OPUS-MT model, and this config's model.{k}={mine[k]!r} "
        f"differs from the model's {imported[k]!r} ({len(differ)} setting(s) differ). Fine-tune "
        f"it with --config configs/opus_mt.py:{workdir} (its architecture and special ids).")
