"""Behaviour of attention and its masks: the paper's formula, mask composition, fused vs plain."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer_jax import MultiHeadAttention, TransformerConfig
from transformer_jax.attention import (causal_mask, make_attention_mask, padding_mask,
                                       plain_attention, segment_mask)

CONFIG = TransformerConfig.tiny(40)
SRC = np.array([[5, 6, 7, 8, 9, 0, 0], [10, 11, 12, 13, 14, 15, 16]], np.int32)


def _reference_attention(q, k, v, mask):
  """softmax(QK^T / sqrt(d_k)) V in NumPy float64, heads on axis 2 ([B, T, H, K])."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  logits = np.einsum("bthk,bshk->bhts", q, k) / np.sqrt(q.shape[-1])
  logits = np.where(mask, logits, -np.inf)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  return np.einsum("bhts,bshk->bthk", weights, v)


def test_plain_attention_is_the_papers_formula():
  q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 5, 4, 8))
  mask = np.asarray(causal_mask(5))
  np.testing.assert_allclose(plain_attention(q, k, v, mask), _reference_attention(q, k, v, mask),
                             atol=1e-5)


def test_make_attention_mask_combines_padding_segments_and_causality():
  tokens = np.array([[3, 4, 5, 6, 0]], np.int32)
  segments = np.array([[1, 1, 2, 2, 0]], np.int32)
  mask = np.asarray(make_attention_mask(tokens, tokens, query_segments=segments,
                                        key_segments=segments, causal=True))
  assert mask.shape == (1, 1, 5, 5)
  expected = np.array([[1, 0, 0, 0, 0],
                       [1, 1, 0, 0, 0],
                       [0, 0, 1, 0, 0],   # Example 2 starts: it never sees example 1.
                       [0, 0, 1, 1, 0],
                       [0, 0, 0, 0, 0]],  # A padding query's key (padding) is masked too.
                      bool)
  np.testing.assert_array_equal(mask[0, 0], expected)
  np.testing.assert_array_equal(
      mask, padding_mask(tokens, tokens) & segment_mask(segments, segments) & causal_mask(5))


def test_plain_attention_masks_fully_padded_rows_without_nan():
  q = jnp.ones((1, 2, 1, 4))
  mask = jnp.zeros((1, 1, 2, 2), bool)
  assert np.isfinite(np.asarray(plain_attention(q, q, q, mask))).all()


@pytest.mark.parametrize("causal", [False, True])
def test_fused_attention_equals_plain_attention(causal):
  attention = MultiHeadAttention(CONFIG)
  x = jax.random.normal(jax.random.key(0), (2, 7, CONFIG.d_model))
  mask = make_attention_mask(SRC, SRC, causal=causal)
  params = attention.init(jax.random.key(1), x, x, mask)
  fused = attention.apply(params, x, x, mask)
  plain = MultiHeadAttention(CONFIG.replace(attention_impl="plain")).apply(params, x, x, mask)
  np.testing.assert_allclose(fused, plain, atol=1e-5)


def test_plain_path_sows_attention_weights_that_sum_to_one():
  attention = MultiHeadAttention(CONFIG.replace(attention_impl="plain"))
  x = jax.random.normal(jax.random.key(0), (2, 7, CONFIG.d_model))
  mask = make_attention_mask(SRC, SRC)
  params = attention.init(jax.random.key(1), x, x, mask)
  _, state = attention.apply(params, x, x, mask, mutable=["intermediates"])
  (weights,) = state["intermediates"]["attention_weights"]
  assert weights.shape == (2, CONFIG.num_heads, 7, 7)
  np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
  assert float(weights[0, :, :, 5:].max()) == 0.0  # Padding keys get no weight.
