"""Multi-head attention and its masks, as in section 3.2 of "Attention Is All You Need".

Shape legend: B batch, S source (key) length, T target (query) length, L cached decode length,
N hypotheses per row, D d_model, H num_heads, K head_dim (d_k = d_v).

Masks are boolean, `True` where attention is allowed, shaped `[B, 1, Tq, Tk]` (broadcast over
heads), or an `AttentionMask`: the same padding/packing/causal mask as per-token ids, which the
model builds and the fused TPU kernel reads. `MultiHeadAttention` takes the `TransformerConfig`
as its one attribute.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import flax.linen as nn
import flax.struct

from jax.sharding import PartitionSpec as P

from transformer_jax import attention_kernel, sharding
from transformer_jax.config import TransformerConfig
from transformer_jax.dropout import dropout

Array = jax.Array

# Xavier/Glorot uniform as in the reference implementation; DenseGeneral initializes the
# flattened [in, out] kernel, so fans span all heads.
dense_init = nn.initializers.xavier_uniform()


# ----------------------------------------------------------------------------- masks


def padding_mask(query_tokens: Array, key_tokens: Array, pad_id: int = 0) -> Array:
  """`[B, 1, Tq, Tk]`: keys that are not padding (queries may be anything)."""
  del query_tokens  # A padded query attends normally; its output is never used.
  return (key_tokens != pad_id)[:, None, None, :]


def segment_mask(query_segments: Array, key_segments: Array) -> Array:
  """`[B, 1, Tq, Tk]`: query and key belong to the same packed example."""
  return (query_segments[:, :, None] == key_segments[:, None, :])[:, None]


def causal_mask(length: int) -> Array:
  """`[1, 1, T, T]`: position i may attend to positions j <= i."""
  return jnp.tril(jnp.ones((length, length), dtype=bool))[None, None]


@flax.struct.dataclass
class AttentionMask:
  """A padding/packing/causal mask as ids: key s is visible to query t iff their ids are equal
  (and s <= t when `causal`).

  `dense()` is the boolean `[B, 1, Tq, Tk]` mask; the fused TPU kernel (attention_kernel.py)
  reads the ids instead and never builds it.
  """
  query_ids: Array  # [B, Tq] int32: the query's packed example (0 without packing).
  key_ids: Array    # [B, Tk] int32: the key's packed example; PADDING_ID for padding keys.
  causal: bool = flax.struct.field(pytree_node=False, default=False)

  def dense(self) -> Array:
    """The boolean `[B, 1, Tq, Tk]` mask."""
    mask = (self.query_ids[:, :, None] == self.key_ids[:, None, :])[:, None]
    if self.causal:
      mask = mask & causal_mask(self.query_ids.shape[1])
    return mask


def as_dense(mask: Array | AttentionMask | None) -> Array | None:
  """A mask as the boolean `[B, 1, Tq, Tk]` array (an `AttentionMask` made dense)."""
  return mask.dense() if isinstance(mask, AttentionMask) else mask


PADDING_ID = jnp.iinfo(jnp.int32).min  # A padding key's id: no query's (segments are >= 0).


def attention_mask(query_tokens: Array, key_tokens: Array, *, pad_id: int = 0,
                   query_segments: Array | None = None, key_segments: Array | None = None,
                   causal: bool = False) -> AttentionMask:
  """The padding, segment (packing) and causal masks as one `AttentionMask`."""
  if (query_segments is None) != (key_segments is None):
    query_segments = key_segments = None  # As before: segments apply only when both are given.
  if query_segments is None:
    query_segments = jnp.zeros(query_tokens.shape, jnp.int32)
    key_segments = jnp.zeros(key_tokens.shape, jnp.int32)
  key_ids = jnp.where(key_tokens != pad_id, key_segments.astype(jnp.int32), PADDING_ID)
  return AttentionMask(query_segments.astype(jnp.int32), key_ids, causal)


def make_attention_mask(query_tokens: Array, key_tokens: Array, *, pad_id: int = 0,
                        query_segments: Array | None = None, key_segments: Array | None = None,
                        causal: bool = False) -> Array:
  """Combines the padding, segment (packing) and causal masks into one `[B, 1, Tq, Tk]`."""
  return attention_mask(query_tokens, key_tokens, pad_id=pad_id, query_segments=query_segments,
                        key_segments=key_segments, causal=causal).dense()


def slot_mask(beam_history_BxNxL: Array, key_valid_BxLxN: Array) -> Array:
  """The self-attention mask of N hypotheses per row over a slot cache, `[B, 1, N, L * N]`.

  A decoding cache holds, for each of L positions, the keys of the row's N hypothesis slots,
  position-major (key p * N + m). Query n may attend to key p * N + m iff its history put its own
  token at position p in slot m and that key is valid (written, and not padding).

  Args:
    beam_history_BxNxL: int, `beam_history[b, n, p]` is the slot that holds hypothesis n's token
      at position p.
    key_valid_BxLxN: bool, whether slot m at position p holds a real token; False at positions
      not yet written, which makes the mask causal.

  Returns:
    The boolean mask `[B, 1, N, L * N]`.
  """
  batch, beams, length = beam_history_BxNxL.shape
  in_slot_BxNxLxN = beam_history_BxNxL[..., None] == jnp.arange(beams)
  return (in_slot_BxNxLxN & key_valid_BxLxN[:, None]).reshape(batch, 1, beams, length * beams)


# ----------------------------------------------------------------------------- attention


def _attention_probs(q_BxHxTxK: Array, k_BxHxSxK: Array, mask: Array | None) -> Array:
  """softmax(QK^T / sqrt(d_k)) in float32: the attention weights `[B, H, T, S]`.

  Queries and keys are heads first, `[B, H, T, K]` and `[B, H, S, K]`: batched matmuls over
  leading (B, H) axes, which XLA CPU runs faster than the `[B, T, H, K]` layout (no copies).
  """
  scale = 1.0 / math.sqrt(q_BxHxTxK.shape[-1])
  logits_BxHxTxS = jnp.einsum("bhtk,bhsk->bhts", q_BxHxTxK, k_BxHxSxK,
                              preferred_element_type=jnp.float32) * scale
  if mask is not None:
    # A finite minimum, not -inf: fully masked rows (padding queries) stay NaN-free.
    logits_BxHxTxS = jnp.where(mask, logits_BxHxTxS, jnp.finfo(jnp.float32).min)
  return jax.nn.softmax(logits_BxHxTxS, axis=-1)


def _attend(probs_BxHxTxS: Array, v_BxHxSxK: Array, dropout_rate: float = 0.0,
            dropout_rng: Array | None = None) -> Array:
  """The weighted sum of values `[B, H, T, K]`, with optional dropout on the weights."""
  probs_BxHxTxS = dropout(probs_BxHxTxS, dropout_rate, dropout_rng)
  return jnp.einsum("bhts,bhsk->bhtk", probs_BxHxTxS.astype(v_BxHxSxK.dtype), v_BxHxSxK)


def _heads_first(x_BxSxHxK: Array) -> Array:
  return jnp.swapaxes(x_BxSxHxK, 1, 2)


def _plain_attention_and_probs(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask, dropout_rate=0.0,
                               dropout_rng=None) -> tuple[Array, Array]:
  """`plain_attention`'s output `[B, T, H, K]` and its attention weights `[B, H, T, S]`."""
  probs_BxHxTxS = _attention_probs(_heads_first(q_BxTxHxK), _heads_first(k_BxSxHxK), mask)
  out_BxHxTxK = _attend(probs_BxHxTxS, _heads_first(v_BxSxHxK), dropout_rate, dropout_rng)
  return _heads_first(out_BxHxTxK), probs_BxHxTxS


