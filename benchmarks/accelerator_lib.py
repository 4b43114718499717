"""Shared pieces of `benchmarks/accelerator.py`: the two profiles, device peaks, builders, timing.

Imported only after `accelerator.py` has set the JAX environment (platform, GPU allocator), so it
may import jax at the top.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import platform
import statistics
import time
from typing import Any, Callable

import jax
import numpy as np

from transformer_jax import Transformer, TransformerConfig, experiment_config, schedules
from transformer_jax import sharding, train_lib
from transformer_jax.experiment_config import OptimConfig

try:  # The step builder of both parallel modes, where the package has it.
  from transformer_jax.steps import compile_steps
except ImportError:
  compile_steps = None

LABEL_SMOOTHING = 0.1
PARALLELISMS = getattr(experiment_config, "PARALLELISMS", ("jit",))

# Dense bf16 peak FLOP/s per chip, from the vendors' datasheets, keyed by a substring of
# `jax.devices()[0].device_kind`; the first match wins, so specific names come first.
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("H800", 989e12),
    ("GH200", 989e12), ("B200", 2250e12), ("A100", 312e12), ("A10G", 70e12), ("L4", 121e12),
    ("TPU v6 lite", 918e12), ("TPU v6e", 918e12), ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12), ("TPU v5p", 459e12), ("TPU v5", 459e12), ("TPU v4", 275e12),
)

_BASE = dict(d_model=512, num_heads=8, d_ff=2048, num_encoder_layers=6, num_decoder_layers=6,
             dropout_rate=0.1)
_BIG = dict(d_model=1024, num_heads=16, d_ff=4096, num_encoder_layers=6, num_decoder_layers=6,
            dropout_rate=0.3)


@dataclasses.dataclass(frozen=True)
class Profile:
  """Every shape and count the run uses: `FULL` on an accelerator, `SMOKE` on CPU.

  Attributes:
    name: "full" or "smoke".
    shapes: "base" / "big" -> TransformerConfig fields (Table 3 of the paper in FULL).
    vocab_size: Shared vocabulary (the paper's 37k BPE in FULL).
    seq_len: Source = target tokens per row (configs/wmt14_*.py pack rows of 64).
    ladders: Rows per device per training step to try, largest first; the first that compiles
      and fits in memory is measured (384 rows x 64 is the paper's ~25k + 25k tokens; base's
      1024 x 64 fills an H100/H200 well past the size where tokens/s stops growing).
    warmup_steps: Untimed calls after compiling.
    timed_steps: Timed calls (the median is reported).
    check_shape: The small model of the bf16 and multi-device checks.
    check_vocab: Its vocabulary.
    check_batch: (rows, length) of its batches.
    attention: (batch, query length, key length, d_model, heads) of the attention check.
    decode: batch, src_len, new_tokens (EOS forbidden before), beam, calls.
    matmul_n: Side of the square bf16 matmul that measures the peak.
    torch_timeout_s: Most seconds the PyTorch peer's process may take.
    compiler_options: XLA options of every compile this run makes itself (the smoke run's
      level-0 LLVM optimization halves CPU compile times; same programs, same numerics).
  """
  name: str
  shapes: dict[str, dict[str, Any]]
  vocab_size: int
  seq_len: int
  ladders: dict[str, tuple[int, ...]]
  warmup_steps: int
  timed_steps: int
  check_shape: dict[str, Any]
  check_vocab: int
  check_batch: tuple[int, int]
  attention: tuple[int, int, int, int, int]
  decode: dict[str, int]
  matmul_n: int
  torch_timeout_s: float
  compiler_options: dict[str, Any] | None = None


FULL = Profile(
    name="full", shapes={"base": _BASE, "big": _BIG}, vocab_size=37000, seq_len=64,
    ladders={"base": (1024, 512, 256), "big": (512, 256, 128)}, warmup_steps=2, timed_steps=10,
    check_shape=dict(d_model=256, num_heads=4, d_ff=1024, num_encoder_layers=2,
                     num_decoder_layers=2, dropout_rate=0.1),
    check_vocab=1000, check_batch=(32, 64), attention=(4, 128, 64, 512, 8),
    decode=dict(batch=256, src_len=32, new_tokens=32, beam=4, calls=3), matmul_n=8192,
    torch_timeout_s=150.0)

SMOKE = Profile(
    name="smoke",
    shapes={"base": dict(d_model=32, num_heads=4, d_ff=64, num_encoder_layers=1,
                         num_decoder_layers=1, dropout_rate=0.1),
            "big": dict(d_model=64, num_heads=4, d_ff=128, num_encoder_layers=1,
                        num_decoder_layers=1, dropout_rate=0.3)},
    vocab_size=64, seq_len=8, ladders={"base": (2, 1), "big": (1,)}, warmup_steps=1,
    timed_steps=2,
    check_shape=dict(d_model=32, num_heads=4, d_ff=64, num_encoder_layers=1,
                     num_decoder_layers=1, dropout_rate=0.1),
    check_vocab=64, check_batch=(8, 8), attention=(2, 8, 6, 32, 4),
    decode=dict(batch=2, src_len=6, new_tokens=4, beam=2, calls=1), matmul_n=128,
    torch_timeout_s=120.0, compiler_options={"xla_backend_optimization_level": 0})


@dataclasses.dataclass
class Context:
  """What every section reads: options, profile, deadline, and the results so far."""
  args: Any
  profile: Profile
  deadline: float
  results: dict[str, Any]
  reserve_s: float = 0.0  # Seconds the sections still to come need (set by the runner).
  attention_fallback: str | None = None  # Why "auto" attention failed in a training section.

  def remaining(self) -> float:
    return self.deadline - time.monotonic()

  def section(self, name: str) -> dict[str, Any]:
    return self.results["sections"].get(name, {})

  @property
  def is_gpu(self) -> bool:
    return jax.default_backend() == "gpu"

  def training_attention_impl(self) -> tuple[str, str]:
    """`attention_impl` for the throughput sections, and why: as asked, except that "auto" becomes
    "xla" once cuDNN failed in the attention check or "auto" in a training section, so that
    the figures still come."""
    cudnn = self.section("attention").get("cases", {}).get("cudnn", {})
    if self.args.attention_impl == "auto" and cudnn.get("error"):
      return "xla", "cuDNN attention failed in the attention check"
    if self.args.attention_impl == "auto" and self.attention_fallback:
      return "xla", self.attention_fallback
    return self.args.attention_impl, "as asked"


# ----------------------------------------------------------------------------- the device


def device_info() -> dict[str, Any]:
  """Backend, device kind and count, memory, library versions and the date (UTC)."""
  import flax
  import jaxlib
  import optax
  device = jax.devices()[0]
  stats = _memory_stats(device)
  return {
      "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
      "backend": jax.default_backend(), "device_kind": device.device_kind,
      "device_count": jax.device_count(), "process_count": jax.process_count(),
      "memory_gib": stats.get("bytes_limit", 0) / 2**30 or None,
      "platform_version": getattr(getattr(device, "client", None), "platform_version", ""),
      "jax": jax.__version__, "jaxlib": jaxlib.__version__,
      "flax": flax.__version__, "optax": optax.__version__, "python": platform.python_version(),
      "table_peak_tflops": (table_peak(device.device_kind) or 0) / 1e12 or None,
  }


def table_peak(device_kind: str) -> float | None:
  """The datasheet dense bf16 FLOP/s of one chip of this kind, or None if unknown."""
  for key, flops in PEAK_BF16_FLOPS:
    if key.lower() in device_kind.lower():
      return flops
  return None


def _memory_stats(device) -> dict[str, Any]:
  try:
    return device.memory_stats() or {}
  except Exception:  # Some backends do not implement it.
    return {}


def memory_limit_bytes() -> int | None:
  """The device's usable memory (None on CPU, where nothing is checked)."""
  return _memory_stats(jax.devices()[0]).get("bytes_limit")


def peak_memory_gib() -> float | None:
  """The device's peak bytes in use so far, in GiB (None where not reported)."""
  peak = _memory_stats(jax.devices()[0]).get("peak_bytes_in_use")
  return None if peak is None else peak / 2**30


def is_out_of_memory(error: BaseException) -> bool:
  """Whether an exception from compiling or running says the device memory ran out."""
  text = f"{type(error).__name__} {error}".lower()
  return any(s in text for s in ("resource_exhausted", "out of memory", "outofmemory",
                                 "resource exhausted"))


# ----------------------------------------------------------------------------- builders


def random_batch(vocab: int, rows: int, length: int, *, seed: int = 0,
                 padding: bool = False) -> dict[str, np.ndarray]:
  """`src, tgt_in, tgt_out` int32 `[rows, length]`, ids >= 3 (0-2 special), BOS first in tgt_in;
  with `padding` some rows end in padding (for the checks; the throughput batches have none)."""
  rng = np.random.default_rng(seed)
  src = rng.integers(3, vocab, (rows, length), dtype=np.int32)
  tgt = rng.integers(3, vocab, (rows, length + 1), dtype=np.int32)
  tgt[:, 0] = 1
  if padding:
    src[::2, -(length // 4 + 1):] = 0
    tgt[::3, -(length // 3 + 1):] = 0
  return {"src": src, "tgt_in": tgt[:, :-1].copy(), "tgt_out": tgt[:, 1:].copy()}


def make_optimizer(d_model: int, optim: OptimConfig | None = None):
  """`(tx, schedule)` from the project's optimizer (the paper's Adam and schedule by default)."""
  return schedules.create_optimizer(optim or OptimConfig(), d_model=d_model,
                                    num_train_steps=100_000)


def aot_compile(jitted, *args, options: dict[str, Any] | None = None):
  """`jitted` lowered for `args` and compiled with the XLA `options`."""
  lowered = jitted.lower(*args)
  return lowered.compile(compiler_options=options) if options else lowered.compile()


def build_train_step(model: Transformer, schedule, mesh, state_shardings, *,
                     parallelism: str = "jit", dropout_key: jax.Array | None = None) -> Callable:
  """The jitted `(state, batch) -> (state, metrics)` over `mesh`: the one place the step is
  built, so that every section measures the step train.py runs, in each `parallelism`."""
  dropout_key = jax.random.key(1) if dropout_key is None else dropout_key
  if compile_steps is not None:
    return compile_steps(parallelism, model=model, mesh=mesh, state_shardings=state_shardings,
                         dropout_key=dropout_key, label_smoothing=LABEL_SMOOTHING,
                         schedule=schedule)[0]
  if parallelism != "jit":
    raise ValueError(f"parallelism={parallelism!r} is not one of {PARALLELISMS}.")
  step = functools.partial(train_lib.train_step, model=model, dropout_key=dropout_key,
                           label_smoothing=LABEL_SMOOTHING, schedule=schedule)
  return jax.jit(step, in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)


def init_state(model: Transformer, tx, mesh, *, seed: int = 0, options=None):
  """`(state, state_shardings)`: fresh parameters and optimizer state, replicated on `mesh`."""
  init = functools.partial(train_lib.init_state, model=model, tx=tx)
  key = jax.random.key(seed)
  shardings = sharding.state_shardings(jax.eval_shape(init, key), mesh)
  return aot_compile(jax.jit(init, out_shardings=shardings), key, options=options)(key), shardings


@dataclasses.dataclass
class Training:
  """A model's jitted step on a mesh; `fresh_state()` makes a new initial state; `options` are
  the XLA options to compile the step with."""
  model: Transformer
  step: Callable
  mesh: Any
  fresh_state: Callable[[], Any]
  options: dict[str, Any] | None = None


def setup_training(config: TransformerConfig, devices, *, parallelism: str = "jit",
                   optim: OptimConfig | None = None, seed: int = 0,
                   options: dict[str, Any] | None = None) -> tuple[Any, Training]:
  """`(state, training)` for `config` on a data mesh over `devices`."""
  model = Transformer(config)
  tx, schedule = make_optimizer(config.d_model, optim)
  mesh = sharding.create_mesh(devices)
  state, shardings = init_state(model, tx, mesh, seed=seed, options=options)
  step = build_train_step(model, schedule, mesh, shardings, parallelism=parallelism)
  fresh = lambda: init_state(model, tx, mesh, seed=seed, options=options)[0]
  return state, Training(model, step, mesh, fresh, options)


def run_steps(state, training: Training, batches) -> tuple[Any, list[dict[str, float]]]:
  """Applies the step to each host batch in turn; returns the state and each step's metrics."""
  history, compiled = [], None
  for batch in batches:
    batch = sharding.global_batch(batch, training.mesh)
    if compiled is None:
      compiled = aot_compile(training.step, state, batch, options=training.options)
    state, metrics = compiled(state, batch)
    history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
  return state, history


# ----------------------------------------------------------------------------- measuring


def time_calls(fn: Callable[[], Any], n: int) -> list[float]:
  """Seconds of each of `n` calls of `fn`, each waited for (`jax.block_until_ready`)."""
  times = []
  for _ in range(n):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return times


def median(times: list[float]) -> float:
  return statistics.median(times)


def xla_flops(compiled) -> float | None:
  """FLOPs of one call by XLA's cost analysis (None where unavailable; custom calls such as
  cuDNN attention count as zero there)."""
  try:
    analysis = compiled.cost_analysis()
  except Exception:
    return None
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  flops = (analysis or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def compiled_memory_bytes(compiled) -> int | None:
  """Device bytes one call needs by XLA's buffer assignment (arguments, outputs, temporaries)."""
  try:
    m = compiled.memory_analysis()
  except Exception:
    return None
  if m is None:
    return None
  peak = getattr(m, "peak_memory_in_bytes", 0)
  total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - \
      m.alias_size_in_bytes
  return int(max(peak, total))


def relative_error(a, b) -> float:
  """||a - b|| / ||b|| over every leaf of two pytrees, in float64."""
  num = den = 0.0
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    num += float(np.sum((x - y) ** 2))
    den += float(np.sum(y ** 2))
  return float(np.sqrt(num / max(den, 1e-30)))
