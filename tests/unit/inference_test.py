"""Loading a workdir for decoding: from the workdir alone, old workdirs too, clear refusals."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer_jax import checkpoint as checkpoint_lib
from transformer_jax import checkpoint_reader
from transformer_jax import experiment_config, inference
from transformer_jax.data import Tokenizer, synthetic_pairs
from transformer_jax.experiment_config import ExperimentConfig

TINY_MODEL = {"d_model": 32, "num_heads": 4, "d_ff": 64, "num_encoder_layers": 1,
              "num_decoder_layers": 1}


def _write_workdir(path, config_dict):
  """A workdir as training leaves it: tokenizer.model and one checkpoint storing `config_dict`."""
  texts = [s for pair in synthetic_pairs("dates", 300, seed=0) for s in pair]
  tokenizer = Tokenizer.train(texts, 96, path / "tokenizer.model")
  model = inference.model_for(ExperimentConfig.from_dict(config_dict), tokenizer)
  params = model.init(jax.random.key(0), jnp.ones((1, 4), jnp.int32),
                      jnp.ones((1, 4), jnp.int32))["params"]
  ckpt = checkpoint_lib.Checkpointer(str(path), max_to_keep=2)
  ckpt.save(5, {"params": params}, {}, config_dict)
  ckpt.close()
  return tokenizer, params


def test_translator_is_rebuilt_from_the_workdir_alone(tmp_path):
  config = ExperimentConfig.from_dict({"model": TINY_MODEL})
  tokenizer, params = _write_workdir(tmp_path, config.to_dict())
  model, loaded, loaded_tokenizer, what = inference.load_translator(str(tmp_path))
  assert what == "checkpoint 5" and loaded_tokenizer.vocab_size == tokenizer.vocab_size
  assert model.config == config.model_config(vocab_size=tokenizer.vocab_size, pad_id=0,
                                             bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id)
  # The stored dtype stays "auto", resolved for the device that loads it.
  assert model.config.dtype == "auto"
  assert model.config.compute_dtype == (jnp.float32 if jax.default_backend() == "cpu"
                                        else jnp.bfloat16)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(loaded)):
    np.testing.assert_array_equal(a, b)


def test_a_workdir_written_before_the_schema_loads(tmp_path):
  # Earlier versions stored their ConfigDict as it was: today's names, some keys missing.
  old = experiment_config.base_config().to_dict()
  old["model"].update(TINY_MODEL)
  del old["model"]["layer_norm_epsilon"], old["data"]["synthetic_seed"]
  _write_workdir(tmp_path, old)
  model, _, _, _ = inference.load_translator(str(tmp_path))
  assert model.config.d_model == 32 and model.config.layer_norm_epsilon == 1e-6


def test_a_stored_config_this_version_cannot_read_is_refused_with_the_fix(tmp_path):
  config = ExperimentConfig.from_dict({"model": TINY_MODEL}).to_dict()
  _write_workdir(tmp_path, config)
  stored = dict(config, model=dict(config["model"], attention_kind="linear"))
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=2)
  ckpt.save(6, {"params": checkpoint_reader.read_params(str(tmp_path))[0]}, {}, stored)
  ckpt.close()
  with pytest.raises(ValueError, match=r"does not load in this version: config\.model\."
                                       r"attention_kind is not a setting.*retrain"):
    inference.load_translator(str(tmp_path))
  with pytest.raises(ValueError, match="store no experiment configuration"):
    inference.experiment_from_checkpoint({}, str(tmp_path))


def test_loading_a_translator_does_not_import_the_training_library():
  code = ("import sys, transformer_jax.inference; "
          "assert 'transformer_jax.train_lib' not in sys.modules, 'train_lib imported'")
  subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_decoding_imports_no_data_pipeline():
  """translate.py's imports stay light: datasets (and grain, once) cost ~0.25 s of every call."""
  code = ("import sys; from transformer_jax import evaluation, inference; "
          "print(sorted(m for m in ('grain', 'datasets') if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]"


def test_the_slow_ml_dtypes_release_is_excluded():
  """ml_dtypes 0.7.0's native module takes ~1 s to import (0.6.0: 6 ms), in every JAX process."""
  import importlib.metadata  # pylint: disable=import-outside-toplevel
  import pathlib  # pylint: disable=import-outside-toplevel
  assert importlib.metadata.version("ml_dtypes") != "0.7.0"
  root = pathlib.Path(__file__).resolve().parents[2]
  for name in ("pyproject.toml", "requirements.txt"):
    assert "ml_dtypes>=0.5.0,!=0.7.0" in (root / name).read_text(), name


def test_the_data_package_exports_resolve():
  from transformer_jax import data  # pylint: disable=import-outside-toplevel
  for name in data.__all__:
    assert getattr(data, name) is not None, name
  with pytest.raises(AttributeError, match="no attribute 'nope'"):
    data.nope  # pylint: disable=pointless-statement
