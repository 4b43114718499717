"""The Transformer of "Attention Is All You Need" as Flax linen modules.

Shape legend: B batch, S source length, T target length, L cached decode length,
D d_model, H num_heads, K head_dim (d_k = d_v), F d_ff, V vocab_size.

Every module takes the `TransformerConfig` as its first attribute. Attention and its masks live
in `attention.py`.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from transformer_jax.attention import MultiHeadAttention, attention_mask, dense_init, slot_mask
from transformer_jax.config import TransformerConfig, require_int
from transformer_jax.dropout import dropout

Array = jax.Array


# ----------------------------------------------------------------------------- embeddings


def sinusoidal_encoding(positions: Array, d_model: int, layout: str = "interleaved") -> Array:
  """The paper's PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(same); `[..., D]`.

  `layout="split"` puts the same values in Marian's order instead: the sines in the first
  ceil(D/2) dimensions, then the cosines.
  """
  two_i = np.arange(0, d_model, 2, dtype=np.float32)
  inv_freq = jnp.asarray(np.power(10000.0, -two_i / d_model))
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [..., ceil(D/2)]
  if layout == "split":
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)[..., :d_model]
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
      pe = sinusoidal_encoding(positions, cfg.d_model, cfg.sinusoid_layout)
    return x + pe.astype(x.dtype)


class SharedEmbedding(nn.Module):
  """Token embedding scaled by sqrt(d_model) (unless `scale_embeddings=False`); `attend` is the
  tied output projection."""

  config: TransformerConfig

  def setup(self):
    cfg = self.config
    # std d_model^-0.5, so that after the sqrt(d_model) scale embeddings have unit variance.
    self.embedding = self.param("embedding", nn.initializers.normal(cfg.d_model**-0.5),
                                (cfg.vocab_size, cfg.d_model), jnp.dtype(cfg.param_dtype))

  def __call__(self, tokens: Array) -> Array:
    cfg = self.config
    x = jnp.take(self.embedding, tokens, axis=0).astype(cfg.compute_dtype)
    if not cfg.scale_embeddings:
      return x
    return x * jnp.asarray(math.sqrt(cfg.d_model), cfg.compute_dtype)

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
    return _dropout(self, x, deterministic)


def _dropout(module: nn.Module, x: Array, deterministic: bool) -> Array:
  """P_drop dropout with the module's "dropout" rng; masks follow the global batch row."""
  rate = module.config.dropout_rate
  if deterministic or rate == 0.0:
    return x
  return dropout(x, rate, module.make_rng("dropout"))


def _layer_norm(cfg: TransformerConfig, name: str) -> nn.LayerNorm:
  """Flax's LayerNorm with the config's epsilon, compute and parameter dtypes."""
  return nn.LayerNorm(epsilon=cfg.layer_norm_epsilon, dtype=cfg.compute_dtype,
                      param_dtype=cfg.param_dtype, name=name)


# ----------------------------------------------------------------------------- layers


_ACTIVATION_FNS = {"relu": nn.relu, "gelu": nn.gelu,
                   "gelu_exact": functools.partial(nn.gelu, approximate=False), "swish": nn.swish}


class FeedForward(nn.Module):
  """FFN(x) = max(0, x W1 + b1) W2 + b2 (or another `activation`), applied at every position."""

  config: TransformerConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    dense = functools.partial(nn.Dense, kernel_init=dense_init, dtype=cfg.compute_dtype,
                              param_dtype=cfg.param_dtype)
    h_BxTxF = dense(cfg.d_ff, name="wi")(x)
    h_BxTxF = _ACTIVATION_FNS[cfg.activation](h_BxTxF)
    return dense(cfg.d_model, name="wo")(h_BxTxF)


class SubLayer(nn.Module):
  """LayerNorm(x + Dropout(f(x))) (post-norm), or x + Dropout(f(LayerNorm(x))) (pre-norm)."""

  config: TransformerConfig

  @nn.compact
  def __call__(self, x: Array, f, *, deterministic: bool) -> Array:
    cfg = self.config
    norm = _layer_norm(cfg, "norm")
    if cfg.pre_norm:
      return x + _dropout(self, f(norm(x)), deterministic)
    return norm(x + _dropout(self, f(x), deterministic))


