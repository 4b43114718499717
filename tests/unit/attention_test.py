"""Behaviour of attention and its masks: the paper's formula, mask composition, fused vs plain."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer_jax import MultiHeadAttention, TransformerConfig
from transformer_jax.attention import (causal_mask, make_attention_mask, padding_mask,
                                       plain_attention, segment_mask, slot_mask)

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
  attention = MultiHeadAttention(CONFIG.replace(attention_impl="xla"))
  x = jax.random.normal(jax.random.key(0), (2, 7, CONFIG.d_model))
  mask = make_attention_mask(SRC, SRC, causal=causal)
  params = attention.init(jax.random.key(1), x, x, mask)
  fused = attention.apply(params, x, x, mask)
  plain = MultiHeadAttention(CONFIG.replace(attention_impl="plain")).apply(params, x, x, mask)
  np.testing.assert_allclose(fused, plain, atol=1e-5)


def test_fused_attention_gets_the_mask_at_full_query_and_key_length(monkeypatch):
  # cuDNN refuses a [B, 1, 1, S] padding mask (seen on an H200); XLA would broadcast it.
  seen = []
  fused = jax.nn.dot_product_attention

  def recording(q, k, v, *, mask=None, implementation=None, **kwargs):
    seen.append(mask.shape)
    return fused(q, k, v, mask=mask, implementation="xla", **kwargs)

  monkeypatch.setattr(jax.nn, "dot_product_attention", recording)
  attention = MultiHeadAttention(CONFIG.replace(attention_impl="cudnn"), cross=True)
  x, memory = jnp.ones((2, 3, CONFIG.d_model)), jnp.ones((2, 7, CONFIG.d_model))
  mask = padding_mask(SRC[:, :3], SRC)
  assert mask.shape == (2, 1, 1, 7)
  params = attention.init(jax.random.key(1), x, memory, mask)
  out = attention.apply(params, x, memory, mask)
  plain = MultiHeadAttention(CONFIG.replace(attention_impl="plain"), cross=True).apply(
      params, x, memory, mask)
  assert seen and all(shape == (2, 1, 3, 7) for shape in seen)
  np.testing.assert_allclose(out, plain, atol=1e-5)


def test_auto_attention_and_dtype_resolve_for_the_devices_platform():
  # On XLA CPU the heads-first batched matmuls beat jax.nn.dot_product_attention's layout.
  assert jax.default_backend() == "cpu"
  assert (CONFIG.resolved().dtype, CONFIG.resolved().attention_impl) == ("float32", "plain")
  assert CONFIG.compute_dtype == jnp.float32
  # Compiling for TPU or GPU from this CPU host: the mesh's platform decides, not the host's.
  assert (CONFIG.resolved("tpu").dtype, CONFIG.resolved("tpu").attention_impl) == (
      "bfloat16", "pallas")
  assert CONFIG.resolved("gpu").attention_impl == "cudnn"
  assert CONFIG.replace(dtype="float32").resolved("gpu").attention_impl == "xla"
  explicit = CONFIG.replace(dtype="float32", attention_impl="plain")
  assert explicit.resolved("tpu") == explicit


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


def test_slot_mask_matches_a_hand_built_mask():
  # Two hypotheses, three positions; keys are position-major: key p * 2 + slot.
  history = np.array([[[0, 1, 0],    # Hypothesis 0's tokens: slot 0, then 1, then 0.
                       [0, 0, 1]]])  # Hypothesis 1's: slot 0, 0, then 1.
  key_valid = np.array([[[True, True],    # Position 0: both slots hold real tokens.
                         [True, False],   # Position 1: slot 1 holds padding.
                         [True, True]]])
  expected = np.array([[1, 0, 0, 0, 1, 0],  # Keys 0, 3 (padding: masked) and 4.
                       [1, 0, 1, 0, 0, 1]],  # Keys 0, 2 and 5.
                      bool)
  mask = np.asarray(slot_mask(history, key_valid))
  assert mask.shape == (1, 1, 2, 6)
  np.testing.assert_array_equal(mask[0, 0], expected)
  # Positions not yet written are invalid keys: the mask is causal.
  key_valid[:, 2] = False
  np.testing.assert_array_equal(np.asarray(slot_mask(history, key_valid))[0, 0, :, 4:], False)


def _decode_self_attention(steps):
  """Standalone incremental causal self-attention, one token a step; `[B, T, D]` outputs."""
  attention = MultiHeadAttention(CONFIG)
  x = jax.random.normal(jax.random.key(0), (2, 5, CONFIG.d_model))
  history = np.zeros((2, 1, 5), np.int32)  # One hypothesis per row: every token in slot 0.
  valid_upto = lambda t: np.broadcast_to((np.arange(5) <= t)[None, :, None], (2, 5, 1))
  params = attention.init(jax.random.key(1), x, x, make_attention_mask(SRC[:, :5], SRC[:, :5]))
  cache = attention.init(jax.random.key(1), x[:, :1], x[:, :1],
                         slot_mask(history, valid_upto(-1)), decode=True)["cache"]
  outputs = []
  for t in range(steps):
    out, updates = attention.apply({**params, "cache": cache}, x[:, t:t + 1], x[:, t:t + 1],
                                   slot_mask(history, valid_upto(t)), decode=True,
                                   decode_position=jnp.int32(t), mutable=["cache"])
    cache = updates["cache"]
    outputs.append(out)
  full = attention.apply(params, x, x, causal_mask(5))
  return jnp.concatenate(outputs, axis=1), full, (attention, params, cache, x, history)


def test_cached_self_attention_equals_causal_attention():
  cached, full, _ = _decode_self_attention(5)
  np.testing.assert_allclose(cached, full, atol=1e-5)


def test_cached_self_attention_without_its_position_or_mask_raises():
  _, _, (attention, params, cache, x, history) = _decode_self_attention(1)
  mask = slot_mask(history, np.ones((2, 5, 1), bool))
  step = lambda **kwargs: attention.apply({**params, "cache": cache}, x[:, :1], x[:, :1],
                                          decode=True, mutable=["cache"], **kwargs)
  with pytest.raises(ValueError, match="decode_position"):
    step(mask=mask)
  with pytest.raises(ValueError, match="mask"):
    step(decode_position=jnp.int32(1))
  with pytest.raises(ValueError, match="mask"):
    step(mask=mask[..., :3], decode_position=jnp.int32(1))
