"""The accelerator check's run context, and its correctness sections (`accelerator.py`).

The context: the two profiles (`FULL` on an accelerator, `SMOKE` on CPU at tiny shapes, the
models from `TransformerConfig`'s presets), the deadline and the results so far (`Context`), the
device's facts and datasheet peak.

The sections, what only an accelerator shows:

- `attention`: the attention implementations (plain, XLA, cuDNN on NVIDIA GPUs, the Pallas
  kernel on TPUs) of `MultiHeadAttention` in bfloat16 against a float32 reference, forward and
  parameter gradients.
- `bf16_step`: a few bfloat16 training steps of a small model stay finite and close to float32.
- `multi_device`: the training step over a mesh of every device equals the one-device step.

Each takes the run's `Context` and returns a JSON-able dict with `status` "ok" or "failed" (a
value out of tolerance) or "skipped" and a `reason`; exceptions are the caller's. Imported only
after `accelerator.py` has set the JAX environment (platform, GPU allocator).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import math
import platform
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import optax

from benchmarks import batches
from benchmarks.workload import Training, aot_compile, build_training, model_shape
from transformer_jax import TransformerConfig
from transformer_jax.attention import MultiHeadAttention, attention_mask
from transformer_jax.experiment_config import PARALLELISMS, OptimConfig

# Dense bf16 peak FLOP/s per chip, from the vendors' datasheets, keyed by a substring of
# `jax.devices()[0].device_kind`; the first match wins, so specific names come first.
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("H800", 989e12),
    ("GH200", 989e12), ("B200", 2250e12), ("A100", 312e12), ("A10G", 70e12), ("L4", 121e12),
    ("TPU v6 lite", 918e12), ("TPU v6e", 918e12), ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12), ("TPU v5p", 459e12), ("TPU v5", 459e12), ("TPU v4", 275e12),
)


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


def _profiles() -> tuple[Profile, Profile]:
  """FULL and SMOKE; the smoke models are the tiny preset, one layer a side."""
  one_layer = dict(num_encoder_layers=1, num_decoder_layers=1)
  smoke_base = model_shape("tiny", **one_layer)
  full = Profile(
      name="full", shapes={"base": model_shape("base"), "big": model_shape("big")},
      vocab_size=37000, seq_len=64, ladders={"base": (1024, 512, 256), "big": (512, 256, 128)},
      warmup_steps=2, timed_steps=10,
      check_shape=model_shape("base", d_model=256, num_heads=4, d_ff=1024,
                              num_encoder_layers=2, num_decoder_layers=2),
      check_vocab=1000, check_batch=(32, 64), attention=(4, 128, 64, 512, 8),
      decode=dict(batch=256, src_len=32, new_tokens=32, beam=4, calls=3), matmul_n=8192,
      torch_timeout_s=150.0)
  smoke = Profile(
      name="smoke",
      shapes={"base": smoke_base,
              "big": model_shape("tiny", d_model=64, d_ff=128,
                                 dropout_rate=full.shapes["big"]["dropout_rate"], **one_layer)},
      vocab_size=64, seq_len=8, ladders={"base": (2, 1), "big": (1,)}, warmup_steps=1,
      timed_steps=2, check_shape=smoke_base, check_vocab=64, check_batch=(8, 8),
      attention=(2, 8, 6, 32, 4), decode=dict(batch=2, src_len=6, new_tokens=4, beam=2, calls=1),
      matmul_n=128, torch_timeout_s=120.0,
      compiler_options={"xla_backend_optimization_level": 0})
  return full, smoke


FULL, SMOKE = _profiles()


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
    "xla" once cuDNN or the TPU kernel failed in the attention check or "auto" in a training
    section, so that the figures still come."""
    cases = self.section("attention").get("cases", {})
    for impl, name in (("cudnn", "cuDNN attention"), ("pallas", "the Pallas TPU kernel")):
      if self.args.attention_impl == "auto" and cases.get(impl, {}).get("error"):
        return "xla", f"{name} failed in the attention check"
    if self.args.attention_impl == "auto" and self.attention_fallback:
      return "xla", self.attention_fallback
    return self.args.attention_impl, "as asked"


