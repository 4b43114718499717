"""Behaviour of greedy and beam search: against the full forward pass and brute force."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from transformer_jax import Transformer, TransformerConfig
from transformer_jax import decoding
from transformer_jax.params import stack_layer_params

PAD, BOS, EOS = 0, 1, 2

# A model trained briefly to reverse its source: hypotheses end at different lengths, as a
# translation model's do (a random model mostly repeats one token and never stops).
CONFIG = TransformerConfig.tiny(20, dropout_rate=0.0)
SRC = np.array([[11, 15, 19, 3, 2, 0, 0, 0, 0],
                [16, 19, 2, 0, 0, 0, 0, 0, 0],
                [12, 16, 8, 10, 16, 5, 8, 2, 0],
                [7, 17, 7, 2, 0, 0, 0, 0, 0]], np.int32)

# A random model with 6 tokens (pad, bos, eos and 3 words), small enough to search exhaustively.
CONFIG6 = TransformerConfig.tiny(6)
SRC6 = np.array([[3, 4, 5, 2], [5, 3, 2, 0]], np.int32)


@functools.partial(jax.jit, static_argnums=0)
def _init(config, src, tgt):
  return Transformer(config).init(jax.random.key(0), src, tgt)["params"]


@functools.partial(jax.jit, static_argnums=0)
def _full_logprobs(config, params, src, tgt_in):
  """Uncached: log-probabilities from the full forward pass, `[B, T, V]`."""
  return jax.nn.log_softmax(Transformer(config).apply({"params": params}, src, tgt_in))


def _reversal_batch(rng, size=64, width=9):
  src, tgt_in, tgt_out = (np.zeros((size, width), np.int32) for _ in range(3))
  for i in range(size):
    words = rng.integers(3, CONFIG.vocab_size, rng.integers(1, width - 1))
    n = len(words)
    src[i, :n + 1] = [*words, EOS]
    tgt_out[i, :n + 1] = [*words[::-1], EOS]
    tgt_in[i, :n + 1] = [BOS, *words[::-1]]
  return src, tgt_in, tgt_out


@pytest.fixture(scope="module")
def reverser():
  optimizer = optax.adam(3e-3)

  @jax.jit
  def train_step(params, opt_state, src, tgt_in, tgt_out):
    def loss_fn(p):
      logits = Transformer(CONFIG).apply({"params": p}, src, tgt_in)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, tgt_out)
      return jnp.sum(loss * (tgt_out != PAD)) / jnp.sum(tgt_out != PAD)
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  params = _init(CONFIG, SRC, SRC)
  opt_state = optimizer.init(params)
  rng = np.random.default_rng(0)
  for _ in range(150):
    params, opt_state = train_step(params, opt_state, *_reversal_batch(rng))
  return params


@pytest.fixture(scope="module")
def random6():
  return _init(CONFIG6, SRC6, SRC6)


def _argmax_loop(config, params, src, max_len, min_len=0):
  """Greedy decoding the slow way: the full forward pass over the whole prefix every step."""
  tgt_in = np.zeros((src.shape[0], max_len), np.int32)
  tgt_in[:, 0] = BOS
  out = np.full_like(tgt_in, PAD)
  done = np.zeros(src.shape[0], bool)
  for t in range(max_len):
    logprobs = np.array(_full_logprobs(config, params, src, tgt_in)[:, t])
    if t < min_len:
      logprobs[:, EOS] = -np.inf
    token = logprobs.argmax(-1)
    out[:, t] = np.where(done, PAD, token)
    done |= token == EOS
    if t + 1 < max_len:
      tgt_in[:, t + 1] = token
  return out


def _assert_well_formed(tokens, scores=None):
  tokens = np.asarray(tokens)
  is_eos = tokens == EOS
  after_eos = (np.cumsum(is_eos, axis=-1) - is_eos) > 0
  assert (tokens[after_eos] == PAD).all(), "tokens after EOS must be padding"
  if scores is not None:
    scores = np.asarray(scores)
    assert (scores[..., :-1] >= scores[..., 1:]).all(), f"scores not sorted: {scores}"


def _first_eos(tokens):
  tokens = np.asarray(tokens)
  return np.where((tokens == EOS).any(-1), (tokens == EOS).argmax(-1), tokens.shape[-1])


@pytest.mark.slow
def test_greedy_equals_uncached_argmax_loop(reverser, random6):
  tokens = decoding.greedy_search(Transformer(CONFIG), reverser, SRC, max_len=8)
  assert tokens.shape == (4, 8) and tokens.dtype == jnp.int32
  np.testing.assert_array_equal(tokens, _argmax_loop(CONFIG, reverser, SRC, 8))
  assert len(set(_first_eos(tokens))) > 2  # Rows stop at different steps.
  _assert_well_formed(tokens)
  # The random model generates pad_id; the cache must mask it like the full pass does.
  tokens6 = decoding.greedy_search(Transformer(CONFIG6), {"params": random6}, SRC6, max_len=8)
  np.testing.assert_array_equal(tokens6, _argmax_loop(CONFIG6, random6, SRC6, 8))


def _exhaustive(params, src_row, max_len, alpha, min_len):
  """Every finished hypothesis of up to max_len tokens, scored by the full forward pass."""
  words = [t for t in range(CONFIG6.vocab_size) if t != EOS]
  hyps = [(*p, EOS) for n in range(max_len) for p in itertools.product(words, repeat=n)]
  tgt = np.array([h + (PAD,) * (max_len - len(h)) for h in hyps], np.int32)
  tgt_in = np.concatenate([np.full((len(hyps), 1), BOS), tgt[:, :-1]], axis=1)
  logprobs = _full_logprobs(CONFIG6, params, np.repeat(src_row[None], len(hyps), 0), tgt_in)
  token_logprobs = np.take_along_axis(np.asarray(logprobs), tgt[..., None], -1)[..., 0]
  scored = [(token_logprobs[i, :len(h)].sum() / ((5 + len(h)) / 6) ** alpha, h)
            for i, h in enumerate(hyps) if len(h) > min_len]
  return sorted(scored, key=lambda x: -x[0])


@pytest.mark.parametrize("alpha, min_len", [(0.6, 0), (0.0, 1)])
@pytest.mark.slow
def test_beam_search_equals_exhaustive_search(random6, alpha, min_len):
  # Beam 64 exceeds the 31 possible hypotheses: empty slots must not displace real ones.
  tokens, scores = decoding.beam_search(Transformer(CONFIG6), random6, SRC6, beam_size=64,
                                        alpha=alpha, max_len=3, min_len=min_len)
  assert tokens.shape == (2, 64, 3) and scores.shape == (2, 64) and scores.dtype == jnp.float32
  _assert_well_formed(tokens, scores)
  for b in range(2):
    expected = _exhaustive(random6, SRC6[b], 3, alpha, min_len)
    found = [tuple(int(t) for t in row[:_first_eos(row) + 1]) for row in np.asarray(tokens[b])]
    valid = np.isfinite(np.asarray(scores[b]))
    assert valid.sum() == len(expected)  # Every finished hypothesis, best first.
    assert found[0] == expected[0][1]
    np.testing.assert_allclose(scores[b, 0], expected[0][0], rtol=1e-5)
    np.testing.assert_allclose(scores[b][valid], [s for s, _ in expected], rtol=1e-5)
    assert sorted(found[:len(expected)]) == sorted(h for _, h in expected)
    assert (np.asarray(tokens[b])[~valid] == PAD).all()


def test_min_len_forbids_early_eos(reverser, random6):
  model = Transformer(CONFIG)
  free = decoding.greedy_search(model, reverser, SRC, max_len=8)
  forced = decoding.greedy_search(model, reverser, SRC, max_len=8, min_len=3)
  assert (_first_eos(forced) >= 3).all() and (_first_eos(free) < 3).any()
  runs = [decoding.greedy_search(model, reverser, SRC, max_len=8, min_len=8),
          decoding.beam_search(model, reverser, SRC, max_len=8, min_len=8)[0],
          decoding.greedy_search(Transformer(CONFIG6), random6, SRC6, max_len=8, min_len=8)]
  for tokens in runs:
    assert tokens.shape[-1] == 8 and not (np.asarray(tokens) == EOS).any()


def test_beam_search_prefers_its_best_and_beam_one_follows_greedy(reverser):
  model = Transformer(CONFIG)
  tokens, scores = decoding.beam_search(model, reverser, SRC, max_len=8)
  assert tokens.shape == (4, 4, 8)
  _assert_well_formed(tokens, scores)
  assert np.isfinite(np.asarray(scores)).all()
  # Recompute the best hypotheses' scores with the full forward pass.
  best = np.asarray(tokens[:, 0])
  tgt_in = np.concatenate([np.full((4, 1), BOS), best[:, :-1]], axis=1)
  logprobs = np.take_along_axis(np.asarray(_full_logprobs(CONFIG, reverser, SRC, tgt_in)),
                                best[..., None], -1)[..., 0]
  lengths = _first_eos(best) + 1
  expected = [logprobs[b, :n].sum() / ((5 + n) / 6) ** 0.6 for b, n in enumerate(lengths)]
  np.testing.assert_allclose(scores[:, 0], expected, rtol=1e-5)
  # With no EOS allowed, a beam of one is greedy search.
  one, _ = decoding.beam_search(model, reverser, SRC, beam_size=1, max_len=8, min_len=8)
  greedy = decoding.greedy_search(model, reverser, SRC, max_len=8, min_len=8)
  np.testing.assert_array_equal(one[:, 0], greedy)


@pytest.mark.slow
def test_padded_batch_decodes_each_row_as_alone_and_stops_early(reverser):
  model = Transformer(CONFIG)
  greedy, steps = decoding.greedy_search(model, reverser, SRC, return_steps=True)
  beam, scores, beam_steps = decoding.beam_search(model, reverser, SRC, return_steps=True)
  assert greedy.shape == (4, 9 + 50) and beam.shape == (4, 4, 9 + 50)  # Default: S + 50.
  # The loops end once every row is done, long before max_len.
  assert int(steps) == _first_eos(greedy).max() + 1 and int(beam_steps) < 20
  for i in range(4):
    # Row i with companions that end when it does (copies of itself; same shapes, no compile).
    copies = np.repeat(SRC[i:i + 1], 4, axis=0)
    np.testing.assert_array_equal(decoding.greedy_search(model, reverser, copies)[0], greedy[i])
    tokens, row_scores = decoding.beam_search(model, reverser, copies)
    np.testing.assert_array_equal(tokens[0], beam[i])
    np.testing.assert_allclose(row_scores[0], scores[i], rtol=1e-5)
  # Alone and without padding: the same tokens, in a buffer of its own length + 50.
  alone = SRC[1:2, :3]
  np.testing.assert_array_equal(decoding.greedy_search(model, reverser, alone), greedy[1:2, :53])
  tokens, row_scores = decoding.beam_search(model, reverser, alone)
  np.testing.assert_array_equal(tokens, beam[1:2, :, :53])
  np.testing.assert_allclose(row_scores, scores[1:2], rtol=1e-5)


def test_default_max_len_is_each_rows_source_length_plus_50(reverser):
  # With EOS forbidden, every row runs to its own limit: non-pad source tokens + 50.
  model = Transformer(CONFIG)
  limits = (SRC != PAD).sum(-1) + 50
  tokens, steps = decoding.greedy_search(model, reverser, SRC, min_len=59, return_steps=True)
  assert tokens.shape == (4, 59) and int(steps) == limits.max()
  np.testing.assert_array_equal((np.asarray(tokens) != PAD).sum(-1), limits)
  tokens, scores = decoding.beam_search(model, reverser, SRC, min_len=59)
  np.testing.assert_array_equal((np.asarray(tokens) != PAD).sum(-1), limits[:, None] + 0 * scores)
  assert np.isfinite(np.asarray(scores)).all()  # Unfinished hypotheses, since none finished.
  _assert_well_formed(tokens, scores)


def test_scan_layers_decode_as_unrolled(reverser):
  scanned = Transformer(CONFIG.replace(scan_layers=True))
  params = stack_layer_params(reverser, 2)
  model = Transformer(CONFIG)
  # Beam search: the cache leaves of scanned layers have their batch axis second.
  tokens, scores = decoding.beam_search(scanned, params, SRC, max_len=8)
  expected_tokens, expected_scores = decoding.beam_search(model, reverser, SRC, max_len=8)
  np.testing.assert_array_equal(tokens, expected_tokens)
  np.testing.assert_allclose(scores, expected_scores, rtol=1e-5)


def test_ids_until_eos():
  tokens = np.array([[5, 6, EOS, PAD], [7, PAD, 8, 9]])
  assert decoding.ids_until_eos(tokens, eos_id=EOS) == [[5, 6], [7, 8, 9]]
  assert decoding.ids_until_eos(tokens[None], eos_id=EOS) == [[[5, 6], [7, 8, 9]]]
  assert decoding.ids_until_eos([EOS, 5], eos_id=EOS) == []


def test_bad_arguments_raise_clear_errors(random6):
  model = Transformer(CONFIG6)
  with pytest.raises(ValueError, match="src\\[None\\]"):
    decoding.greedy_search(model, random6, SRC6[0])
  with pytest.raises(ValueError, match="max_len"):
    decoding.greedy_search(model, random6, SRC6, max_len=0)
  with pytest.raises(ValueError, match="min_len=9 exceeds max_len=8"):
    decoding.beam_search(model, random6, SRC6, max_len=8, min_len=9)
  with pytest.raises(ValueError, match="beam_size must be a positive integer, got 0"):
    decoding.beam_search(model, random6, SRC6, beam_size=0)
  with pytest.raises(ValueError, match="min_len must be a non-negative integer"):
    decoding.greedy_search(model, random6, SRC6, min_len=-1)
  with pytest.raises(ValueError, match="Transformer"):
    decoding.greedy_search(CONFIG6, random6, SRC6)
  with pytest.raises(ValueError, match="convention='hf' is not one of"):
    decoding.beam_search(model, random6, SRC6, convention="hf")
  learned = Transformer(CONFIG6.replace(positional="learned", max_len=16))
  with pytest.raises(ValueError, match="max_len=16"):
    decoding.greedy_search(learned, random6, SRC6, max_len=17)
