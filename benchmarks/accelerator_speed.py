"""Speed on the device, the accelerator check's measuring sections (`accelerator.py`).

- `matmul_peak`: the best bf16 FLOP/s of a big square matmul, the measured ceiling for MFU.
- `train_throughput`: Transformer base / big training steps in bfloat16 (float32 parameters and
  Adam state), the batch from a ladder (largest first; the first that compiles and fits),
  tokens/s and MFU against the datasheet peak and against the measured matmul peak.
- `decode_throughput`: beam-search generated tokens/s at base, random parameters and sources.
- `torch_peer`: PyTorch at the same shapes (bf16 autocast, scaled-dot-product attention), in its
  own process (`python -m benchmarks.peers`) so that a missing or broken torch cannot hurt the
  run.

MFU counts model FLOPs analytically (`workload.model_flops_per_step`: 3 x the forward matmuls,
attention scores and the output projection included, remat recomputation excluded); XLA's own
count of the compiled step (`cost_analysis()`, which sees no FLOPs inside cuDNN's fused
attention and does count recomputation) is reported beside it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import jax
import numpy as np

from benchmarks import batches, harness, workload
from benchmarks.accelerator_checks import Context, memory_stats, table_peak
from transformer_jax import Transformer, TransformerConfig, beam_search
from transformer_jax.experiment_config import OptimConfig

MEMORY_HEADROOM = 0.97  # A compiled step needing more than this share of the device is refused.


class DoesNotFit(RuntimeError):
  """XLA's buffer assignment says a compiled step needs more memory than the device has."""


class NoRungFits(RuntimeError):
  """No batch of the ladder could be measured (out of memory, or out of time)."""


def short_error(error: BaseException, limit: int = 300) -> str:
  lines = str(error).strip().splitlines() or [""]
  return f"{type(error).__name__}: {lines[0][:limit]}"


# ----------------------------------------------------------------------------- peaks


def matmul_peak(ctx: Context) -> dict:
  """Best bf16 FLOP/s of an n x n x n matmul, 10 queued calls per timing, best of 3 timings."""
  n = ctx.profile.matmul_n
  best, median = workload.matmul_peak(n, "bfloat16", timings=3, calls=10)
  table = table_peak(jax.devices()[0].device_kind)
  return {"status": "ok", "n": n, "dtype": "bfloat16", "tflops_best": best / 1e12,
          "tflops_median": median / 1e12,
          "table_peak_tflops": table / 1e12 if table else None,
          "fraction_of_table": best / table if table else None}


def _peaks(ctx: Context, devices: int) -> tuple[float | None, float | None]:
  """(datasheet, measured) peak FLOP/s of `devices` chips."""
  table = table_peak(jax.devices()[0].device_kind)
  measured = ctx.section("matmul_peak").get("tflops_best")
  return (table * devices if table else None,
          measured * 1e12 * devices if measured else None)


# ----------------------------------------------------------------------------- training


def choose_rows(ladder, try_rows: Callable[[int], Any], remaining: Callable[[], float],
                min_seconds: float) -> tuple[int, Any, list[dict]]:
  """The first rung of `ladder` (largest first) that `try_rows` accepts.

  `try_rows(rows)` compiles and runs once; an out-of-memory error or `DoesNotFit` moves on to the
  next rung (each attempt is recorded), anything else propagates.

  Returns:
    (rows, what try_rows returned, attempts).
  Raises:
    NoRungFits: no rung fits, or time ran out before one did.
  """
  attempts = []
  for rows in ladder:
    if remaining() < min_seconds:
      attempts.append({"rows": rows, "skipped": "time budget"})
      break
    try:
      return rows, try_rows(rows), attempts
    except Exception as e:
      if not (isinstance(e, DoesNotFit) or is_out_of_memory(e)):
        raise
      attempts.append({"rows": rows, "error": short_error(e)})
  raise NoRungFits(f"no batch of the ladder {tuple(ladder)} could be measured: {attempts}")


def _first_step(ctx: Context, training: workload.Training,
                rows_total: int) -> tuple[workload.CompiledStep, float, int | None, dict]:
  """`try_rows` of the training ladder: compile, check memory, one timed call."""
  p = ctx.profile
  step = training.compile(batches.random_batch(p.vocab_size, rows_total, p.seq_len))
  need, limit = compiled_memory_bytes(step.compiled), memory_stats().get("bytes_limit")
  if need and limit and need > MEMORY_HEADROOM * limit:
    raise DoesNotFit(f"needs {need / 2**30:.1f} GiB of {limit / 2**30:.1f} GiB")
  start = time.perf_counter()
  metrics = step.run()
  return step, time.perf_counter() - start, need, metrics


