"""What the export tests share: configs, the demo's held-out dates, both engines' translations."""

import importlib.util
import os
import subprocess
import sys

from transformer_jax import evaluation, inference
from transformer_jax.data import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def config(name, **changes):
  """configs/NAME.py (or the embedded demo), without evaluation, with dotted `changes`."""
  path = (os.path.join(ROOT, "configs", f"{name}.py") if name != "demo"
          else os.path.join(ROOT, "transformer_jax", "cli", "demo_config.py"))
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  result = module.get_config()
  result.eval_every_steps = 0
  for key, value in changes.items():
    target = result
    *parents, leaf = key.split(".")
    for parent in parents:
      target = target[parent]
    target[leaf] = value
  return result


def held_out(count):
  """The demo's held-out dates (its eval split) and their references."""
  _, pairs = synthetic.synthetic_splits("dates", 20_000, 500, seed=0)
  return [s for s, _ in pairs[:count]], [t for _, t in pairs[:count]]


def run(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=300)


def ours(workdir, lines, **kwargs):
  model, params, tokenizer, _ = inference.load_translator(workdir)
  return evaluation.translate(model, params, tokenizer, lines, **kwargs)


def ct2(directory, lines, **kwargs):
  from transformer_jax.ct2_translator import CTranslate2Translator
  return CTranslate2Translator(directory).translate(lines, **kwargs)
