"""The Transformer of "Attention Is All You Need" as Flax linen modules.

Shape legend: B batch, S source length, T target length, L cached decode length,
D d_model, H num_heads, K head_dim (d_k = d_v), F d_ff, V vocab_size.

Every module takes the `TransformerConfig` as its one attribute. Masks are boolean,
`True` where attention is allowed, shaped `[B, 1, Tq, Tk]` (broadcast over heads).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from transformer_jax.config import TransformerConfig

Array = jax.Array

# Xavier/Glorot uniform as in the reference implementation; DenseGeneral initializes the
# flattened [in, out] kernel, so fans span all heads.
_dense_init = nn.initializers.xavier_uniform()


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


def make_attention_mask(query_tokens: Array, key_tokens: Array, *, pad_id: int = 0,
                        query_segments: Array | None = None, key_segments: Array | None = None,
                        causal: bool = False) -> Array:
  """Combines the padding, segment (packing) and causal masks into one `[B, 1, Tq, Tk]`."""
  mask = padding_mask(query_tokens, key_tokens, pad_id)
  if query_segments is not None and key_segments is not None:
    mask = mask & segment_mask(query_segments, key_segments)
  if causal:
    mask = mask & causal_mask(query_tokens.shape[1])
  return mask


# ----------------------------------------------------------------------------- embeddings


def sinusoidal_encoding(positions: Array, d_model: int) -> Array:
  """The paper's PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(same); `[..., D]`."""
  two_i = np.arange(0, d_model, 2, dtype=np.float32)
  inv_freq = jnp.asarray(np.power(10000.0, -two_i / d_model))
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [..., D/2]
  # Interleave so that even dimensions hold sines and odd dimensions cosines.
  pe = jnp.stack([jnp.sin(angles), jnp.cos(angles)], axis=-1)
  return pe.reshape(*positions.shape, -1)[..., :d_model]


class PositionalEncoding(nn.Module):
  """Adds sinusoidal (or learned) position encodings to `[B, T, D]` embeddings."""

  config: TransformerConfig

  @nn.compact
  def __call__(self, x: Array, positions: Array) -> Array:
    cfg = self.config
    if cfg.positional == "learned":
      table = self.param("pos_embedding", nn.initializers.normal(0.02),
                         (cfg.max_len, cfg.d_model), jnp.dtype(cfg.param_dtype))
      pe = jnp.take(table, positions, axis=0)
    else:
      pe = sinusoidal_encoding(positions, cfg.d_model)
    return x + pe.astype(x.dtype)


class SharedEmbedding(nn.Module):
  """Token embedding scaled by sqrt(d_model); `attend` is the tied output projection."""

  config: TransformerConfig

  def setup(self):
    cfg = self.config
    # std d_model^-0.5, so that after the sqrt(d_model) scale embeddings have unit variance.
    self.embedding = self.param("embedding", nn.initializers.normal(cfg.d_model**-0.5),
                                (cfg.vocab_size, cfg.d_model), jnp.dtype(cfg.param_dtype))

  def __call__(self, tokens: Array) -> Array:
    cfg = self.config
    x = jnp.take(self.embedding, tokens, axis=0).astype(cfg.dtype)
    return x * jnp.asarray(math.sqrt(cfg.d_model), cfg.dtype)

  def attend(self, x_BxTxD: Array) -> Array:
    """Float32 logits `[B, T, V]` against the embedding matrix."""
    return jnp.einsum("btd,vd->btv", x_BxTxD, self.embedding.astype(x_BxTxD.dtype),
                      preferred_element_type=jnp.float32)


class Embedder(nn.Module):
  """Token embedding x sqrt(d_model) + positional encoding, then dropout."""

  config: TransformerConfig
  embed: nn.Module

  @nn.compact
  def __call__(self, tokens: Array, positions: Array, *, deterministic: bool) -> Array:
    x = self.embed(tokens)
    x = PositionalEncoding(self.config, name="positional")(x, positions)
    return nn.Dropout(self.config.dropout_rate)(x, deterministic=deterministic)


