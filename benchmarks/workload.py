"""Our training step as every benchmark builds it: model shapes, workloads, the compiled step.

One builder, `build_training`, makes the step the way `transformer_jax.train_lib.setup` does:
the model from a `TransformerConfig`, the optimizer from `schedules.create_optimizer` on an
`OptimConfig`, a data mesh (`sharding.create_mesh`), the state initialized under jit with its
shardings, and the step from `steps.compile_steps`, the package's one step builder. The train
benchmark, the step profiler, the matmul bound, the data benchmark and the accelerator check all
measure that step.

Model shapes come from the package: `base`, `big` and `tiny` are `TransformerConfig`'s presets,
`small` is the Multi30k recipe's model (configs/multi30k.py).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import batches, harness
from transformer_jax import TransformerConfig, Transformer, aot, schedules, sharding, steps
from transformer_jax.config import PRESETS
from transformer_jax.experiment_config import (TOKENIZER_FIELDS, ExperimentConfig, OptimConfig,
                                               from_config_dict)

RECIPE_CONFIG = os.path.join(harness.ROOT, "configs", "multi30k.py")
ARCHITECTURE = ("d_model", "num_heads", "d_ff", "num_encoder_layers", "num_decoder_layers")
SHAPE_FIELDS = ARCHITECTURE + ("dropout_rate",)
# base / small / tiny workloads: the paper's Adam at a constant rate, label smoothing 0.1.
CONSTANT_ADAM = dict(schedule="constant", warmup_steps=0, peak_learning_rate=1e-4, b1=0.9,
                     b2=0.98, eps=1e-9, label_smoothing=0.1)


def use_cpu(devices: int = 1) -> None:
  """Runs this process's jax on `devices` XLA CPU devices; call before it first computes.

  The CPU benchmarks measure XLA:CPU, also on a machine with an accelerator, unless
  JAX_PLATFORMS says otherwise. Sets the environment the benchmark's workers inherit, and this
  process's platform (jax read JAX_PLATFORMS when it was imported; XLA reads XLA_FLAGS later).
  """
  harness.one_device_env()
  if devices > 1:
    os.environ.update(harness.host_devices_env(devices))
  jax.config.update("jax_platforms", os.environ["JAX_PLATFORMS"])


@functools.cache
def recipe_config() -> ExperimentConfig:
  """The validated `ExperimentConfig` of configs/multi30k.py."""
  spec = importlib.util.spec_from_file_location("multi30k_config", RECIPE_CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return from_config_dict(module.get_config())


def model_shape(name: str, **overrides) -> dict[str, Any]:
  """`SHAPE_FIELDS` of a named model, with `overrides` (validated by `TransformerConfig`).

  Args:
    name: A `TransformerConfig` preset ("tiny", "base", "big"), or "small" (the Multi30k
      recipe's model: 4+4 layers of 128).
    **overrides: TransformerConfig fields to change.
  """
  if name == "small":
    config = recipe_config().model
  elif name in PRESETS:  # Any vocabulary: the shape does not depend on it.
    config = TransformerConfig.preset(name, vocab_size=8)
  else:
    raise ValueError(f"unknown model {name!r}; choose among small, {', '.join(PRESETS)}.")
  config = config.replace(**overrides)
  return {k: getattr(config, k) for k in SHAPE_FIELDS}


@dataclasses.dataclass(frozen=True)
class Workload:
  """One benchmarked training step: model, batch and optimizer (picklable, for the workers).

  Attributes:
    name: recipe, or the model's name (base, small, tiny).
    model: `TransformerConfig` fields except the vocabulary and special ids.
    vocab: Vocabulary size.
    rows: Rows per step; length: tokens per row, source and target alike.
    packed: Packed rows (segment ids, positions, padding at the end) or plain full rows.
    optim: `OptimConfig` fields (the optimizer `schedules.create_optimizer` builds).
    num_train_steps: The schedule's length.
    parallelism: "jit" or "shard_map", as `steps.compile_steps` takes it.
  """
  name: str
  model: dict
  vocab: int
  rows: int
  length: int
  packed: bool
  optim: dict
  num_train_steps: int = 100_000
  parallelism: str = "jit"

  @property
  def shape(self) -> dict:
    return {k: self.model[k] for k in ARCHITECTURE}

  def batch(self) -> dict[str, np.ndarray]:
    """The step's batch: packed rows for packed workloads, else full plain rows (numpy)."""
    if self.packed:
      return batches.packed_batch(self.vocab, self.rows, self.length)
    return batches.random_batch(self.vocab, self.rows, self.length)

  def target_tokens(self) -> int:
    """Real (non-padding) target tokens per step: the tokens/s numerator on every side."""
    return int((self.batch()["tgt_out"] != 0).sum())


def make_workload(name: str, *, vocab: int = 8000, batch: int = 32, length: int = 32) -> Workload:
  """The `recipe` (from its config), or a named model at `batch` x `length`, `vocab`."""
  if name == "recipe":
    c = recipe_config()
    model = {k: v for k, v in dataclasses.asdict(c.model).items() if k not in TOKENIZER_FIELDS}
    return Workload(name, model, c.data.vocab_size, c.data.batch_size, c.data.seq_len, True,
                    dataclasses.asdict(c.optim), c.num_train_steps, c.parallelism)
  return Workload(name, model_shape(name), vocab, batch, length, False, dict(CONSTANT_ADAM))


def model_flops_per_step(shape: dict, vocab: int, batch: int, length: int) -> float:
  """`aot.model_flops_per_step` (the package's one count) for a benchmark shape: matmul FLOPs of
  one step, 3 x the forward, every row's `length` source and target slots (padding included)."""
  fields = {k: shape[k] for k in ("d_model", "num_heads", "d_ff", "num_encoder_layers",
                                  "num_decoder_layers")}
  return aot.model_flops_per_step(TransformerConfig(vocab_size=vocab, **fields), batch, length)


# ----------------------------------------------------------------------------- the step


def aot_compile(jitted, *args, options: dict[str, Any] | None = None):
  """`jitted` lowered for `args` and compiled with the XLA `options` (None: XLA's defaults)."""
  return jitted.lower(*args).compile(compiler_options=options)


@dataclasses.dataclass
class Training:
  """A model's training step over a mesh, built as `train_lib.setup` builds it, and its state.

  Attributes:
    model: The Transformer.
    mesh: The data mesh the step runs over.
    step: The jitted `(state, batch) -> (state, metrics)` of `steps.compile_steps`; it donates
      the state.
    init: Makes a fresh initial state (the same values every time).
    state: The current state; each step replaces it.
    options: XLA compiler options of every compile (None: XLA's defaults).
  """
  model: Transformer
  mesh: jax.sharding.Mesh
  step: Callable
  init: Callable[[], Any]
  state: Any
  options: dict[str, Any] | None = None

  @property
  def num_params(self) -> int:
    return int(sum(x.size for x in jax.tree.leaves(self.state.params)))

  def put(self, host_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """A host batch as global arrays split over the mesh."""
    return sharding.global_batch(host_batch, self.mesh)

  def compile(self, host_batch: dict[str, np.ndarray]) -> CompiledStep:
    """The step compiled for `host_batch`'s shapes, with the batch on the mesh; timed."""
    if any(x.is_deleted() for x in jax.tree.leaves(self.state)):  # Donated to a failed call.
      self.state = self.init()
    batch = self.put(host_batch)
    start = time.perf_counter()
    compiled = aot_compile(self.step, self.state, batch, options=self.options)
    return CompiledStep(self, compiled, batch, time.perf_counter() - start)


@dataclasses.dataclass
class CompiledStep:
  """A compiled step and the batch it was compiled for; `run()` does one (donated) step."""
  training: Training
  compiled: Any
  batch: dict[str, jax.Array]
  compile_s: float

  def run(self, batch: dict[str, jax.Array] | None = None) -> dict[str, jax.Array]:
    """One step on `batch` (default: the compiled one); blocks until its results are ready."""
    t = self.training
    t.state, metrics = self.compiled(t.state, self.batch if batch is None else batch)
    jax.block_until_ready((t.state, metrics))
    return metrics


def build_training(config: TransformerConfig, optim: OptimConfig, *, devices=None,
                   parallelism: str = "jit", num_train_steps: int = 100_000, seed: int = 0,
                   options: dict[str, Any] | None = None) -> Training:
  """Model, optimizer, mesh over `devices` (None: all), initial state and step.

  Args:
    config: The model.
    optim: The optimizer, its schedule and the label smoothing.
    devices: The devices of the data mesh (None: every device).
    parallelism: "jit" or "shard_map" (`steps.compile_steps`).
    num_train_steps: The schedule's length.
    seed: Seeds the parameters and the dropout key, as `config.seed` does in train.py.
    options: XLA compiler options of the initialization and of every step compile.
  """
  model = Transformer(config)
  tx, schedule = schedules.create_optimizer(optim, d_model=config.d_model,
                                            num_train_steps=num_train_steps)
  mesh = sharding.create_mesh(devices)
  init_rng, dropout_key = jax.random.split(jax.random.key(seed))
  init_fn = functools.partial(steps.init_state, model=model, tx=tx)
  shardings = sharding.state_shardings(jax.eval_shape(init_fn, init_rng), mesh)
  # Initialized under jit as train.py does: eager init keeps ~200 MiB more resident at base.
  init = functools.partial(aot_compile(jax.jit(init_fn, out_shardings=shardings), init_rng,
                                       options=options), init_rng)
  train_step, _ = steps.compile_steps(
      parallelism, model=model, mesh=mesh, state_shardings=shardings, dropout_key=dropout_key,
      label_smoothing=optim.label_smoothing, schedule=schedule)
  return Training(model, mesh, train_step, init, init(), options)


def build_workload(w: Workload, num_devices: int | None = None) -> Training:
  """`w`'s training over the first `num_devices` devices (None: all)."""
  return build_training(TransformerConfig(vocab_size=w.vocab, **w.model), OptimConfig(**w.optim),
                        devices=jax.devices()[:num_devices] if num_devices else None,
                        parallelism=w.parallelism, num_train_steps=w.num_train_steps)


def matmul_peak(n: int = 2048, dtype: str = "float32", *, timings: int = 10,
                calls: int = 1) -> tuple[float, float]:
  """(best, median) FLOP/s of a jit-compiled n x n matmul on the default device.

  Each of `timings` timings queues `calls` calls and waits for the last (several calls hide
  the dispatch on an accelerator; on a CPU one call is the matmul).
  """
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  matmul = jax.jit(jnp.matmul)
  matmul(a, b).block_until_ready()
  rates = []
  for _ in range(timings):
    start = time.perf_counter()
    for _ in range(calls):
      out = matmul(a, b)
    out.block_until_ready()
    rates.append(2.0 * n**3 * calls / (time.perf_counter() - start))
  return max(rates), statistics.median(rates)