class EncoderLayer(nn.Module):
  """Self-attention then feed-forward, each wrapped in residual + LayerNorm.

  `deterministic` is a field rather than an argument: fields are static under `nn.scan` and
  `nn.remat`, so the layer stack ties nothing to argument positions.
  """

  config: TransformerConfig
  deterministic: bool = True

  @nn.compact
  def __call__(self, x: Array, mask: Array):
    cfg, deterministic = self.config, self.deterministic
    attention = MultiHeadAttention(cfg, name="self_attention")
    x = SubLayer(cfg, name="attention_block")(
        x, lambda h: attention(h, h, mask, deterministic=deterministic),
        deterministic=deterministic)
    ffn = FeedForward(cfg, name="feed_forward")
    x = SubLayer(cfg, name="ffn_block")(
        x, ffn, deterministic=deterministic)
    return x, None  # (carry, output) so that the layer can be scanned.


class DecoderLayer(nn.Module):
  """Masked self-attention, encoder-decoder attention, feed-forward; residual + LayerNorm each.

  With `decode=True`, `decode_position` is where the self-attention cache takes the new keys and
  values (see `MultiHeadAttention`). The static flags are fields, as in `EncoderLayer`.
  """

  config: TransformerConfig
  deterministic: bool = True
  decode: bool = False

  @nn.compact
  def __call__(self, y: Array, encoded: Array, self_mask: Array | None, cross_mask: Array,
               decode_position: Array | None = None):
    cfg, deterministic, decode = self.config, self.deterministic, self.decode
    self_attention = MultiHeadAttention(cfg, name="self_attention")
    y = SubLayer(cfg, name="self_attention_block")(
        y, lambda h: self_attention(h, h, self_mask, deterministic=deterministic, decode=decode,
                                    decode_position=decode_position),
        deterministic=deterministic)
    cross_attention = MultiHeadAttention(cfg, cross=True, name="cross_attention")
    y = SubLayer(cfg, name="cross_attention_block")(
        y, lambda h: cross_attention(h, encoded, cross_mask, deterministic=deterministic,
                                     decode=decode),
        deterministic=deterministic)
    ffn = FeedForward(cfg, name="feed_forward")
    y = SubLayer(cfg, name="ffn_block")(
        y, ffn, deterministic=deterministic)
    return y, None


