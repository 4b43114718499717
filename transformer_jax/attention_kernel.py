"""Fused attention for TPUs: one Pallas kernel per pass, the whole key axis held in VMEM.

XLA writes attention's float32 scores `[B, H, T, S]`, its softmax and their gradients to HBM:
for translation-length rows (S <= 256) that traffic, not the matmuls, bounds a TPU training step
(docs/tpu.md). Here a grid cell takes a few batch rows with all their heads, computes scores,
masked softmax and output in VMEM, and writes only the output; the backward pass recomputes
the softmax from q and k (no saved probabilities or log-sum-exp) and writes dq, dk, dv. The key
axis is not tiled (no online softmax): that is what bounds the lengths to `MAX_LENGTH`.

Masks come as ids, not a dense mask: key s is visible to query t iff `query_ids[b, t] ==
key_ids[b, s]` (and s <= t when causal); `attention.AttentionMask` builds them from padding and
packing segments. A query that sees no key gets the mean of all values, as the plain path's
finite-minimum softmax gives it.

Every `pallas_call` carries a `CostEstimate`, counted from the kernel body itself
(`kernel_cost.count`): the FLOPs of its dots traced with the head dimension padded to the
128-lane width the MXU works in, its exponentials and reciprocals, and the HBM bytes of its
blocks as the TPU lays them out. The TPU compiler prices the kernel by it alone (without one
`cost_analysis()` cannot see the kernel at all). The grid over batch rows is declared
"parallel", so a megacore chip (v4, v5p) splits it over its two TensorCores. On backends other
than TPU the same kernels run in the Pallas interpreter (slow; for tests), chosen per platform
at lowering.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from transformer_jax import kernel_cost

Array = jax.Array

MAX_LENGTH = 256   # Beyond, big (16 heads) at 512 overflows a v4 core's 16 MiB of VMEM.
LANES = 128        # TPU vector lane width: the head dimension is padded to it in the MXU.
VMEM_BYTES = 12 * 2**20  # What one grid cell may use, under the compiler's 16 MiB scoped default.
SCORE_COPIES = 8   # Float32 [T, S] temporaries alive at once in the backward pass (estimate).


def supports(length_q: int, length_k: int, head_dim: int) -> bool:
  """Whether the kernel takes these shapes (sublane-aligned lengths up to MAX_LENGTH)."""
  return (0 < length_q <= MAX_LENGTH and 0 < length_k <= MAX_LENGTH and length_q % 8 == 0
          and length_k % 8 == 0 and head_dim % 8 == 0)


def _padded_bytes(shape, dtype) -> int:
  """VMEM bytes of one block row: the minor dims padded to (8 or 16 sublanes, 128 lanes) tiles."""
  return kernel_cost.tiled_bytes(shape, dtype, LANES, single_row_tiles=False)


def _rows_per_cell(arrays, length_q: int, length_k: int) -> int:
  """The largest divisor of the batch whose blocks (double-buffered) and scores fit VMEM_BYTES."""
  batch = arrays[0].shape[0]
  io = sum(_padded_bytes(a.shape[1:], a.dtype) for a in arrays)
  per_row = 2 * io + SCORE_COPIES * _padded_bytes((length_q, length_k), jnp.float32)
  limit = max(1, VMEM_BYTES // per_row)
  return max(d for d in range(1, min(batch, limit) + 1) if batch % d == 0)


def _head(x, h: int, head_dim: int):
  """Head h of `[rows, H * K, L]`: a static, sublane-aligned slice."""
  return x[:, h * head_dim:(h + 1) * head_dim, :]


def _probs(q_t, k_t, mask, scale: float):
  """One head's softmax weights `[rows, T, S]` float32 from `[rows, K, T]`, `[rows, K, S]`."""
  scores = jnp.einsum("bkt,bks->bts", q_t, k_t, preferred_element_type=jnp.float32) * scale
  scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  exp = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
  # One reciprocal per row and a multiply per score, not a divide per score.
  return exp * (1.0 / jnp.sum(exp, axis=-1, keepdims=True))


def _mask(qid_ref, kid_ref, causal: bool):
  """`[rows, T, S]`: ids equal (`[rows, T, 1]` == `[rows, 1, S]`), and s <= t when causal."""
  mask = qid_ref[...] == kid_ref[...]
  if causal:
    shape = mask.shape[1:]
    t = jax.lax.broadcasted_iota(jnp.int32, shape, 0)
    s = jax.lax.broadcasted_iota(jnp.int32, shape, 1)
    mask = mask & (s <= t)[None]
  return mask