# ----------------------------------------------------------------------------- attention


def _resolve_attention_impl(cfg: TransformerConfig) -> str | None:
  """The `implementation` argument of `jax.nn.dot_product_attention`."""
  if cfg.attention_impl == "auto":
    half = jnp.dtype(cfg.dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    return "cudnn" if jax.default_backend() == "gpu" and half else None
  return cfg.attention_impl  # "xla" or "cudnn"


def _attention_probs(q_BxTxHxK: Array, k_BxSxHxK: Array, mask: Array | None, *,
                     heads_first: bool = False) -> Array:
  """softmax(QK^T / sqrt(d_k)) in float32: the attention weights `[B, H, T, S]`.

  With `heads_first`, queries and keys are laid out `[B, H, T, K]` and `[B, H, S, K]` (decoding).
  """
  scale = 1.0 / math.sqrt(q_BxTxHxK.shape[-1])
  spec = "bhtk,bhsk->bhts" if heads_first else "bthk,bshk->bhts"
  logits_BxHxTxS = jnp.einsum(spec, q_BxTxHxK, k_BxSxHxK,
                              preferred_element_type=jnp.float32) * scale
  if mask is not None:
    # A finite minimum, not -inf: fully masked rows (padding queries) stay NaN-free.
    logits_BxHxTxS = jnp.where(mask, logits_BxHxTxS, jnp.finfo(jnp.float32).min)
  return jax.nn.softmax(logits_BxHxTxS, axis=-1)


def _attend(probs_BxHxTxS: Array, v_BxSxHxK: Array, dropout_rate: float = 0.0,
            dropout_rng: Array | None = None, *, heads_first: bool = False) -> Array:
  """The weighted sum of values `[B, T, H, K]` (`[B, H, T, K]` with `heads_first`), with optional
  dropout on the weights."""
  if dropout_rate > 0.0 and dropout_rng is not None:
    keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs_BxHxTxS.shape)
    probs_BxHxTxS = jnp.where(keep, probs_BxHxTxS / (1.0 - dropout_rate), 0.0)
  spec = "bhts,bhsk->bhtk" if heads_first else "bhts,bshk->bthk"
  return jnp.einsum(spec, probs_BxHxTxS.astype(v_BxSxHxK.dtype), v_BxSxHxK)


def plain_attention(q_BxTxHxK: Array, k_BxSxHxK: Array, v_BxSxHxK: Array, mask: Array | None,
                    *, dropout_rate: float = 0.0, dropout_rng: Array | None = None) -> Array:
  """softmax(QK^T / sqrt(d_k)) V with float32 logits and softmax, and optional attention dropout."""
  probs_BxHxTxS = _attention_probs(q_BxTxHxK, k_BxSxHxK, mask)
  return _attend(probs_BxHxTxS, v_BxSxHxK, dropout_rate, dropout_rng)