def plain_attention(q_BxTxHxK: Array, k_BxSxHxK: Array, v_BxSxHxK: Array, mask: Array | None,
                    *, dropout_rate: float = 0.0, dropout_rng: Array | None = None) -> Array:
  """softmax(QK^T / sqrt(d_k)) V with float32 logits and softmax, and optional attention dropout."""
  return _plain_attention_and_probs(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask, dropout_rate,
                                    dropout_rng)[0]


def fused_mask(mask: Array | None, q_BxTxHxK: Array, k_BxSxHxK: Array) -> Array | None:
  """The mask at its full `[B, 1, T, S]`, as `jax.nn.dot_product_attention` needs it.

  Padding masks are `[B, 1, 1, S]` and the causal mask `[1, 1, T, T]`; XLA broadcasts them, but
  cuDNN's fused attention takes the mask as a bias and refuses any whose query or key length is 1
  ("Bias must have same seq length as QKV"; seen on an H200, jax 0.11.2).
  """
  if mask is None:
    return None
  batch, length_q, length_k = q_BxTxHxK.shape[0], q_BxTxHxK.shape[1], k_BxSxHxK.shape[1]
  return jnp.broadcast_to(mask, (batch, mask.shape[1], length_q, length_k))


def _fused_per_device(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask: AttentionMask) -> Array:
  """`attention_kernel.fused_attention`, run per device on its batch rows.

  XLA cannot partition a Pallas kernel: given batch-sharded inputs under `jit` it would gather
  the whole batch onto every device. Inside a mesh context (the jit training steps trace under
  their mesh) the kernel runs under `shard_map` over the mesh's batch axes that are not manual
  already; inside a `shard_map` step, or with no mesh, it is called directly.
  """
  kernel = functools.partial(attention_kernel.fused_attention, causal=mask.causal)
  mesh = jax.sharding.get_abstract_mesh()
  axes = () if mesh.empty else tuple(a for a in sharding.BATCH_AXES
                                     if a in mesh.axis_names and a not in mesh.manual_axes)
  args = (q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask.query_ids, mask.key_ids)
  if not axes:
    return kernel(*args)
  rows = P(axes)
  return jax.shard_map(kernel, mesh=mesh, in_specs=(rows,) * 5, out_specs=rows,
                       axis_names=set(axes), check_vma=False)(*args)


