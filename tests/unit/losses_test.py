"""The label-smoothed cross-entropy, on logits and fused with the output projection."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer_jax import losses


# ----------------------------------------------------------------------------- loss


def test_loss_ignores_padding_and_matches_one_hot_smoothing():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(2, 5, 7)), jnp.float32)
  targets = jnp.asarray([[3, 4, 5, 0, 0], [1, 2, 3, 4, 6]])
  weights = targets != 0
  eps = 0.1
  sums = losses.cross_entropy_loss(logits, targets, weights, eps)
  logp = jax.nn.log_softmax(logits)
  soft = (1 - eps) * jax.nn.one_hot(targets, 7) + eps / 7
  expected = -(soft * logp).sum(-1)
  np.testing.assert_allclose(sums["loss_sum"], (expected * weights).sum(), rtol=1e-5)
  assert float(sums["num_tokens"]) == 8
  # Changing logits at padded positions changes nothing.
  other = logits.at[0, 3:].set(100.0)
  np.testing.assert_allclose(losses.cross_entropy_loss(other, targets, weights, eps)["loss_sum"],
                             sums["loss_sum"], rtol=1e-6)


def test_loss_nll_and_accuracy_match_the_plain_formulas():
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(4, 6, 11)) * 3, jnp.float32)
  targets = jnp.asarray(rng.integers(1, 11, size=(4, 6)))
  targets = targets.at[:, 0].set(jnp.argmax(logits[:, 0], axis=-1))  # Some surely correct.
  weights = (targets != 0).at[1, 4:].set(False)
  sums = losses.cross_entropy_loss(logits, targets, weights, 0.1)
  logp = jax.nn.log_softmax(logits)
  nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  correct = jnp.argmax(logits, axis=-1) == targets
  np.testing.assert_allclose(sums["nll_sum"], (nll * weights).sum(), rtol=1e-5)
  assert float(sums["correct_sum"]) == float((correct & weights).sum()) >= 4
  # Large logits stay finite (the max is subtracted before exp).
  big = losses.cross_entropy_loss(logits * 1e4, targets, weights, 0.1)
  assert all(np.isfinite(float(v)) for v in big.values())


@pytest.mark.parametrize("chunk_tokens, with_bias", [(4, True), (None, False), (64, True)])
def test_projected_loss_and_its_gradients_equal_the_plain_ones(chunk_tokens, with_bias):
  rng = np.random.default_rng(2)
  hidden = jnp.asarray(rng.normal(size=(3, 7, 16)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(50, 16)) * 0.3, jnp.float32)
  bias = jnp.asarray(rng.normal(size=(50,)), jnp.float32) if with_bias else None
  targets = jnp.asarray(rng.integers(1, 50, (3, 7)))
  weights = (targets != 0).at[0, 5:].set(False)  # Padding; 21 tokens: chunks of 4 leave 1.

  def plain(h, k, b):
    logits = jnp.einsum("btd,vd->btv", h, k) + (0.0 if b is None else b)
    sums = losses.cross_entropy_loss(logits, targets, weights, 0.1)
    return sums["loss_sum"] / 19.0, sums

  def fused(h, k, b):
    sums = losses.projected_cross_entropy(h, k, b, targets, weights, 0.1, chunk_tokens)
    return sums["loss_sum"] / 19.0, sums

  argnums = (0, 1, 2) if with_bias else (0, 1)
  g1, s1 = jax.grad(plain, argnums, has_aux=True)(hidden, kernel, bias)
  g2, s2 = jax.jit(jax.grad(fused, argnums, has_aux=True))(hidden, kernel, bias)
  for name in s1:
    np.testing.assert_allclose(s2[name], s1[name], rtol=1e-5)
  for a, b in zip(g1, g2):
    np.testing.assert_allclose(b, a, atol=1e-6)


def test_chunks_are_cache_sized_on_cpu_and_large_on_accelerators():
  # Base at 37,000 words: 64-token chunks fit a CPU cache; on a TPU the loop would rewrite the
  # 76 MB projection gradient 500 times per 32k tokens.
  assert losses.default_chunk_tokens(37_000, "cpu") == 64
  assert losses.default_chunk_tokens(37_000, "tpu") == losses.default_chunk_tokens(37_000, "gpu")
  assert losses.default_chunk_tokens(37_000, "tpu") >= 832
  assert losses.default_chunk_tokens(6_000) == 320  # Default backend here: the CPU's.