# ----------------------------------------------------------------------------- the device


def device_info() -> dict[str, Any]:
  """Backend, device kind and count, memory, library versions and the date (UTC)."""
  device = jax.devices()[0]
  return {
      "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
      "backend": jax.default_backend(), "device_kind": device.device_kind,
      "device_count": jax.device_count(), "process_count": jax.process_count(),
      "memory_gib": memory_stats().get("bytes_limit", 0) / 2**30 or None,
      "platform_version": device.client.platform_version,
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


def memory_stats() -> dict[str, Any]:
  """The first device's memory statistics ({} where the backend keeps none)."""
  try:
    return jax.devices()[0].memory_stats() or {}
  except Exception:  # Some backends do not implement it.
    return {}


def relative_error(a, b) -> float:
  """||a - b|| / ||b|| over every leaf of two pytrees, in float64."""
  num = den = 0.0
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    num += float(np.sum((x - y) ** 2))
    den += float(np.sum(y ** 2))
  return float(np.sqrt(num / max(den, 1e-30)))


def run_steps(training: Training, host_batches: list[dict]) -> list[dict[str, float]]:
  """Applies the step to each host batch in turn (compiled once); each step's metrics."""
  step = training.compile(host_batches[0])
  return [{k: float(v) for k, v in jax.device_get(step.run(training.put(b))).items()}
          for b in host_batches]


# Relative L2 error of bfloat16 against the float32 reference (bf16 keeps 8 significant bits,
# a relative rounding of 2^-9 = 0.2% per value; projections and softmax add a few of those).
ATTENTION_TOLERANCE = {"output": 2e-2, "grads": 3e-2}
# bfloat16 training steps against float32 ones: per-step loss and gradient norm.
BF16_TOLERANCE = {"loss": 5e-3, "grad_norm": 2e-2}
# Multi-device against one device, float32 at full matmul precision (as in tests/train_lib_test).
MULTI_DEVICE_TOLERANCE = {"params_max_abs": 1e-5, "loss": 1e-5}
_CASES = ("self", "causal", "cross")


def _highest_precision():
  """Full float32 matmuls (no TF32 / bf16 passes) for the float32 references."""
  return jax.default_matmul_precision("highest")


# ----------------------------------------------------------------------------- attention


def _attention_inputs(case: str, batch: int, q_len: int, kv_len: int, d_model: int):
  """Inputs rounded to bfloat16 (both sides see the same values) and the case's mask; rows of
  the batch have more and more padding at the end of the keys."""
  rng = np.random.default_rng({"self": 0, "causal": 1, "cross": 2}[case])
  kv_len = kv_len if case == "cross" else q_len
  as_bf16 = lambda x: jnp.asarray(x, jnp.bfloat16).astype(jnp.float32)
  x_q = as_bf16(rng.standard_normal((batch, q_len, d_model)))
  x_kv = as_bf16(rng.standard_normal((batch, kv_len, d_model))) if case == "cross" else x_q
  q_tokens = np.ones((batch, q_len), np.int32)
  kv_tokens = np.ones((batch, kv_len), np.int32)
  for b in range(batch):
    kv_tokens[b, kv_len - b * kv_len // (2 * batch):] = 0
  # Ids, which every implementation takes (the TPU kernel only these).
  mask = attention_mask(jnp.asarray(q_tokens), jnp.asarray(kv_tokens), causal=case == "causal")
  cotangent = jnp.asarray(rng.standard_normal((batch, q_len, d_model)), jnp.float32)
  return x_q, x_kv, mask, cotangent


def _forward_and_grads(config: TransformerConfig, params, x_q, x_kv, mask, cotangent):
  module = MultiHeadAttention(config)

  def loss(p):
    out = module.apply({"params": p}, x_q.astype(config.compute_dtype),
                       x_kv.astype(config.compute_dtype), mask)
    return jnp.sum(out.astype(jnp.float32) * cotangent), out

  (_, out), grads = jax.value_and_grad(loss, has_aux=True)(params)
  return out.astype(jnp.float32), grads


_forward_and_grads_jit = jax.jit(_forward_and_grads, static_argnums=0)


def attention_check(ctx: Context) -> dict:
  """Each implementation in bfloat16 against plain attention in float32, on three cases."""
  batch, q_len, kv_len, d_model, heads = ctx.profile.attention
  ref_config = TransformerConfig(vocab_size=8, d_model=d_model, num_heads=heads, d_ff=8,
                                 dropout_rate=0.0, dtype="float32", attention_impl="plain")
  impls = {"plain": None, "xla": None,
           "cudnn": None if ctx.is_gpu else "cuDNN attention needs an NVIDIA GPU",
           "pallas": None if jax.default_backend() == "tpu" else
                     "the Pallas kernel is for TPUs (tests/unit check it in the interpreter)"}
  results = {impl: ({"skipped": why} if why else {}) for impl, why in impls.items()}
  pairwise, params = {}, None
  for case in _CASES:
    inputs = _attention_inputs(case, batch, q_len, kv_len, d_model)
    if params is None:  # The same projections serve every case.
      init = jax.jit(MultiHeadAttention(ref_config).init)
      params = init(jax.random.key(0), *inputs[:3])["params"]
    run = lambda config: aot_compile(_forward_and_grads_jit, config, params, *inputs,
                                     options=ctx.profile.compiler_options)(params, *inputs)
    with _highest_precision():
      ref_out, ref_grads = run(ref_config)
    outputs = {}
    for impl, result in results.items():
      if "skipped" in result or "error" in result:
        continue
      try:
        out, grads = run(ref_config.replace(dtype="bfloat16", attention_impl=impl))
      except Exception as e:  # cuDNN may refuse a shape or version: a finding, not a crash.
        result["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        continue
      outputs[impl] = np.asarray(out)
      result[case] = {"output_rel_err": relative_error(out, ref_out),
                      "grads_rel_err": relative_error(grads, ref_grads),
                      "finite": bool(np.isfinite(outputs[impl]).all())}
    names = sorted(outputs)
    pairs = [relative_error(outputs[a], outputs[b]) for i, a in enumerate(names)
             for b in names[i + 1:]]
    pairwise[case] = max(pairs) if pairs else None
  return _attention_verdict(results, pairwise)


def _attention_verdict(results: dict, pairwise: dict) -> dict:
  passed = True
  for result in results.values():
    if "skipped" in result:
      continue
    ok = "error" not in result and all(
        result[c]["finite"] and result[c]["output_rel_err"] <= ATTENTION_TOLERANCE["output"]
        and result[c]["grads_rel_err"] <= ATTENTION_TOLERANCE["grads"] for c in _CASES)
    result["passed"] = ok
    passed &= ok
  metric = ("relative L2 error vs plain float32 (matmul precision highest), bf16-rounded "
            "inputs, same parameters")
  return {"status": "ok" if passed else "failed", "passed": passed, "cases": results,
          "pairwise_max_rel_err": pairwise, "tolerance": {**ATTENTION_TOLERANCE, "metric": metric}}


# ----------------------------------------------------------------------------- bf16 step


def bf16_step_check(ctx: Context) -> dict:
  """Three training steps from the same state on the same batches, float32 vs bfloat16."""
  p = ctx.profile
  rows, length = p.check_batch
  host = [batches.random_batch(p.check_vocab, rows, length, seed=i, padding=True)
          for i in range(3)]
  optim = OptimConfig(schedule="rsqrt", warmup_steps=1, peak_learning_rate=1e-3)
  histories, updates = {}, {}
  for dtype in ("float32", "bfloat16"):
    config = TransformerConfig(vocab_size=p.check_vocab, **p.check_shape, dtype=dtype,
                               attention_impl=ctx.args.attention_impl)
    with _highest_precision() if dtype == "float32" else contextlib.nullcontext():
      training = build_training(config, optim, devices=jax.devices()[:1],
                                parallelism=ctx.args.parallelism, options=p.compiler_options)
      initial = jax.device_get(training.state.params)
      histories[dtype] = run_steps(training, host)
    updates[dtype] = jax.tree.map(lambda a, b: np.asarray(a) - b,
                                  jax.device_get(training.state.params), initial)
  f32, bf16 = histories["float32"], histories["bfloat16"]
  rel = lambda key: [abs(b[key] - a[key]) / max(abs(a[key]), 1e-12) for a, b in zip(f32, bf16)]
  finite = all(math.isfinite(m[k]) for m in f32 + bf16 for k in ("train_loss", "grad_norm"))
  loss_err, grad_err = max(rel("train_loss")), max(rel("grad_norm"))
  passed = (finite and loss_err <= BF16_TOLERANCE["loss"]
            and grad_err <= BF16_TOLERANCE["grad_norm"])
  return {"status": "ok" if passed else "failed", "passed": passed, "finite": finite,
          "steps": len(host), "model": {**p.check_shape, "vocab_size": p.check_vocab},
          "loss_float32": [m["train_loss"] for m in f32],
          "loss_bfloat16": [m["train_loss"] for m in bf16],
          "loss_max_rel_err": loss_err, "grad_norm_max_rel_err": grad_err,
          "update_rel_err": relative_error(updates["bfloat16"], updates["float32"]),
          "tolerance": {**BF16_TOLERANCE, "metric": "per-step relative difference; "
                        "update_rel_err (parameter change after the steps) is not gated: "
                        "Adam's first updates are about lr * sign(g)"}}


# ----------------------------------------------------------------------------- multi-device


def multi_device_check(ctx: Context) -> dict:
  """Two float32 steps over a mesh of every device, in each parallel mode the package has,
  against the same steps on one device."""
  n = jax.device_count()
  if n < 2:
    return {"status": "skipped", "reason": f"one device ({jax.devices()[0].device_kind})"}
  p = ctx.profile
  rows, length = p.check_batch
  rows = -(-rows // n) * n
  host = [batches.random_batch(p.check_vocab, rows, length, seed=i, padding=True)
          for i in range(2)]
  # Adam eps 1e-3: near-zero gradients (whose sign is rounding) give no lr-sized differences.
  optim = OptimConfig(schedule="rsqrt", warmup_steps=2, peak_learning_rate=1e-2, eps=1e-3)
  config = TransformerConfig(vocab_size=p.check_vocab, **p.check_shape, dtype="float32")
  runs = {}
  with _highest_precision():
    meshes = [("one", jax.devices()[:1])] + [(mode, jax.devices()) for mode in PARALLELISMS]
    for name, devices in meshes:
      training = build_training(config, optim, devices=devices,
                                parallelism="jit" if name == "one" else name,
                                options=p.compiler_options)
      history = run_steps(training, host)
      runs[name] = (jax.device_get(training.state.params), history[-1])
  one, m1 = runs.pop("one")
  modes = {}
  for mode, (many, mn) in runs.items():
    max_abs = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                  for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(many)))
    loss_err = abs(mn["train_loss"] - m1["train_loss"]) / abs(m1["train_loss"])
    modes[mode] = {"params_max_abs_diff": max_abs, "loss_rel_err": loss_err,
                   "passed": (max_abs <= MULTI_DEVICE_TOLERANCE["params_max_abs"]
                              and loss_err <= MULTI_DEVICE_TOLERANCE["loss"])}
  passed = all(m["passed"] for m in modes.values())
  return {"status": "ok" if passed else "failed", "passed": passed, "devices": n,
          "parallelism": modes, "rows": rows, "steps": len(host),
          "tolerance": MULTI_DEVICE_TOLERANCE}
