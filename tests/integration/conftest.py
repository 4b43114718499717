"""Fixtures the command tests share."""

import importlib.util
import os

import pytest

from transformer_jax import train_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A workdir trained with configs/tiny.py (no evaluation): one per test module."""
  spec = importlib.util.spec_from_file_location("tiny", os.path.join(ROOT, "configs", "tiny.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.eval_every_steps = 0
  path = str(tmp_path_factory.mktemp("workdir"))
  train_lib.train_and_evaluate(config, path)
  return path
