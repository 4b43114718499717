"""Correctness on the device, for `benchmarks/accelerator.py`: what only an accelerator shows.

- `attention`: the attention implementations (plain, XLA, cuDNN on NVIDIA GPUs) of
  `MultiHeadAttention` in bfloat16 against a float32 reference, forward and parameter gradients.
- `bf16_step`: a few bfloat16 training steps of a small model stay finite and close to float32.
- `multi_device`: the training step over a mesh of every device equals the one-device step.

Each function takes the run's `Context` and returns a JSON-able dict with `status` "ok" or
"failed" (a value out of tolerance) or "skipped" and a `reason`; exceptions are the caller's.
"""

from __future__ import annotations

import contextlib
import math

import jax
import jax.numpy as jnp
import numpy as np

from accelerator_lib import (PARALLELISMS, Context, aot_compile, random_batch, relative_error,
                             run_steps, setup_training)
from transformer_jax import TransformerConfig
from transformer_jax.attention import MultiHeadAttention, make_attention_mask
from transformer_jax.experiment_config import OptimConfig

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
  manager = getattr(jax, "default_matmul_precision", None)
  return contextlib.nullcontext() if manager is None else manager("highest")


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
  mask = make_attention_mask(jnp.asarray(q_tokens), jnp.asarray(kv_tokens),
                             causal=case == "causal")
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
           "cudnn": None if ctx.is_gpu else "cuDNN attention needs an NVIDIA GPU"}
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
  batches = [random_batch(p.check_vocab, rows, length, seed=i, padding=True) for i in range(3)]
  optim = OptimConfig(schedule="rsqrt", warmup_steps=1, peak_learning_rate=1e-3)
  histories, updates = {}, {}
  for dtype in ("float32", "bfloat16"):
    config = TransformerConfig(vocab_size=p.check_vocab, **p.check_shape, dtype=dtype,
                               attention_impl=ctx.args.attention_impl)
    with _highest_precision() if dtype == "float32" else contextlib.nullcontext():
      state, training = setup_training(config, jax.devices()[:1], optim=optim,
                                       parallelism=ctx.args.parallelism,
                                       options=p.compiler_options)
      initial = jax.device_get(state.params)
      state, histories[dtype] = run_steps(state, training, batches)
    updates[dtype] = jax.tree.map(lambda a, b: np.asarray(a) - b, jax.device_get(state.params),
                                  initial)
  f32, bf16 = histories["float32"], histories["bfloat16"]
  rel = lambda key: [abs(b[key] - a[key]) / max(abs(a[key]), 1e-12) for a, b in zip(f32, bf16)]
  finite = all(math.isfinite(m[k]) for m in f32 + bf16 for k in ("train_loss", "grad_norm"))
  loss_err, grad_err = max(rel("train_loss")), max(rel("grad_norm"))
  passed = (finite and loss_err <= BF16_TOLERANCE["loss"]
            and grad_err <= BF16_TOLERANCE["grad_norm"])
  return {"status": "ok" if passed else "failed", "passed": passed, "finite": finite,
          "steps": len(batches), "model": {**p.check_shape, "vocab_size": p.check_vocab},
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
  batches = [random_batch(p.check_vocab, rows, length, seed=i, padding=True) for i in range(2)]
  # Adam eps 1e-3: near-zero gradients (whose sign is rounding) give no lr-sized differences.
  optim = OptimConfig(schedule="rsqrt", warmup_steps=2, peak_learning_rate=1e-2, eps=1e-3)
  config = TransformerConfig(vocab_size=p.check_vocab, **p.check_shape, dtype="float32")
  runs = {}
  with _highest_precision():
    meshes = [("one", jax.devices()[:1])] + [(mode, jax.devices()) for mode in PARALLELISMS]
    for name, devices in meshes:
      state, training = setup_training(config, devices, optim=optim,
                                       parallelism="jit" if name == "one" else name,
                                       options=p.compiler_options)
      state, history = run_steps(state, training, batches)
      runs[name] = (jax.device_get(state.params), history[-1])
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
          "parallelism": modes, "rows": rows, "steps": len(batches),
          "tolerance": MULTI_DEVICE_TOLERANCE}