def train_throughput(ctx: Context, shape_name: str, remat: bool) -> dict:
  """Tokens/s and MFU of the bf16 training step of `shape_name`, remat off or on.

  Where "auto" attention (cuDNN on GPUs) fails to compile or run, the section is measured again
  with "xla", and so are the training sections after it; the report says why.
  """
  impl, why = ctx.training_attention_impl()
  try:
    return _train_throughput(ctx, shape_name, remat, impl, why)
  except NoRungFits:
    raise
  except Exception as e:
    if impl != "auto" or not ctx.is_gpu:
      raise
    ctx.attention_fallback = f"attention_impl=auto failed in a training step: {short_error(e)}"
  return _train_throughput(ctx, shape_name, remat, "xla", ctx.attention_fallback)


def _train_throughput(ctx: Context, shape_name: str, remat: bool, impl: str, why: str) -> dict:
  p = ctx.profile
  shape = p.shapes[shape_name]
  config = TransformerConfig(vocab_size=p.vocab_size, **shape, dtype="bfloat16", remat=remat,
                             attention_impl=impl, scan_layers=ctx.args.scan_layers)
  n = jax.device_count()
  training = workload.build_training(config, OptimConfig(), parallelism=ctx.args.parallelism,
                                     options=p.compiler_options)
  rows, (step, first_s, need, metrics), attempts = choose_rows(
      p.ladders[shape_name], lambda r: _first_step(ctx, training, r * n), ctx.remaining,
      min_seconds=10.0 if p.name == "full" else 0.0)
  time_calls(step.run, p.warmup_steps)
  times = time_calls(step.run, p.timed_steps)
  loss = float(jax.device_get(step.run()["train_loss"]))
  rows_total, t = rows * n, statistics.median(times)
  tokens = rows_total * p.seq_len  # Per side.
  flops = workload.model_flops_per_step(shape, p.vocab_size, rows_total, p.seq_len)
  xla = xla_flops(step.compiled)
  table, measured = _peaks(ctx, n)
  return {
      "status": "ok", "shape": shape_name, "remat": remat, "attention_impl": impl,
      "attention_impl_reason": why, "scan_layers": ctx.args.scan_layers,
      "parallelism": ctx.args.parallelism, "devices": n, "rows": rows_total,
      "seq_len": p.seq_len, "tokens_per_step": 2 * tokens, "params": training.num_params,
      "step_s_median": t, "step_s": times, "tokens_per_s": 2 * tokens / t,
      "target_tokens_per_s": tokens / t, "model_tflop_per_step": flops / 1e12,
      "xla_tflop_per_step": xla / 1e12 if xla else None, "achieved_tflops": flops / t / 1e12,
      "mfu_table": flops / t / table if table else None,
      "mfu_measured": flops / t / measured if measured else None,
      "compile_s": step.compile_s, "first_call_s": first_s,
      "compiled_memory_gib": need / 2**30 if need else None,
      "process_peak_memory_gib": _gib(memory_stats().get("peak_bytes_in_use")), "loss": loss,
      "finite": bool(np.isfinite(loss)), "attempts": attempts,
      "first_loss": float(metrics["train_loss"])}


# ----------------------------------------------------------------------------- decoding


def decode_throughput(ctx: Context) -> dict:
  """Beam search at base in bf16: generated tokens/s with exactly `new_tokens` per sentence."""
  p, d = ctx.profile, ctx.profile.decode
  config = TransformerConfig(vocab_size=p.vocab_size, **p.shapes["base"], dtype="bfloat16")
  model = Transformer(config)
  src = jax.numpy.asarray(batches.random_batch(p.vocab_size, d["batch"], d["src_len"])["src"])
  params = jax.jit(model.init)(jax.random.key(0), src[:1], src[:1, :4])["params"]
  new = d["new_tokens"]
  run = lambda: beam_search(model, params, src, beam_size=d["beam"], alpha=0.6, min_len=new,
                            max_len=new)
  start = time.perf_counter()
  tokens, _ = jax.block_until_ready(run())
  first_s = time.perf_counter() - start
  if tokens.shape != (d["batch"], d["beam"], new):
    raise RuntimeError(f"beam_search returned {tokens.shape}, expected "
                       f"{(d['batch'], d['beam'], new)}")
  times = time_calls(run, d["calls"])
  t = statistics.median(times)
  return {"status": "ok", "shape": "base", "dtype": "bfloat16", **d,
          "generated_tokens_per_s": d["batch"] * new / t, "call_s_median": t, "call_s": times,
          "first_call_s": first_s, "real_tokens": int((np.asarray(tokens[:, 0]) != 0).sum())}


