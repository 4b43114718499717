"""The experiment schema: every config file validates, bad settings name their key."""

import dataclasses
import glob
import importlib.util
import json
import os
import re
import typing

import ml_collections
import pytest

from transformer_jax import experiment_config, schedules
from transformer_jax.config import TransformerConfig
from transformer_jax.experiment_config import (ConfigError, DataConfig, ExperimentConfig,
                                               OptimConfig)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load(path):
  spec = importlib.util.spec_from_file_location("cfg", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))))
def test_every_config_file_validates_and_builds_its_optimizer(path):
  config_dict = _load(path)
  assert isinstance(config_dict, ml_collections.ConfigDict)
  config = experiment_config.from_config_dict(config_dict)
  model = config.model_config(vocab_size=config.data.vocab_size, pad_id=0, bos_id=1, eos_id=2)
  assert model.d_model % model.num_heads == 0
  schedules.create_optimizer(config.optim, d_model=model.d_model,
                             num_train_steps=config.num_train_steps)
  # What a checkpoint stores reads back to the same config.
  assert ExperimentConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_base_config_holds_exactly_the_schema_defaults():
  base = experiment_config.base_config().to_dict()
  assert ExperimentConfig.from_dict(base) == ExperimentConfig()
  # Model defaults are TransformerConfig's own; only the tokenizer-owned fields are absent.
  model_fields = {f.name for f in dataclasses.fields(TransformerConfig)}
  assert set(base["model"]) == model_fields - set(experiment_config.TOKENIZER_FIELDS)
  assert base["model"]["dtype"] == TransformerConfig(vocab_size=10).dtype == "auto"
  assert base["data"] == dataclasses.asdict(DataConfig())
  assert base["optim"] == dataclasses.asdict(OptimConfig())


@pytest.mark.parametrize("values, message", [
    ({"num_train_steps": "abc"}, r"^config\.num_train_steps='abc' should be an integer\.$"),
    ({"model": {"pre_norm": "maybe"}}, r"config\.model\.pre_norm='maybe' should be True or False"),
    ({"log_every_steps": 0}, r"config\.log_every_steps=0: must be >= 1"),
    ({"checkpoint_every_steps": 0}, r"config\.checkpoint_every_steps=0: must be >= 1"),
    ({"num_train_steps": -5}, r"config\.num_train_steps=-5: must be >= 1"),
    ({"keep_checkpoints": 0}, r"config\.keep_checkpoints=0: must be >= 1"),
    ({"model": {"d_modle": 64}}, r"config\.model\.d_modle is not a setting \(did you mean "
                                 r"model\.d_model\?\)"),
    ({"warmup_steps": 10}, r"did you mean optim\.warmup_steps\?"),
    ({"model": {"vocab_size": 100}},
     r"model\.vocab_size is set by the tokenizer.*data\.vocab_size"),
    ({"model": {"num_heads": 3}}, r"config\.model\.d_model=512 is not divisible by num_heads=3"),
    ({"model": {"dropout_rate": 1.5}}, r"config\.model\.dropout_rate must be in \[0, 1\)"),
    ({"data": {"batch_size": 2.5}}, r"config\.data\.batch_size=2\.5 should be an integer"),
    ({"data": {"max_len": 100}}, r"config\.data\.max_len=100: exceeds data\.seq_len=64"),
    ({"data": {"process_sharding": "split"}}, r"process_sharding='split': must be one of"),
    ({"optim": {"schedule": "linear"}}, r"config\.optim\.schedule='linear': must be one of"),
    ({"optim": {"b2": 1.0}}, r"config\.optim\.b2=1\.0: must be in \[0, 1\)"),
    ({"eval_bleu_tokenize": "moses"}, r"eval_bleu_tokenize='moses': must be one of"),
    ({"model": 3}, r"config\.model must be a block of settings"),
])
def test_bad_settings_raise_one_line_naming_the_key(values, message):
  with pytest.raises(ConfigError, match=message) as error:
    ExperimentConfig.from_dict(values)
  assert "\n" not in str(error.value)


def test_integral_floats_become_integers_and_ints_become_floats():
  config = ExperimentConfig.from_dict({"num_train_steps": 10.0, "optim": {"weight_decay": 1}})
  assert config.num_train_steps == 10 and isinstance(config.num_train_steps, int)
  assert config.optim.weight_decay == 1.0 and isinstance(config.optim.weight_decay, float)


def test_a_config_stored_by_an_earlier_version_loads():
  # Checkpoints written before the schema stored the ConfigDict as it was: a subset of today's
  # keys (e.g. no model.layer_norm_epsilon), with the same names.
  old = experiment_config.base_config().to_dict()
  del old["model"]["layer_norm_epsilon"], old["data"]["synthetic_seed"]
  old["model"]["d_model"] = 64
  config = ExperimentConfig.from_dict(old)
  assert config.model.d_model == 64 and config.model.layer_norm_epsilon == 1e-6


def test_model_config_takes_the_tokenizers_vocabulary_and_ids():
  config = ExperimentConfig.from_dict({"model": {"d_model": 64, "num_heads": 4}})
  model = config.model_config(vocab_size=321, pad_id=0, bos_id=2, eos_id=3)
  assert (model.vocab_size, model.bos_id, model.eos_id, model.d_model) == (321, 2, 3, 64)


@pytest.mark.parametrize("block, prefix", [(TransformerConfig, "config.model."),
                                           (DataConfig, "config.data."),
                                           (OptimConfig, "config.optim."),
                                           (ExperimentConfig, "config.")])
def test_every_choice_is_a_literal_checked_where_the_config_is_built(block, prefix):
  literal_fields = [f.name for f in dataclasses.fields(block)
                    if typing.get_origin(typing.get_type_hints(block)[f.name]) is typing.Literal]
  assert literal_fields, block  # Each block has choices, all typed as Literal.
  for name in literal_fields:
    bad = {name: "bogus"}
    nested = bad if prefix == "config." else {prefix.split(".")[1]: bad}
    with pytest.raises(ConfigError, match=rf"{re.escape(prefix)}{name}='bogus': must be one of"):
      ExperimentConfig.from_dict(nested)


def test_presets_are_defined_once_and_configs_use_them():
  tiny = experiment_config.from_config_dict(_load(os.path.join(ROOT, "configs", "tiny.py")))
  assert tiny.model == TransformerConfig.tiny(DataConfig.vocab_size)
  big = experiment_config.from_config_dict(_load(os.path.join(ROOT, "configs", "wmt14_big.py")))
  assert big.model == TransformerConfig.big(DataConfig.vocab_size)
  base = experiment_config.from_config_dict(_load(os.path.join(ROOT, "configs", "wmt14_base.py")))
  assert base.model == TransformerConfig.base(DataConfig.vocab_size)
  with pytest.raises(ValueError, match="No model preset 'huge'"):
    experiment_config.base_config(model="huge")