class MultiHeadAttention(nn.Module):
  """Multi-head attention: self, causal or cross, with an optional key/value cache.

  `__call__(inputs_q [B, T, D], inputs_kv [B, S, D], mask)` returns `[B, T, D]`; the mask is a
  boolean `[B, 1, T, S]` or an `AttentionMask` (ids: the only form the TPU kernel takes; the
  other paths make it dense).
  With `decode=True` the keys and values live in the "cache" collection, heads first, in the
  layout both attention matmuls read directly, so a decoding step copies nothing. Cross-attention
  (`cross=True`) projects the encoder output `[B, S, D]` once, on the initializing call, into
  `[B, H, S, K]` and reuses it every step. Self-attention takes one new token for each of N
  hypotheses of a row (`inputs_q [B, N, D]`; N = 1 for plain incremental decoding) and writes
  their keys and values into N slots of a `[B, H, L * N, K]` cache at `decode_position`
  (position-major: key p * N + slot). The caller keeps that position (one counter for all the
  layers of a decoder) and the mask `[B, 1, N, L * N]` (see `slot_mask`), which alone decides
  which of the L * N keys each query sees: the slots that held its earlier tokens (beam search
  follows hypotheses through this mask instead of copying the cache when beams are reordered),
  none beyond `decode_position`. The initializing call sizes the cache from that mask's shape;
  `init_cache` runs it with the trained parameters.

  The plain path (`attention_impl="plain"`, or attention dropout in training) sows its float32
  weights `[B, H, T, S]` as "intermediates"/"attention_weights" when that collection is mutable
  (for attention plots); the fused path does no extra work.
  """

  config: TransformerConfig
  cross: bool = False  # Encoder-decoder attention: its decoding cache is filled once.

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array, mask: Array | None = None, *,
               deterministic: bool = True, decode: bool = False,
               decode_position: Array | None = None) -> Array:
    cfg = self.config
    H, K = cfg.num_heads, cfg.head_dim
    dense = functools.partial(nn.DenseGeneral, features=(H, K), kernel_init=dense_init,
                              dtype=cfg.compute_dtype, param_dtype=cfg.param_dtype)
    q_BxTxHxK = dense(name="query")(inputs_q)
    key, value = dense(name="key"), dense(name="value")
    out_proj = nn.DenseGeneral(cfg.d_model, axis=(-2, -1), kernel_init=dense_init,
                               dtype=cfg.compute_dtype, param_dtype=cfg.param_dtype, name="out")
    if decode:
      return out_proj(self._cached_attention(q_BxTxHxK, inputs_kv, as_dense(mask),
                                             decode_position, key, value))
    k_BxSxHxK, v_BxSxHxK = key(inputs_kv), value(inputs_kv)

    rate = cfg.attention_dropout_rate
    implementation = cfg.resolved().attention_impl  # "auto": the default backend's choice.
    if implementation == "plain" or (rate > 0.0 and not deterministic):
      rng = self.make_rng("dropout") if rate > 0.0 and not deterministic else None
      out_BxTxHxK, probs_BxHxTxS = _plain_attention_and_probs(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK,
                                                              as_dense(mask), rate, rng)
      self.sow("intermediates", "attention_weights", probs_BxHxTxS)  # No-op unless mutable.
    elif implementation == "pallas" and isinstance(mask, AttentionMask) and \
        attention_kernel.supports(q_BxTxHxK.shape[1], k_BxSxHxK.shape[1], K):
      out_BxTxHxK = _fused_per_device(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask)
    else:  # "pallas" falls back to XLA for a dense mask or shapes the kernel does not take.
      out_BxTxHxK = jax.nn.dot_product_attention(
          q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask=fused_mask(as_dense(mask), q_BxTxHxK, k_BxSxHxK),
          implementation="xla" if implementation == "pallas" else implementation)
    return out_proj(out_BxTxHxK)

  def _cached_attention(self, q_BxNxHxK, inputs_kv, mask, position, key, value):
    """Attention of the new queries against the cached keys and values (heads first)."""
    if self.cross:
      k_BxHxSxK = self.variable("cache", "cross_key", lambda: _heads_first(key(inputs_kv))).value
      v_BxHxSxK = self.variable("cache", "cross_value",
                                lambda: _heads_first(value(inputs_kv))).value
    else:
      k_BxHxSxK, v_BxHxSxK, mask = self._update_cache(
          _heads_first(key(inputs_kv)), _heads_first(value(inputs_kv)), mask, position)
    # Everything heads first: plain batched matmuls over (B, H), no relayout of the caches.
    probs_BxHxNxS = _attention_probs(_heads_first(q_BxNxHxK), k_BxHxSxK, mask)
    return _heads_first(_attend(probs_BxHxNxS, v_BxHxSxK))

  def _update_cache(self, k_BxHxNxK, v_BxHxNxK, mask, position):
    """Writes the N new keys/values at `position`; returns the row's L * N of them and the mask.

    The cache is `[B, H, L * N, K]`, position-major (key s = p * N + slot), so that one step's
    N writes are one contiguous in-place update and attention reads the cache as it is.
    """
    batch, heads, beams, head_dim = k_BxHxNxK.shape
    is_initialized = self.has_variable("cache", "cached_key")
    if mask is None or mask.ndim != 4 or mask.shape[-1] % beams:
      raise ValueError("decode=True self-attention takes its mask [B, 1, N, L * N] over the "
                       f"cache (see slot_mask); got {None if mask is None else mask.shape}. "
                       "Build the cache with init_cache.")
    if is_initialized and position is None:
      raise ValueError("decode=True self-attention takes decode_position, the int32 position "
                       "its N new keys and values are written at; the caller keeps it.")
    keys = self.get_variable("cache", "cached_key").shape[2] if is_initialized else mask.shape[-1]
    shape = (batch, heads, keys, head_dim)
    cached_key = self.variable("cache", "cached_key", jnp.zeros, shape, k_BxHxNxK.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, shape, v_BxHxNxK.dtype)
    if not is_initialized:  # Only sizes the cache; its output is discarded.
      return k_BxHxNxK, v_BxHxNxK, None
    if cached_key.value.shape[:2] != shape[:2] or keys % beams or mask.shape[-1] != keys:
      raise ValueError(f"decode=True takes one new token per hypothesis, [B, N] = "
                       f"{(batch, beams)} as when the cache was built, and a mask over its "
                       f"L * N keys (cache [B, H, L * N, K] = {cached_key.value.shape}, mask "
                       f"{mask.shape}).")
    at = (0, 0, position * beams, 0)
    cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, k_BxHxNxK, at)
    cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, v_BxHxNxK, at)
    return cached_key.value, cached_value.value, mask