class MultiHeadAttention(nn.Module):
  """Multi-head attention: self, causal or cross, with an optional key/value cache.

  `__call__(inputs_q [B, T, D], inputs_kv [B, S, D], mask [B, 1, T, S])` returns `[B, T, D]`.
  With `decode=True` the keys and values live in the "cache" collection, heads first, in the
  layout both attention matmuls read directly, so a decoding step copies nothing. Cross-attention
  (`cross=True`) projects the encoder output `[B, S, D]` once, on the initializing call, into
  `[B, H, S, K]` and reuses it every step. Self-attention takes one new token for each of N
  hypotheses of a row (`inputs_q [B, N, D]`; N = 1 for plain incremental decoding) and writes
  their keys and values into N slots of a `[B, H, L * N, K]` cache at the current position
  (position-major: key p * N + slot). Each query attends over all L * N keys of its row, through
  `mask [B, 1, N, L * N]`: which slot held each of its earlier tokens (beam search follows hypotheses through this mask instead
  of copying the cache when beams are reordered). The initializing call sizes the cache from that
  mask's shape; `init_cache` runs it with the trained parameters.

  The plain path (`attention_impl="plain"`, or attention dropout in training) sows its float32
  weights `[B, H, T, S]` as "intermediates"/"attention_weights" when that collection is mutable
  (for attention plots); the fused path does no extra work.
  """

  config: TransformerConfig
  cross: bool = False  # Encoder-decoder attention: its decoding cache is filled once.

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array, mask: Array | None = None, *,
               deterministic: bool = True, decode: bool = False) -> Array:
    cfg = self.config
    H, K = cfg.num_heads, cfg.head_dim
    dense = functools.partial(nn.DenseGeneral, features=(H, K), kernel_init=_dense_init,
                              dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    q_BxTxHxK = dense(name="query")(inputs_q)
    key, value = dense(name="key"), dense(name="value")
    out_proj = nn.DenseGeneral(cfg.d_model, axis=(-2, -1), kernel_init=_dense_init,
                               dtype=cfg.dtype, param_dtype=cfg.param_dtype, name="out")
    if decode:
      return out_proj(self._cached_attention(q_BxTxHxK, inputs_kv, mask, key, value))
    k_BxSxHxK, v_BxSxHxK = key(inputs_kv), value(inputs_kv)

    rate = cfg.attention_dropout_rate
    if cfg.attention_impl == "plain" or (rate > 0.0 and not deterministic):
      rng = self.make_rng("dropout") if rate > 0.0 and not deterministic else None
      probs_BxHxTxS = _attention_probs(q_BxTxHxK, k_BxSxHxK, mask)
      self.sow("intermediates", "attention_weights", probs_BxHxTxS)  # No-op unless mutable.
      out_BxTxHxK = _attend(probs_BxHxTxS, v_BxSxHxK, rate, rng)
    else:
      out_BxTxHxK = jax.nn.dot_product_attention(
          q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask=mask, implementation=_resolve_attention_impl(cfg))
    return out_proj(out_BxTxHxK)

  def _cached_attention(self, q_BxNxHxK, inputs_kv, mask, key, value):
    """Attention of the new queries against the cached keys and values (heads first)."""
    heads_first = lambda x_BxSxHxK: jnp.swapaxes(x_BxSxHxK, 1, 2)
    if self.cross:
      k_BxHxSxK = self.variable("cache", "cross_key", lambda: heads_first(key(inputs_kv))).value
      v_BxHxSxK = self.variable("cache", "cross_value",
                                lambda: heads_first(value(inputs_kv))).value
    else:
      k_BxHxSxK, v_BxHxSxK, mask = self._update_cache(
          heads_first(key(inputs_kv)), heads_first(value(inputs_kv)), mask)
    # Everything heads first: plain batched matmuls over (B, H), no relayout of the caches.
    q_BxHxNxK = jnp.swapaxes(q_BxNxHxK, 1, 2)
    probs_BxHxNxS = _attention_probs(q_BxHxNxK, k_BxHxSxK, mask, heads_first=True)
    return jnp.swapaxes(_attend(probs_BxHxNxS, v_BxHxSxK, heads_first=True), 1, 2)

  def _update_cache(self, k_BxHxNxK, v_BxHxNxK, mask):
    """Writes the N new keys/values at the current position; returns the row's L * N of them.

    The cache is `[B, H, L * N, K]`, position-major (key s = p * N + slot), so that one step's
    N writes are one contiguous in-place update and attention reads the cache as it is.
    """
    batch, heads, beams, head_dim = k_BxHxNxK.shape
    is_initialized = self.has_variable("cache", "cached_key")
    if not is_initialized:
      if mask is None or mask.ndim != 4 or mask.shape[-1] % beams:
        raise ValueError("The initializing decode=True call of self-attention sizes its cache "
                         "from a [B, 1, N, L * N] mask; got "
                         f"{None if mask is None else mask.shape}. Use init_cache.")
      keys = mask.shape[-1]
    else:
      keys = self.get_variable("cache", "cached_key").shape[2]
    shape = (batch, heads, keys, head_dim)
    cached_key = self.variable("cache", "cached_key", jnp.zeros, shape, k_BxHxNxK.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, shape, v_BxHxNxK.dtype)
    cache_index = self.variable("cache", "cache_index", lambda: jnp.array(0, jnp.int32))
    if not is_initialized:  # The initializing call only sizes the cache.
      return k_BxHxNxK, v_BxHxNxK, None
    if cached_key.value.shape[:2] != shape[:2] or keys % beams:
      raise ValueError(f"decode=True takes one new token per hypothesis, [B, N] = "
                       f"{(batch, beams)} as when the cache was built "
                       f"(its [B, H, L * N, K] is {cached_key.value.shape}).")
    index = cache_index.value
    at = (0, 0, index * beams, 0)
    k_BxHxSxK = jax.lax.dynamic_update_slice(cached_key.value, k_BxHxNxK, at)
    v_BxHxSxK = jax.lax.dynamic_update_slice(cached_value.value, v_BxHxNxK, at)
    cached_key.value, cached_value.value = k_BxHxSxK, v_BxHxSxK
    cache_index.value = index + 1
    length = keys // beams
    step_mask = jnp.repeat(jnp.arange(length) <= index, beams)[None, None, None, :]
    if mask is None:  # Each hypothesis its own slot: N independent continuations.
      slot_S = jnp.tile(jnp.arange(beams), length)
      mask = (jnp.arange(beams)[:, None] == slot_S[None, :])[None, None]
    return k_BxHxSxK, v_BxHxSxK, mask & step_mask


# ----------------------------------------------------------------------------- layers


class FeedForward(nn.Module):
  """FFN(x) = max(0, x W1 + b1) W2 + b2, applied at every position."""

  config: TransformerConfig

  @nn.compact
  def __call__(self, x: Array, *, deterministic: bool = True) -> Array:
    cfg = self.config
    dense = functools.partial(nn.Dense, kernel_init=_dense_init, dtype=cfg.dtype,
                              param_dtype=cfg.param_dtype)
    h_BxTxF = dense(cfg.d_ff, name="wi")(x)
    h_BxTxF = nn.relu(h_BxTxF) if cfg.activation == "relu" else nn.gelu(h_BxTxF)
    return dense(cfg.d_model, name="wo")(h_BxTxF)


class SubLayer(nn.Module):
  """LayerNorm(x + Dropout(f(x))) (post-norm), or x + Dropout(f(LayerNorm(x))) (pre-norm)."""

  config: TransformerConfig

  @nn.compact
  def __call__(self, x: Array, f, *, deterministic: bool) -> Array:
    cfg = self.config
    norm = nn.LayerNorm(epsilon=cfg.layer_norm_epsilon, dtype=cfg.dtype,
                        param_dtype=cfg.param_dtype, name="norm")
    dropout = nn.Dropout(cfg.dropout_rate)
    if cfg.pre_norm:
      return x + dropout(f(norm(x)), deterministic=deterministic)
    return norm(x + dropout(f(x), deterministic=deterministic))


class EncoderLayer(nn.Module):
  """Self-attention then feed-forward, each wrapped in residual + LayerNorm."""

  config: TransformerConfig

  @nn.compact
  def __call__(self, x: Array, mask: Array, deterministic: bool = True):
    cfg = self.config
    attention = MultiHeadAttention(cfg, name="self_attention")
    x = SubLayer(cfg, name="attention_block")(
        x, lambda h: attention(h, h, mask, deterministic=deterministic),
        deterministic=deterministic)
    ffn = FeedForward(cfg, name="feed_forward")
    x = SubLayer(cfg, name="ffn_block")(
        x, lambda h: ffn(h, deterministic=deterministic), deterministic=deterministic)
    return x, None  # (carry, output) so that the layer can be scanned.


class DecoderLayer(nn.Module):
  """Masked self-attention, encoder-decoder attention, feed-forward; residual + LayerNorm each."""

  config: TransformerConfig

  @nn.compact
  def __call__(self, y: Array, encoded: Array, self_mask: Array | None, cross_mask: Array,
               deterministic: bool = True, decode: bool = False):
    cfg = self.config
    self_attention = MultiHeadAttention(cfg, name="self_attention")
    y = SubLayer(cfg, name="self_attention_block")(
        y, lambda h: self_attention(h, h, self_mask, deterministic=deterministic, decode=decode),
        deterministic=deterministic)
    cross_attention = MultiHeadAttention(cfg, cross=True, name="cross_attention")
    y = SubLayer(cfg, name="cross_attention_block")(
        y, lambda h: cross_attention(h, encoded, cross_mask, deterministic=deterministic,
                                     decode=decode),
        deterministic=deterministic)
    ffn = FeedForward(cfg, name="feed_forward")
    y = SubLayer(cfg, name="ffn_block")(
        y, lambda h: ffn(h, deterministic=deterministic), deterministic=deterministic)
    return y, None


def _layer_stack(cfg: TransformerConfig, layer_cls, num_layers: int, num_args: int,
                 static_argnums: tuple[int, ...]):
  """The layer class as applied N times: remat'd and/or scanned per the config."""
  if cfg.remat:
    layer_cls = nn.remat(layer_cls, static_argnums=static_argnums, prevent_cse=not cfg.scan_layers)
  if cfg.scan_layers:
    return nn.scan(layer_cls, variable_axes={"params": 0, "cache": 0, "intermediates": 0},
                   split_rngs={"params": True, "dropout": True},
                   in_axes=(nn.broadcast,) * num_args, length=num_layers)
  return layer_cls


# ----------------------------------------------------------------------------- stacks


class Encoder(nn.Module):
  """Embeds the source and applies N encoder layers: `[B, S]` ids -> `[B, S, D]`."""

  config: TransformerConfig
  embed: nn.Module | None = None

  @nn.compact
  def __call__(self, src: Array, *, deterministic: bool = True, src_segments: Array | None = None,
               src_positions: Array | None = None) -> Array:
    cfg = self.config
    embed = self.embed if self.embed is not None else SharedEmbedding(cfg, name="src_embedding")
    if src_positions is None:
      src_positions = jnp.broadcast_to(jnp.arange(src.shape[1]), src.shape)
    x = Embedder(cfg, embed, name="embedder")(src, src_positions, deterministic=deterministic)
    mask = make_attention_mask(src, src, pad_id=cfg.pad_id, query_segments=src_segments,
                               key_segments=src_segments)
    layer = _layer_stack(cfg, EncoderLayer, cfg.num_encoder_layers, 2, static_argnums=(3,))
    if cfg.scan_layers:
      x, _ = layer(cfg, name="layers")(x, mask, deterministic)
    else:
      for i in range(cfg.num_encoder_layers):
        x, _ = layer(cfg, name=f"layers_{i}")(x, mask, deterministic)
    if cfg.pre_norm:
      x = nn.LayerNorm(epsilon=cfg.layer_norm_epsilon, dtype=cfg.dtype,
                       param_dtype=cfg.param_dtype, name="final_norm")(x)
    return x


class Decoder(nn.Module):
  """Embeds the shifted target and applies N decoder layers, then the output projection.

  Returns float32 logits `[B, T, V]`. With `decode=True`, `tgt_in` `[B, N]` is the next token
  of each of N hypotheses per row (N = 1: plain incremental decoding), all at the position read
  from (and advanced in) the cache unless given, and the logits are `[B, N, V]`. The encoder
  output is per row `[B, S, D]`, shared by the row's hypotheses. `beam_history` `[B, N, L]`
  says in which of the row's N cache slots each hypothesis's token at each position was written
  (default: its own slot n); beam search passes it instead of reordering the cache. The cache
  also remembers which fed tokens were padding, so that they are masked as keys exactly as in
  the full forward pass (a decoder may generate `pad_id`).
  """

  config: TransformerConfig
  embed: nn.Module | None = None

  @nn.compact
  def __call__(self, encoded: Array, src: Array, tgt_in: Array, *, deterministic: bool = True,
               src_segments: Array | None = None, tgt_segments: Array | None = None,
               tgt_positions: Array | None = None, decode: bool = False,
               beam_history: Array | None = None) -> Array:
    cfg = self.config
    embed = self.embed if self.embed is not None else SharedEmbedding(cfg, name="tgt_embedding")
    if decode:
      is_initialized = self.has_variable("cache", "position")
      if not is_initialized and beam_history is None:
        raise ValueError("The initializing decode=True call sizes the cache from beam_history "
                         "[B, N, L]; build the cache with init_cache.")
      position = self.variable("cache", "position", lambda: jnp.array(0, jnp.int32))
      batch, beams = tgt_in.shape
      # Sized on the initializing call only, from beam_history [B, N, L]: [B, L, N].
      key_valid_BxLxN = self.variable("cache", "key_valid", lambda: jnp.zeros(
          jnp.swapaxes(beam_history, 1, 2).shape, bool))
      length = key_valid_BxLxN.value.shape[1]
      if beam_history is None:  # Hypothesis n's tokens are all in slot n.
        beam_history = jnp.broadcast_to(jnp.arange(beams)[None, :, None], (batch, beams, length))
      if beam_history.shape != (batch, beams, length):
        raise ValueError(f"beam_history must be [B, N, L] = {(batch, beams, length)} for tgt_in "
                         f"{tgt_in.shape} and a cache of length {length}; got "
                         f"{beam_history.shape}.")
      index = position.value
      if tgt_positions is None:
        tgt_positions = jnp.broadcast_to(index, tgt_in.shape)
      if is_initialized:
        # Padding keys are masked as in the full pass; the causal part comes from the position.
        key_valid_BxLxN.value = jax.lax.dynamic_update_slice(
            key_valid_BxLxN.value, (tgt_in != cfg.pad_id)[:, None, :], (0, index, 0))
        position.value = index + 1
      # Query n sees slot m at position p where its history puts it: [B, 1, N, L * N] with the
      # keys position-major, as the self-attention caches hold them.
      in_slot_BxNxLxN = beam_history[..., None] == jnp.arange(beams)
      self_mask = (in_slot_BxNxLxN & key_valid_BxLxN.value[:, None]).reshape(
          batch, 1, beams, length * beams)
    else:
      if tgt_positions is None:
        tgt_positions = jnp.broadcast_to(jnp.arange(tgt_in.shape[1]), tgt_in.shape)
      self_mask = make_attention_mask(tgt_in, tgt_in, pad_id=cfg.pad_id, causal=True,
                                      query_segments=tgt_segments, key_segments=tgt_segments)
    cross_mask = make_attention_mask(tgt_in, src, pad_id=cfg.pad_id, query_segments=tgt_segments,
                                     key_segments=src_segments)
    y = Embedder(cfg, embed, name="embedder")(tgt_in, tgt_positions, deterministic=deterministic)
    layer = _layer_stack(cfg, DecoderLayer, cfg.num_decoder_layers, 5, static_argnums=(5, 6))
    if cfg.scan_layers:
      y, _ = layer(cfg, name="layers")(y, encoded, self_mask, cross_mask, deterministic, decode)
    else:
      for i in range(cfg.num_decoder_layers):
        y, _ = layer(cfg, name=f"layers_{i}")(y, encoded, self_mask, cross_mask, deterministic,
                                              decode)
    if cfg.pre_norm:
      y = nn.LayerNorm(epsilon=cfg.layer_norm_epsilon, dtype=cfg.dtype,
                       param_dtype=cfg.param_dtype, name="final_norm")(y)
    if cfg.share_embeddings:
      return embed.attend(y)
    return nn.Dense(cfg.vocab_size, use_bias=False, kernel_init=_dense_init, dtype=cfg.dtype,
                    param_dtype=cfg.param_dtype, name="output_projection")(y).astype(jnp.float32)


class Transformer(nn.Module):
  """The encoder-decoder Transformer; `encode` and `decode` can be applied separately."""

  config: TransformerConfig

  def setup(self):
    cfg = self.config
    if cfg.share_embeddings:
      shared = SharedEmbedding(cfg, name="shared_embedding")
      self.encoder = Encoder(cfg, embed=shared)
      self.decoder = Decoder(cfg, embed=shared)
    else:
      self.encoder = Encoder(cfg)
      self.decoder = Decoder(cfg)

  def encode(self, src: Array, *, deterministic: bool = True, src_segments: Array | None = None,
             src_positions: Array | None = None) -> Array:
    """Source ids `[B, S]` -> encoder output `[B, S, D]`."""
    _check_tokens("src", src, self.config)
    return self.encoder(src, deterministic=deterministic, src_segments=src_segments,
                        src_positions=src_positions)

  def decode(self, encoded: Array, src: Array, tgt_in: Array, *, deterministic: bool = True,
             src_segments: Array | None = None, tgt_segments: Array | None = None,
             tgt_positions: Array | None = None, decode: bool = False,
             beam_history: Array | None = None) -> Array:
    """Encoder output and shifted target ids `[B, T]` -> float32 logits `[B, T, V]`.

    With `decode=True` (and a cache from `init_cache`), `tgt_in` `[B, N]` is one new token for
    each of N hypotheses per row; see `Decoder` for `beam_history`.
    """
    _check_tokens("tgt_in", tgt_in, self.config)
    return self.decoder(encoded, src, tgt_in, deterministic=deterministic,
                        src_segments=src_segments, tgt_segments=tgt_segments,
                        tgt_positions=tgt_positions, decode=decode, beam_history=beam_history)

  def __call__(self, src: Array, tgt_in: Array, *, deterministic: bool = True,
               src_segments: Array | None = None, tgt_segments: Array | None = None,
               src_positions: Array | None = None, tgt_positions: Array | None = None) -> Array:
    """Source `[B, S]` and shifted target `[B, T]` -> float32 logits `[B, T, V]`."""
    encoded = self.encode(src, deterministic=deterministic, src_segments=src_segments,
                          src_positions=src_positions)
    return self.decode(encoded, src, tgt_in, deterministic=deterministic,
                       src_segments=src_segments, tgt_segments=tgt_segments,
                       tgt_positions=tgt_positions)


def init_cache(model: Transformer, params, encoded_BxSxD: Array, src_BxS: Array,
               length: int, beam_size: int = 1):
  """The decoding cache for up to `length` steps of `Transformer.decode(..., decode=True)`.

  Sized for `beam_size` hypotheses per source row (each step then feeds `[B, beam_size]`
  tokens). Self-attention caches start empty; the encoder-decoder keys and values are projected
  from `encoded_BxSxD` with `params` (the "params" collection), once, here.
  """
  if isinstance(beam_size, bool) or not isinstance(beam_size, (int, np.integer)) or beam_size < 1:
    raise ValueError(f"beam_size must be a positive integer, got {beam_size!r}.")
  batch = src_BxS.shape[0]
  tgt_BxN = jnp.zeros((batch, beam_size), jnp.int32)
  history_BxNxL = jnp.zeros((batch, beam_size, length), jnp.int32)
  _, variables = model.apply({"params": params}, encoded_BxSxD, src_BxS, tgt_BxN, decode=True,
                             beam_history=history_BxNxL, method=Transformer.decode,
                             mutable=["cache"])
  return variables["cache"]


def _check_tokens(name: str, tokens: Array, cfg: TransformerConfig) -> None:
  if tokens.ndim != 2:
    raise ValueError(f"{name} must be a [batch, length] array of token ids, got shape "
                     f"{tokens.shape}.")
  if not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(f"{name} must hold integer token ids, got dtype {tokens.dtype}.")
  if tokens.shape[1] > cfg.max_len and cfg.positional == "learned":
    raise ValueError(f"{name} has length {tokens.shape[1]} > max_len={cfg.max_len}; raise "
                     "TransformerConfig.max_len or cut the sequences.")
