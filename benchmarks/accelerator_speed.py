"""Speed on the device, for `benchmarks/accelerator.py`.

- `matmul_peak`: the best bf16 FLOP/s of a big square matmul, the measured ceiling for MFU.
- `train_throughput`: Transformer base / big training steps in bfloat16 (float32 parameters and
  Adam state), the batch from a ladder (largest first; the first that compiles and fits),
  tokens/s and MFU against the datasheet peak and against the measured matmul peak.
- `decode_throughput`: beam-search generated tokens/s at base, random parameters and sources.
- `torch_peer`: PyTorch at the same shapes (bf16 autocast, scaled-dot-product attention), in its
  own process (`accelerator_torch.py`) so that a missing or broken torch cannot hurt the run.

MFU counts model FLOPs analytically (`train_benchmark.model_flops_per_step`: 3 x the forward
matmuls, attention scores and the output projection included, remat recomputation excluded);
XLA's own count of the compiled step (`cost_analysis()`, which sees no FLOPs inside cuDNN's
fused attention and does count recomputation) is reported beside it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import jax
import numpy as np

from accelerator_lib import (LABEL_SMOOTHING, Context, aot_compile, compiled_memory_bytes,
                             is_out_of_memory, median, memory_limit_bytes, peak_memory_gib,
                             random_batch, setup_training, table_peak, time_calls, xla_flops)
from train_benchmark import model_flops_per_step
from transformer_jax import Transformer, TransformerConfig, beam_search, sharding

TORCH_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "accelerator_torch.py")
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
  a = jax.random.normal(jax.random.key(0), (n, n), jax.numpy.bfloat16)
  b = jax.random.normal(jax.random.key(1), (n, n), jax.numpy.bfloat16)
  matmul = jax.jit(lambda x, y: x @ y)
  matmul(a, b).block_until_ready()
  per_call = []
  for _ in range(3):
    start = time.perf_counter()
    for _ in range(10):
      out = matmul(a, b)
    out.block_until_ready()
    per_call.append((time.perf_counter() - start) / 10)
  best = 2.0 * n**3 / min(per_call) / 1e12
  table = table_peak(jax.devices()[0].device_kind)
  return {"status": "ok", "n": n, "dtype": "bfloat16", "tflops_best": best,
          "tflops_median": 2.0 * n**3 / median(per_call) / 1e12,
          "table_peak_tflops": table / 1e12 if table else None,
          "fraction_of_table": best * 1e12 / table if table else None}


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


def _compile_and_run(ctx, training, holder, rows_total):
  """`try_rows` of the training ladder: compile, check memory, one call; returns the pieces."""
  p = ctx.profile
  if any(x.is_deleted() for x in jax.tree.leaves(holder[0])):  # Donated to a failed call.
    holder[0] = training.fresh_state()
  host = random_batch(p.vocab_size, rows_total, p.seq_len)
  batch = sharding.global_batch(host, training.mesh)
  start = time.perf_counter()
  compiled = aot_compile(training.step, holder[0], batch, options=training.options)
  compile_s = time.perf_counter() - start
  need, limit = compiled_memory_bytes(compiled), memory_limit_bytes()
  if need and limit and need > MEMORY_HEADROOM * limit:
    raise DoesNotFit(f"needs {need / 2**30:.1f} GiB of {limit / 2**30:.1f} GiB")
  start = time.perf_counter()
  holder[0], metrics = jax.block_until_ready(compiled(holder[0], batch))
  return compiled, batch, compile_s, time.perf_counter() - start, need, metrics


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
  state, training = setup_training(config, jax.devices(), parallelism=ctx.args.parallelism,
                                   options=p.compiler_options)
  holder = [state]
  rows, (compiled, batch, compile_s, first_s, need, metrics), attempts = choose_rows(
      p.ladders[shape_name], lambda r: _compile_and_run(ctx, training, holder, r * n),
      ctx.remaining, min_seconds=10.0 if p.name == "full" else 0.0)

  def call():
    holder[0], m = compiled(holder[0], batch)
    return holder[0], m

  time_calls(call, p.warmup_steps)
  times = time_calls(call, p.timed_steps)
  loss = float(jax.device_get(call()[1]["train_loss"]))
  rows_total, t = rows * n, median(times)
  tokens = rows_total * p.seq_len  # Per side.
  flops = model_flops_per_step(shape, p.vocab_size, rows_total, p.seq_len)
  xla = xla_flops(compiled)
  table, measured = _peaks(ctx, n)
  return {
      "status": "ok", "shape": shape_name, "remat": remat, "attention_impl": impl,
      "attention_impl_reason": why, "scan_layers": ctx.args.scan_layers,
      "parallelism": ctx.args.parallelism, "devices": n, "rows": rows_total,
      "seq_len": p.seq_len, "tokens_per_step": 2 * tokens,
      "params": int(sum(x.size for x in jax.tree.leaves(holder[0].params))),
      "step_s_median": t, "step_s": times, "tokens_per_s": 2 * tokens / t,
      "target_tokens_per_s": tokens / t, "model_tflop_per_step": flops / 1e12,
      "xla_tflop_per_step": xla / 1e12 if xla else None, "achieved_tflops": flops / t / 1e12,
      "mfu_table": flops / t / table if table else None,
      "mfu_measured": flops / t / measured if measured else None,
      "compile_s": compile_s, "first_call_s": first_s,
      "compiled_memory_gib": need / 2**30 if need else None,
      "process_peak_memory_gib": peak_memory_gib(), "loss": loss,
      "finite": bool(np.isfinite(loss)), "attempts": attempts,
      "first_loss": float(metrics["train_loss"])}


# ----------------------------------------------------------------------------- decoding


def decode_throughput(ctx: Context) -> dict:
  """Beam search at base in bf16: generated tokens/s with exactly `new_tokens` per sentence."""
  p, d = ctx.profile, ctx.profile.decode
  config = TransformerConfig(vocab_size=p.vocab_size, **p.shapes["base"], dtype="bfloat16")
  model = Transformer(config)
  rng = np.random.default_rng(0)
  src = jax.numpy.asarray(rng.integers(3, p.vocab_size, (d["batch"], d["src_len"]),
                                       dtype=np.int32))
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
  t = median(times)
  return {"status": "ok", "shape": "base", "dtype": "bfloat16", **d,
          "generated_tokens_per_s": d["batch"] * new / t, "call_s_median": t, "call_s": times,
          "first_call_s": first_s, "real_tokens": int((np.asarray(tokens[:, 0]) != 0).sum())}


# ----------------------------------------------------------------------------- PyTorch


def torch_peer(ctx: Context) -> dict:
  """Runs `accelerator_torch.py` in a child process at the training sections' shapes."""
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
          "label_smoothing": LABEL_SMOOTHING, "deadline_s": timeout - 5.0}
  with tempfile.TemporaryDirectory() as tmp:
    spec_path, out_path = os.path.join(tmp, "spec.json"), os.path.join(tmp, "out.json")
    with open(spec_path, "w") as f:
      json.dump(spec, f)
    try:
      proc = subprocess.run([sys.executable, TORCH_SCRIPT, spec_path, out_path],
                            timeout=timeout, check=False)
      code = proc.returncode
    except subprocess.TimeoutExpired:
      code = "timeout"
    result = json.load(open(out_path)) if os.path.exists(out_path) else {}
  return _torch_verdict(result, code, timeout)


def _torch_verdict(result: dict, code, timeout: float) -> dict:
  if result.get("skipped"):
    return {"status": "skipped", "reason": result["skipped"], **result}
  shapes = result.get("shapes", {})
  if code != 0 or not shapes or any("error" in r for r in shapes.values()):
    why = f"timed out after {timeout:.0f} s" if code == "timeout" else f"exit code {code}"
    return {"status": "error", "error": f"PyTorch peer: {why}", **result}
  return {"status": "ok", **result}