def _forward_kernel(qid_ref, kid_ref, q_ref, k_ref, v_ref, o_ref, *, causal, heads, scale):
  q, k, v = q_ref[...], k_ref[...], v_ref[...]
  head_dim = q.shape[1] // heads
  mask = _mask(qid_ref, kid_ref, causal)
  for h in range(heads):
    probs = _probs(_head(q, h, head_dim), _head(k, h, head_dim), mask, scale)
    out_t = jnp.einsum("bks,bts->bkt", _head(v, h, head_dim), probs.astype(v.dtype),
                       preferred_element_type=jnp.float32)
    o_ref[:, h * head_dim:(h + 1) * head_dim, :] = out_t.astype(o_ref.dtype)


def _backward_kernel(qid_ref, kid_ref, q_ref, k_ref, v_ref, do_ref, dq_ref, dk_ref, dv_ref, *,
                     causal, heads, scale):
  q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
  head_dim = q.shape[1] // heads
  mask = _mask(qid_ref, kid_ref, causal)
  for h in range(heads):
    q_t, k_t, v_t, do_t = (_head(x, h, head_dim) for x in (q, k, v, do))
    probs = _probs(q_t, k_t, mask, scale)
    dv_t = jnp.einsum("bkt,bts->bks", do_t, probs.astype(do.dtype),
                      preferred_element_type=jnp.float32)
    dprobs = jnp.einsum("bkt,bks->bts", do_t, v_t, preferred_element_type=jnp.float32)
    # Softmax backward; sum(p * dp) = sum(do * o), so the output need not be kept.
    dscores = probs * (dprobs - jnp.sum(probs * dprobs, axis=-1, keepdims=True))
    dscores = (jnp.where(mask, dscores, 0.0) * scale).astype(q.dtype)
    dq_t = jnp.einsum("bks,bts->bkt", k_t, dscores, preferred_element_type=jnp.float32)
    dk_t = jnp.einsum("bkt,bts->bks", q_t, dscores, preferred_element_type=jnp.float32)
    rows = slice(h * head_dim, (h + 1) * head_dim)
    dq_ref[:, rows, :] = dq_t.astype(dq_ref.dtype)
    dk_ref[:, rows, :] = dk_t.astype(dk_ref.dtype)
    dv_ref[:, rows, :] = dv_t.astype(dv_ref.dtype)