def _layer_stack(cfg: TransformerConfig, layer_cls, num_layers: int, x: Array, *args, **fields):
  """Applies `num_layers` layers to `x`, remat'd and/or scanned per the config; returns `x`.

  Called inside a parent's compact method: the layers are its submodules, one scanned "layers"
  (parameters stacked on a leading axis) or "layers_0", "layers_1", .... `args` are the same for
  every layer (scan broadcasts them all); `fields` are the layer's static flags.
  """
  if cfg.remat:
    layer_cls = nn.remat(layer_cls, prevent_cse=not cfg.scan_layers)
  if cfg.scan_layers:
    layer_cls = nn.scan(layer_cls, variable_axes={"params": 0, "cache": 0, "intermediates": 0},
                        split_rngs={"params": True, "dropout": True}, in_axes=nn.broadcast,
                        length=num_layers)
    return layer_cls(cfg, name="layers", **fields)(x, *args)[0]
  for i in range(num_layers):
    x, _ = layer_cls(cfg, name=f"layers_{i}", **fields)(x, *args)
  return x


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
    mask = attention_mask(src, src, pad_id=cfg.pad_id, query_segments=src_segments,
                          key_segments=src_segments)
    x = _layer_stack(cfg, EncoderLayer, cfg.num_encoder_layers, x, mask,
                     deterministic=deterministic)
    if cfg.pre_norm:
      x = _layer_norm(cfg, "final_norm")(x)
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
  the full forward pass (a decoder may generate `pad_id`). With `decoder_start_is_pad`, a
  `pad_id` at target position 0 is the start token: a key like any other, in both passes.
  """

  config: TransformerConfig
  embed: nn.Module | None = None

  @nn.compact
  def __call__(self, encoded: Array, src: Array, tgt_in: Array, *, deterministic: bool = True,
               src_segments: Array | None = None, tgt_segments: Array | None = None,
               tgt_positions: Array | None = None, decode: bool = False,
               beam_history: Array | None = None, return_hidden: bool = False):
    cfg = self.config
    embed = self.embed if self.embed is not None else SharedEmbedding(cfg, name="tgt_embedding")
    position = None  # The self-attention caches' write position, with decode=True.
    if decode:
      tgt_positions, self_mask, position = self._decode_inputs(tgt_in, tgt_positions,
                                                               beam_history)
    if tgt_positions is None:
      tgt_positions = jnp.broadcast_to(jnp.arange(tgt_in.shape[1]), tgt_in.shape)
    if not decode:
      self_mask = attention_mask(tgt_in, _target_keys(cfg, tgt_in, tgt_positions),
                                 pad_id=cfg.pad_id, causal=True, query_segments=tgt_segments,
                                 key_segments=tgt_segments)
    cross_mask = attention_mask(tgt_in, src, pad_id=cfg.pad_id, query_segments=tgt_segments,
                                key_segments=src_segments)
    y = Embedder(cfg, embed, name="embedder")(tgt_in, tgt_positions, deterministic=deterministic)
    y = _layer_stack(cfg, DecoderLayer, cfg.num_decoder_layers, y, encoded, self_mask, cross_mask,
                     position, deterministic=deterministic, decode=decode)
    if cfg.pre_norm:
      y = _layer_norm(cfg, "final_norm")(y)
    bias_V = None
    if cfg.logits_bias:
      bias_V = self.param("logits_bias", nn.initializers.zeros, (cfg.vocab_size,),
                          jnp.dtype(cfg.param_dtype))
    if return_hidden:  # For a loss fused with the projection (losses.projected_cross_entropy).
      if not cfg.share_embeddings:
        raise ValueError("return_hidden needs share_embeddings=True (the tied projection).")
      return y, embed.embedding, bias_V
    if cfg.share_embeddings:
      logits_BxTxV = embed.attend(y)
    else:
      logits_BxTxV = nn.Dense(cfg.vocab_size, use_bias=False, kernel_init=dense_init,
                              dtype=cfg.compute_dtype, param_dtype=cfg.param_dtype,
                              name="output_projection")(y).astype(jnp.float32)
    if bias_V is not None:
      logits_BxTxV = logits_BxTxV + bias_V.astype(jnp.float32)
    return logits_BxTxV

  def _decode_inputs(self, tgt_in_BxN: Array, tgt_positions: Array | None,
                     beam_history_BxNxL: Array | None):
    """The decode-only bookkeeping, kept in the "cache" collection next to the layers' caches.

    One position counter serves the self-attention caches of every layer. A `[B, L, N]` table
    records which fed tokens were real (not padding), so that padding keys are masked as in the
    full forward pass; it is False beyond the current position, which makes the mask causal.

    Returns:
      (positions `[B, N]` of the fed tokens, the self-attention mask `[B, 1, N, L * N]`, the
      cache position the layers write them at).
    """
    is_initialized = self.has_variable("cache", "position")
    if not is_initialized and beam_history_BxNxL is None:
      raise ValueError("The initializing decode=True call sizes the cache from beam_history "
                       "[B, N, L]; build the cache with init_cache.")
    position = self.variable("cache", "position", lambda: jnp.array(0, jnp.int32))
    # Sized on the initializing call only, from beam_history [B, N, L]: [B, L, N].
    key_valid_BxLxN = self.variable("cache", "key_valid", lambda: jnp.zeros(
        jnp.swapaxes(beam_history_BxNxL, 1, 2).shape, bool))
    batch, beams = tgt_in_BxN.shape
    length = key_valid_BxLxN.value.shape[1]
    if beam_history_BxNxL is None:  # Hypothesis n's tokens are all in slot n.
      beam_history_BxNxL = jnp.broadcast_to(jnp.arange(beams)[None, :, None],
                                            (batch, beams, length))
    if beam_history_BxNxL.shape != (batch, beams, length):
      raise ValueError(f"beam_history must be [B, N, L] = {(batch, beams, length)} for tgt_in "
                       f"{tgt_in_BxN.shape} and a cache of length {length}; got "
                       f"{beam_history_BxNxL.shape}.")
    index = position.value
    if tgt_positions is None:
      tgt_positions = jnp.broadcast_to(index, tgt_in_BxN.shape)
    if is_initialized:  # The initializing call only sizes the cache.
      keys_BxN = _target_keys(self.config, tgt_in_BxN, tgt_positions)
      key_valid_BxLxN.value = jax.lax.dynamic_update_slice(
          key_valid_BxLxN.value, (keys_BxN != self.config.pad_id)[:, None, :], (0, index, 0))
      position.value = index + 1
    return tgt_positions, slot_mask(beam_history_BxNxL, key_valid_BxLxN.value), index


def _target_keys(cfg: TransformerConfig, tgt_in: Array, tgt_positions: Array) -> Array:
  """`tgt_in` as attention keys: with `decoder_start_is_pad`, the pad_id that starts each
  example (target position 0) is the start token, so it becomes -1, which no mask reads as
  padding."""
  if not cfg.decoder_start_is_pad:
    return tgt_in
  return jnp.where((tgt_in == cfg.pad_id) & (tgt_positions == 0), -1, tgt_in)


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
             beam_history: Array | None = None, return_hidden: bool = False):
    """Encoder output and shifted target ids `[B, T]` -> float32 logits `[B, T, V]`.

    With `decode=True` (and a cache from `init_cache`), `tgt_in` `[B, N]` is one new token for
    each of N hypotheses per row; see `Decoder` for `beam_history`. `return_hidden`: as in
    `__call__`.
    """
    _check_tokens("tgt_in", tgt_in, self.config)
    return self.decoder(encoded, src, tgt_in, deterministic=deterministic,
                        src_segments=src_segments, tgt_segments=tgt_segments,
                        tgt_positions=tgt_positions, decode=decode, beam_history=beam_history,
                        return_hidden=return_hidden)

  def __call__(self, src: Array, tgt_in: Array, *, deterministic: bool = True,
               src_segments: Array | None = None, tgt_segments: Array | None = None,
               src_positions: Array | None = None, tgt_positions: Array | None = None,
               return_hidden: bool = False):
    """Source `[B, S]` and shifted target `[B, T]` -> float32 logits `[B, T, V]`.

    With `return_hidden=True` (tied embeddings only): `(hidden [B, T, D], projection [V, D],
    logits bias [V] or None)` instead, logits = hidden @ projection.T + bias, for a loss fused
    with the projection (`losses.projected_cross_entropy`).
    """
    encoded = self.encode(src, deterministic=deterministic, src_segments=src_segments,
                          src_positions=src_positions)
    return self.decode(encoded, src, tgt_in, deterministic=deterministic,
                       src_segments=src_segments, tgt_segments=tgt_segments,
                       tgt_positions=tgt_positions, return_hidden=return_hidden)


def init_cache(model: Transformer, params, encoded_BxSxD: Array, src_BxS: Array,
               length: int, beam_size: int = 1):
  """The decoding cache for up to `length` steps of `Transformer.decode(..., decode=True)`.

  Sized for `beam_size` hypotheses per source row (each step then feeds `[B, beam_size]`
  tokens). Self-attention caches start empty; the encoder-decoder keys and values are projected
  from `encoded_BxSxD` with `params` (the "params" collection), once, here.
  """
  beam_size = require_int("beam_size", beam_size, minimum=1)
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