# ----------------------------------------------------------------------------- PyTorch


def torch_peer(ctx: Context) -> dict:
  """Runs `python -m benchmarks.peers` in a child process at the training sections' shapes."""
  backend = jax.default_backend()
  if backend == "tpu":
    return {"status": "skipped", "reason": "the PyTorch peer runs on NVIDIA GPUs (and CPU)"}
  if importlib.util.find_spec("torch") is None:
    return {"status": "skipped", "reason": "torch is not installed"}
  p = ctx.profile
  timeout = min(p.torch_timeout_s, ctx.remaining() - ctx.reserve_s)
  if timeout < (30.0 if p.name == "full" else 5.0):
    return {"status": "skipped", "reason": f"time budget ({timeout:.0f} s left for it)"}
  spec = {"device": "cuda" if backend == "gpu" else "cpu", "shapes": p.shapes,
          "vocab_size": p.vocab_size, "seq_len": p.seq_len, "ladders": p.ladders,
          "warmup_steps": p.warmup_steps, "timed_steps": p.timed_steps,
          "optim": dataclasses.asdict(OptimConfig()), "deadline_s": timeout - 5.0}
  with tempfile.TemporaryDirectory() as tmp:
    spec_path, out_path = os.path.join(tmp, "spec.json"), os.path.join(tmp, "out.json")
    with open(spec_path, "w") as f:
      json.dump(spec, f)
    try:
      code = subprocess.run([sys.executable, "-m", "benchmarks.peers", spec_path, out_path],
                            cwd=harness.ROOT, timeout=timeout, check=False).returncode
    except subprocess.TimeoutExpired:
      code = "timeout"
    result = {}
    if os.path.exists(out_path):
      with open(out_path) as f:
        result = json.load(f)
  for name, r in result.get("shapes", {}).items():  # The report's MFU of the peer.
    if "rows" in r:
      flops = workload.model_flops_per_step(p.shapes[name], p.vocab_size, r["rows"], r["seq_len"])
      r["model_tflop_per_step"] = flops / 1e12
  return _torch_verdict(result, code, timeout)


def _torch_verdict(result: dict, code, timeout: float) -> dict:
  if result.get("skipped"):
    return {"status": "skipped", "reason": result["skipped"], **result}
  shapes = result.get("shapes", {})
  if code != 0 or not shapes or any("error" in r for r in shapes.values()):
    why = f"timed out after {timeout:.0f} s" if code == "timeout" else f"exit code {code}"
    return {"status": "error", "error": f"PyTorch peer: {why}", **result}
  return {"status": "ok", **result}


# ----------------------------------------------------------------------------- measuring


def time_calls(fn: Callable[[], Any], n: int) -> list[float]:
  """Seconds of each of `n` calls of `fn`, each waited for (`jax.block_until_ready`)."""
  times = []
  for _ in range(n):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return times


def xla_flops(compiled) -> float | None:
  """FLOPs of one call by XLA's cost analysis (None where unavailable; custom calls such as
  cuDNN attention count as zero there)."""
  try:
    flops = (compiled.cost_analysis() or {}).get("flops")
  except Exception:  # Not every backend has a cost analysis.
    return None
  return float(flops) if flops and flops > 0 else None


def compiled_memory_bytes(compiled) -> int | None:
  """Device bytes one call needs by XLA's buffer assignment (arguments, outputs, temporaries)."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # Not every backend has one.
    return None
  if m is None:
    return None
  total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
           - m.alias_size_in_bytes)
  return int(max(m.peak_memory_in_bytes, total))


def is_out_of_memory(error: BaseException) -> bool:
  """Whether an exception from compiling or running says the device memory ran out."""
  text = f"{type(error).__name__} {error}".lower()
  return any(s in text for s in ("resource_exhausted", "out of memory", "outofmemory",
                                 "resource exhausted"))


def _gib(n: int | None) -> float | None:
  return None if n is None else n / 2**30
