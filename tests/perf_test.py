"""Optimized decoding paths equal the plain ones: the cached encoder-decoder keys/values, and the
beam reorder that leaves them in place."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer_jax import Transformer, TransformerConfig
from transformer_jax import decoding

SRC = jnp.array([[5, 6, 7, 8, 0], [9, 10, 11, 0, 0]], jnp.int32)
TGT = jnp.array([[1, 12, 13, 14], [1, 15, 16, 0]], jnp.int32)


def _setup(**overrides):
  config = TransformerConfig.tiny(vocab_size=20, **overrides)
  model = Transformer(config)
  params = model.init(jax.random.key(3), SRC, TGT)["params"]
  encoded = model.apply({"params": params}, SRC, method=Transformer.encode)
  return config, model, params, encoded


def _cache_leaves(cache, name):
  return [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(cache)
          if getattr(path[-1], "key", None) == name]


@pytest.mark.parametrize("overrides", [dict(), dict(scan_layers=True)])
def test_cross_keys_values_computed_once_and_equal_to_projection(overrides):
  config, model, params, encoded = _setup(**overrides)
  cache = decoding._init_cache(model, encoded, SRC, TGT.shape[1])
  step = jax.jit(functools.partial(model.apply, decode=True, method=Transformer.decode,
                                   mutable=["cache"]))
  logits, updates = step({"params": params, "cache": cache}, encoded, SRC, TGT[:, :1])
  cache = updates["cache"]
  # The cached keys equal the key projection of the encoder output in the first layer.
  layer = params["decoder"]["layers" if config.scan_layers else "layers_0"]
  kernel = layer["cross_attention"]["key"]["kernel"]
  bias = layer["cross_attention"]["key"]["bias"]
  if config.scan_layers:
    kernel, bias = kernel[0], bias[0]
  expected = jnp.einsum("bsd,dhk->bshk", encoded, kernel) + bias
  cached = _cache_leaves(cache, "cached_cross_key")[0]
  cached = cached[0] if config.scan_layers else cached
  np.testing.assert_allclose(cached, expected, atol=1e-5)
  # Later steps read the cache: a different encoder output no longer changes anything.
  a, _ = step({"params": params, "cache": cache}, encoded, SRC, TGT[:, 1:2])
  b, _ = step({"params": params, "cache": cache}, encoded * 0.0 + 1.0, SRC, TGT[:, 1:2])
  np.testing.assert_array_equal(a, b)


def test_beam_reorder_skipping_cross_cache_equals_full_reorder():
  config, model, params, encoded = _setup()
  beams = 3
  src = jnp.repeat(SRC, beams, axis=0)
  enc = jnp.repeat(encoded, beams, axis=0)
  cache = decoding._init_cache(model, enc, src, 4)
  tokens = jnp.arange(src.shape[0], dtype=jnp.int32) % 7 + 3
  _, cache = decoding._decode_step(model, params, cache, enc, src, tokens)
  origin = jnp.array([[2, 0, 2], [1, 1, 0]], jnp.int32)
  fast = decoding._reorder_cache(cache, origin, config)
  flat = (jnp.arange(2)[:, None] * beams + origin).reshape(-1)
  full = jax.tree.map(lambda x: jnp.take(x, flat, axis=0) if x.ndim else x, cache)
  for x, y in zip(jax.tree.leaves(fast), jax.tree.leaves(full)):
    np.testing.assert_array_equal(x, y)
  assert _cache_leaves(fast, "cached_cross_key")  # The skipped leaves exist.