def _lane_padded(x, heads: int):
  """`[B, H * K, L]` as `[B, H * K', L]`, K' the head dim padded to the lanes (as in the MXU)."""
  if x.shape[1] % heads or x.ndim != 3:
    return x
  padded = -(-(x.shape[1] // heads) // LANES) * LANES
  return jax.ShapeDtypeStruct((x.shape[0], heads * padded, x.shape[2]), x.dtype)


def work(kernel, inputs, outputs, *, causal: bool, heads: int) -> kernel_cost.KernelWork:
  """One call's work: FLOPs traced at the lane-padded head dim, the rest at the true shapes."""
  body = functools.partial(kernel, causal=causal, heads=heads, scale=1.0)
  ids, arrays = list(inputs[:2]), list(inputs[2:])
  padded = kernel_cost.count(body, ids + [_lane_padded(x, heads) for x in arrays],
                             [_lane_padded(x, heads) for x in outputs])
  true = kernel_cost.count(body, inputs, outputs)
  return dataclasses.replace(true, flops=padded.flops)


def _cost(kernel, inputs, outputs, *, causal: bool, heads: int) -> pl.CostEstimate:
  shapes = lambda xs: tuple((tuple(x.shape), jnp.dtype(x.dtype)) for x in xs)
  return _cost_of_shapes(kernel, shapes(inputs), shapes(outputs), causal, heads)


@functools.lru_cache(maxsize=64)
def _cost_of_shapes(kernel, inputs, outputs, causal: bool, heads: int) -> pl.CostEstimate:
  """`_cost` by shapes: a model traces each kernel at a few shapes, many times (both platform
  branches, every layer), and counting traces the body twice."""
  structs = lambda xs: [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in xs]
  counted = work(kernel, structs(inputs), structs(outputs), causal=causal, heads=heads)
  nbytes = sum(kernel_cost.tiled_bytes(shape, dtype, LANES) for shape, dtype in inputs + outputs)
  return pl.CostEstimate(flops=counted.flops, transcendentals=counted.transcendentals,
                         bytes_accessed=nbytes)


def _call(kernel, inputs, outputs, *, causal: bool, heads: int, interpret: bool):
  """One pallas_call over cells of batch rows (ids `[B, T, 1]`, `[B, 1, S]`, the rest
  `[B, H * K, L]`)."""
  q, k = inputs[2], inputs[3]
  batch, width, length_q = q.shape
  rows = _rows_per_cell(list(inputs) + list(outputs), length_q, k.shape[2])
  block = lambda x: pl.BlockSpec((rows,) + x.shape[1:], lambda i: (i,) + (0,) * (x.ndim - 1))
  scale = 1.0 / math.sqrt(width // heads)
  return pl.pallas_call(
      functools.partial(kernel, causal=causal, heads=heads, scale=scale),
      out_shape=outputs, grid=(batch // rows,), in_specs=[block(x) for x in inputs],
      out_specs=[block(x) for x in outputs], interpret=interpret,
      cost_estimate=_cost(kernel, inputs, outputs, causal=causal, heads=heads),
      # Cells are independent: a megacore chip runs them on both TensorCores.
      compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel",)),
      name=kernel.__name__.strip("_"))(*inputs)


def _per_platform(kernel, inputs, outputs, causal, heads):
  """The Mosaic kernel when lowered for TPU, the Pallas interpreter elsewhere."""
  run = lambda interpret: lambda *x: _call(kernel, x, outputs, causal=causal, heads=heads,
                                           interpret=interpret)
  return jax.lax.platform_dependent(*inputs, tpu=run(False), default=run(True))


def _id_blocks(query_ids, key_ids):
  """Ids as `[B, T, 1]` and `[B, 1, S]`: blocks whose compare broadcasts to `[rows, T, S]`."""
  return query_ids[:, :, None], key_ids[:, None, :]


def _forward(q, k, v, query_ids, key_ids, causal, heads):
  inputs = (*_id_blocks(query_ids, key_ids), q, k, v)
  out = jax.ShapeDtypeStruct(q.shape, q.dtype)
  return _per_platform(_forward_kernel, inputs, [out], causal, heads)[0]


def _backward(q, k, v, query_ids, key_ids, d_out, causal, heads):
  inputs = (*_id_blocks(query_ids, key_ids), q, k, v, d_out)
  outputs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (q, k, v)]
  return _per_platform(_backward_kernel, inputs, outputs, causal, heads)


def fused_attention_work(batch: int, length_q: int, length_k: int, heads: int, head_dim: int, *,
                         causal: bool, dtype=jnp.bfloat16):
  """(forward, backward) `KernelWork` of one `fused_attention` call: what each pass declares."""
  ids = [jax.ShapeDtypeStruct((batch, length_q, 1), jnp.int32),
         jax.ShapeDtypeStruct((batch, 1, length_k), jnp.int32)]
  q, k = (jax.ShapeDtypeStruct((batch, heads * head_dim, n), dtype) for n in (length_q, length_k))
  forward = work(_forward_kernel, ids + [q, k, k], [q], causal=causal, heads=heads)
  backward = work(_backward_kernel, ids + [q, k, k, q], [q, k, k], causal=causal, heads=heads)
  return forward, backward


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _attention(q, k, v, query_ids, key_ids, causal, heads):
  return _forward(q, k, v, query_ids, key_ids, causal, heads)


def _attention_fwd(q, k, v, query_ids, key_ids, causal, heads):
  return _forward(q, k, v, query_ids, key_ids, causal, heads), (q, k, v, query_ids, key_ids)


def _attention_bwd(causal, heads, residuals, d_out):
  q, k, v, query_ids, key_ids = residuals
  dq, dk, dv = _backward(q, k, v, query_ids, key_ids, d_out, causal, heads)
  return dq, dk, dv, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def fused_attention(q_BxTxHxK: Array, k_BxSxHxK: Array, v_BxSxHxK: Array, query_ids_BxT: Array,
                    key_ids_BxS: Array, *, causal: bool = False) -> Array:
  """softmax(QK^T / sqrt(d_k)) V of `[B, T, H, K]` queries, in one kernel per pass.

  Args:
    q_BxTxHxK, k_BxSxHxK, v_BxSxHxK: queries, keys, values (bfloat16 or float32).
    query_ids_BxT, key_ids_BxS: int32; query t sees key s iff their ids are equal.
    causal: also require s <= t.

  Returns:
    `[B, T, H, K]` in the queries' dtype. Shapes must pass `supports`.
  """
  length_q, length_k, head_dim = q_BxTxHxK.shape[1], k_BxSxHxK.shape[1], q_BxTxHxK.shape[3]
  if not supports(length_q, length_k, head_dim):
    raise ValueError(f"fused_attention takes lengths that are multiples of 8 up to "
                     f"{MAX_LENGTH} and a head dim that is a multiple of 8; got queries "
                     f"{length_q}, keys {length_k}, head dim {head_dim}. Use "
                     "attention_impl='xla' for these shapes.")
  heads = q_BxTxHxK.shape[2]
  # [B, L, H, K] -> [B, H * K, L]: XLA lays these activations out with the tokens minor (in
  # the lanes), so this transpose is a bitcast; [B, L, H * K] would cost a copy each way.
  lanes_last = lambda x: jnp.swapaxes(x.reshape(x.shape[:2] + (heads * head_dim,)), 1, 2)
  out = _attention(lanes_last(q_BxTxHxK), lanes_last(k_BxSxHxK), lanes_last(v_BxSxHxK),
                   query_ids_BxT.astype(jnp.int32), key_ids_BxS.astype(jnp.int32), causal, heads)
  return jnp.swapaxes(out, 1, 2).reshape(q_BxTxHxK.shape)
