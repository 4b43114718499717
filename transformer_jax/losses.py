"""The label-smoothed cross-entropy: on logits, or fused with the output projection.

`cross_entropy_loss` takes logits `[..., V]`. `projected_cross_entropy` takes the decoder's
final hidden states and the output projection instead, and never materializes the `[N, V]`
logits: it walks over chunks of tokens whose logits fit in cache, and computes each chunk's
loss and its gradient (softmax minus the smoothed target) in the same pass, accumulating the
gradients of the hidden states, the projection and its bias. On the Multi30k recipe (4,096
tokens x 6,000 words) the plain path writes and re-reads ~100 MB of logits, their gradient and
a transposed copy per step; the fused path keeps ~8 MB live and is 1.7x faster there.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# Tokens per chunk: the chunk's float32 logits take about this many bytes. On CPUs the L3
# cache's order (256-1024 tokens were equally fast at 6,000 words on the 2-core Zen 4, 128
# slower). On GPUs and TPUs a chunk must keep the matrix units busy and the loop short: each
# iteration rewrites the float32 gradient of the projection ([V, D], 76 MB for base at 37k
# words), which at CPU-sized 64-token chunks cost as much as the rest of a TPU step; 512 MiB
# (3,584 tokens at 37k words) was 1.04x faster than 128 MiB for base on v5e-8 (docs/tpu.md).
CHUNK_BYTES = {"cpu": 8 * 2**20}
ACCELERATOR_CHUNK_BYTES = 512 * 2**20


def default_chunk_tokens(vocab: int, platform: str | None = None) -> int:
  """Tokens per chunk of `projected_cross_entropy` for `platform` (default: the default
  backend's): a multiple of 64 whose float32 logits take about the platform's chunk bytes."""
  budget = CHUNK_BYTES.get(platform or jax.default_backend(), ACCELERATOR_CHUNK_BYTES)
  return max(64, budget // (4 * vocab) // 64 * 64)


def cross_entropy_loss(logits_BxTxV: jax.Array, targets_BxT: jax.Array, weights_BxT: jax.Array,
                       label_smoothing: float = 0.0) -> dict[str, jax.Array]:
  """Sums over real tokens of the label-smoothed cross-entropy, the NLL and correct predictions.

  The smoothed target puts 1 - eps on the label and eps spread uniformly over the vocabulary;
  computed from integer labels, without materializing one-hot targets.
  """
  logits = logits_BxTxV.astype(jnp.float32)
  max_logit = jnp.max(logits, axis=-1)
  shifted = logits - jax.lax.stop_gradient(max_logit)[..., None]
  log_z = jnp.log(jnp.sum(jnp.exp(shifted), axis=-1))
  target_logit = jnp.take_along_axis(shifted, targets_BxT[..., None], axis=-1)[..., 0]
  nll = log_z - target_logit
  smooth = log_z - jnp.mean(shifted, axis=-1)
  loss = (1.0 - label_smoothing) * nll + label_smoothing * smooth
  w = weights_BxT.astype(jnp.float32)
  # "Correct" when the label's logit is the maximum: no second pass over [B, T, V] for an argmax.
  correct = (target_logit >= 0.0).astype(jnp.float32)
  return {"loss_sum": jnp.sum(loss * w), "nll_sum": jnp.sum(nll * w),
          "correct_sum": jnp.sum(correct * w), "num_tokens": jnp.sum(w)}


def projected_cross_entropy(hidden_BxTxD: jax.Array, kernel_VxD: jax.Array,
                            bias_V: jax.Array | None, targets_BxT: jax.Array,
                            weights_BxT: jax.Array, label_smoothing: float = 0.0,
                            chunk_tokens: int | None = None) -> dict[str, jax.Array]:
  """`cross_entropy_loss(hidden @ kernel.T + bias, ...)`, fused and chunked over tokens.

  The logits are computed in `hidden`'s dtype with float32 accumulation, as the model's
  output projection does. Differentiable through `loss_sum` only (the training loss); the
  other sums are metrics. `chunk_tokens` defaults to the default backend's `default_chunk_tokens`.
  """
  d_model, vocab = hidden_BxTxD.shape[-1], kernel_VxD.shape[0]
  hidden = hidden_BxTxD.reshape(-1, d_model)
  n = hidden.shape[0]
  chunk = chunk_tokens or default_chunk_tokens(vocab)
  chunk = min(chunk, n)
  pad = -n % chunk
  targets = jnp.pad(targets_BxT.reshape(-1), (0, pad))
  weights = jnp.pad(weights_BxT.reshape(-1).astype(jnp.float32), (0, pad))
  hidden = jnp.pad(hidden, ((0, pad), (0, 0)))
  bias = jnp.zeros((vocab,), jnp.float32) if bias_V is None else bias_V
  sums, (d_hidden, d_kernel, d_bias) = _fused(hidden, kernel_VxD, bias, targets, weights,
                                              float(label_smoothing), chunk)
  del d_hidden, d_kernel, d_bias  # Used by the custom gradient only.
  return sums


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _fused(hidden, kernel, bias, targets, weights, label_smoothing, chunk):
  return _fused_forward(hidden, kernel, bias, targets, weights, label_smoothing, chunk)


def _fused_forward(hidden, kernel, bias, targets, weights, label_smoothing, chunk):
  """Loss sums and the gradients of `loss_sum`, one chunk of tokens at a time."""
  n, d_model = hidden.shape
  vocab = kernel.shape[0]
  kernel_c = kernel.astype(hidden.dtype)

  def one_chunk(carry, xs):
    d_kernel, d_bias, sums = carry
    h, t, w = xs
    logits = jnp.dot(h, kernel_c.T, preferred_element_type=jnp.float32) + bias
    shifted = logits - jnp.max(logits, axis=-1, keepdims=True)
    exp = jnp.exp(shifted)
    z = jnp.sum(exp, axis=-1)
    log_z = jnp.log(z)
    target_logit = jnp.take_along_axis(shifted, t[:, None], axis=-1)[:, 0]
    nll = log_z - target_logit
    loss = (1.0 - label_smoothing) * nll + label_smoothing * (log_z - jnp.mean(shifted, -1))
    correct = (target_logit >= 0.0).astype(jnp.float32)
    chunk_sums = jnp.stack([jnp.sum(loss * w), jnp.sum(nll * w), jnp.sum(correct * w),
                            jnp.sum(w)])
    # d loss / d logits = softmax - ((1 - eps) one_hot + eps / V), times the token's weight.
    with jax.named_scope("backward"):  # The gradient, computed in this same pass.
      is_target = jax.lax.broadcasted_iota(jnp.int32, logits.shape, 1) == t[:, None]
      d_logits = (exp / z[:, None] - label_smoothing / vocab
                  - jnp.where(is_target, 1.0 - label_smoothing, 0.0)) * w[:, None]
      d_h = jnp.dot(d_logits.astype(h.dtype), kernel_c, preferred_element_type=jnp.float32)
      d_kernel = d_kernel + jnp.dot(d_logits.T.astype(h.dtype), h,
                                    preferred_element_type=jnp.float32)
    return (d_kernel, d_bias + jnp.sum(d_logits, axis=0), sums + chunk_sums), d_h

  init = (jnp.zeros((vocab, d_model), jnp.float32), jnp.zeros((vocab,), jnp.float32),
          jnp.zeros((4,), jnp.float32))
  xs = (hidden.reshape(-1, chunk, d_model), targets.reshape(-1, chunk),
        weights.reshape(-1, chunk))
  with jax.named_scope("projected_cross_entropy"):  # Names the profile's fused-loss ops.
    (d_kernel, d_bias, totals), d_hidden = jax.lax.scan(one_chunk, init, xs)
  sums = dict(zip(("loss_sum", "nll_sum", "correct_sum", "num_tokens"), totals))
  grads = (d_hidden.reshape(n, d_model).astype(hidden.dtype), d_kernel.astype(kernel.dtype),
           d_bias.astype(bias.dtype))
  return sums, grads


def _fused_fwd(hidden, kernel, bias, targets, weights, label_smoothing, chunk):
  sums, grads = _fused_forward(hidden, kernel, bias, targets, weights, label_smoothing, chunk)
  return (sums, grads), grads


def _fused_bwd(label_smoothing, chunk, grads, cotangents):
  del label_smoothing, chunk
  g = cotangents[0]["loss_sum"]  # The other sums are metrics: no gradient flows through them.
  d_hidden, d_kernel, d_bias = grads
  return ((g * d_hidden).astype(d_hidden.dtype), (g * d_kernel).astype(d_kernel.dtype),
          (g * d_bias).astype(d_bias.dtype), None, None)


_fused.defvjp(_fused_fwd, _fused_bwd)
