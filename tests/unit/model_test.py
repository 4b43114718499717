"""Behaviour of the Transformer modules: masks, packing, caching, precision, scan and remat."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer_jax import Transformer, TransformerConfig, init_cache, sinusoidal_encoding
from transformer_jax.params import stack_layer_params, unstack_layer_params

VOCAB = 40
SRC = np.array([[5, 6, 7, 8, 9, 0, 0], [10, 11, 12, 13, 14, 15, 16]], np.int32)
TGT = np.array([[1, 20, 21, 22, 0, 0], [1, 23, 24, 25, 26, 27]], np.int32)


def _config(**overrides):
  return TransformerConfig.tiny(VOCAB, **overrides)


@functools.partial(jax.jit, static_argnums=0)
def _init(config, src=SRC, tgt=TGT):
  # jit: one compilation is much faster than running op by op on CPU, and it is cached.
  return Transformer(config).init(jax.random.key(0), src, tgt)["params"]


@functools.partial(jax.jit, static_argnums=0, static_argnames=("deterministic",))
def _apply(config, params, src, tgt, deterministic=True, dropout_seed=0, **packing):
  rngs = {"dropout": jax.random.key(dropout_seed)}
  return Transformer(config).apply({"params": params}, src, tgt, deterministic=deterministic,
                                   rngs=rngs, **packing)


CONFIG = _config()


@pytest.mark.slow
def test_shapes_and_dtypes():
  params = _init(CONFIG)
  logits = _apply(CONFIG, params, SRC, TGT)
  assert logits.shape == (2, 6, VOCAB) and logits.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all()
  encoded = Transformer(CONFIG).apply({"params": params}, SRC, method=Transformer.encode)
  assert encoded.shape == (2, 7, 32)


def test_sinusoidal_encoding_is_the_papers_formula():
  pe = np.asarray(sinusoidal_encoding(jnp.arange(50), 16))
  pos, i = 37, 3
  assert np.isclose(pe[pos, 2 * i], np.sin(pos / 10000 ** (2 * i / 16)), atol=1e-5)
  assert np.isclose(pe[pos, 2 * i + 1], np.cos(pos / 10000 ** (2 * i / 16)), atol=1e-5)


def test_split_sinusoids_are_marians_layout():
  # Marian: the D/2 sines first, then the cosines, at the paper's frequencies.
  split = np.asarray(sinusoidal_encoding(jnp.arange(50), 16, "split"))
  paper = np.asarray(sinusoidal_encoding(jnp.arange(50), 16))
  np.testing.assert_array_equal(split, np.concatenate([paper[:, 0::2], paper[:, 1::2]], -1))
  assert sinusoidal_encoding(jnp.arange(3), 15, "split").shape == (3, 15)


@pytest.mark.slow
def test_a_pad_start_token_is_attended():
  config = _config(decoder_start_is_pad=True, bos_id=0, logits_bias=True)
  params = _init(config)
  tgt = TGT.copy()
  tgt[:, 0] = 0  # The decoder starts with the padding id, as Marian's does.
  base = np.asarray(_apply(config, params, SRC, tgt))
  # Moving the padding embedding moves the logits of the real tokens after the start token
  # (row 1; column 0 aside, which it projects onto): they attend to it.
  moved = {**params, "shared_embedding": {
      "embedding": params["shared_embedding"]["embedding"].at[0].add(1.0)}}
  changed = np.asarray(_apply(config, moved, SRC, tgt))
  assert np.abs(changed[1, 1:, 1:] - base[1, 1:, 1:]).min() > 1e-4


def test_causal_mask_future_tokens_do_not_change_earlier_logits():
  params = _init(CONFIG)
  changed = TGT.copy()
  changed[:, 3:] = 30
  a = _apply(CONFIG, params, SRC, TGT)
  b = _apply(CONFIG, params, SRC, changed)
  np.testing.assert_allclose(a[:, :3], b[:, :3], atol=1e-5)
  assert not np.allclose(a[:, 3:], b[:, 3:], atol=1e-3)


def test_padding_invariance():
  params = _init(CONFIG)
  a = _apply(CONFIG, params, SRC, TGT)
  b = _apply(CONFIG, params, np.pad(SRC, ((0, 0), (0, 5))), np.pad(TGT, ((0, 0), (0, 3))))
  np.testing.assert_allclose(a, b[:, :6], atol=1e-5)
  # Padding in place of a real token does change the result: the mask is not vacuous.
  cut = SRC.copy()
  cut[1, -1] = 0
  c = _apply(CONFIG, params, cut, TGT)
  np.testing.assert_allclose(a[0], c[0], atol=1e-5)
  assert not np.allclose(a[1], c[1], atol=1e-3)


def _pack(rows, pad_to):
  """Packs 1-D int arrays into one row with segments and positions."""
  tokens, segments, positions = [], [], []
  for i, row in enumerate(rows, start=1):
    tokens += list(row)
    segments += [i] * len(row)
    positions += list(range(len(row)))
  pad = pad_to - len(tokens)
  return [np.array([x + [0] * pad], np.int32) for x in (tokens, segments, positions)]


def _pad_batch(rows, length):
  return np.array([list(r) + [0] * (length - len(r)) for r in rows], np.int32)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_packed_equals_unpacked(pre_norm):
  config = _config(pre_norm=pre_norm)
  params = _init(config)
  srcs = [[5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16]]
  tgts = [[1, 20, 21, 22], [1, 23, 24, 25, 26], [1, 27]]
  src, src_seg, src_pos = _pack(srcs, 14)
  tgt, tgt_seg, tgt_pos = _pack(tgts, 13)
  packed = _apply(config, params, src, tgt, src_segments=src_seg, tgt_segments=tgt_seg,
                  src_positions=src_pos, tgt_positions=tgt_pos)[0]
  alone = _apply(config, params, _pad_batch(srcs, 5), _pad_batch(tgts, 5))
  offset = 0
  for i, t in enumerate(tgts):
    np.testing.assert_allclose(packed[offset:offset + len(t)], alone[i, :len(t)], atol=1e-4)
    offset += len(t)


def test_encode_then_decode_equals_call():
  params = _init(CONFIG)
  model = Transformer(CONFIG)
  full = _apply(CONFIG, params, SRC, TGT)
  encoded = model.apply({"params": params}, SRC, method=Transformer.encode)
  logits = model.apply({"params": params}, encoded, SRC, TGT, method=Transformer.decode)
  np.testing.assert_allclose(full, logits, atol=1e-5)


@pytest.mark.slow
def test_dropout_only_when_not_deterministic():
  config = _config(attention_dropout_rate=0.1)
  params = _init(config)
  a = _apply(config, params, SRC, TGT, dropout_seed=1)
  b = _apply(config, params, SRC, TGT, dropout_seed=2)
  np.testing.assert_array_equal(a, b)
  train = lambda seed: _apply(config, params, SRC, TGT, deterministic=False, dropout_seed=seed)
  np.testing.assert_array_equal(train(1), train(1))
  assert not np.allclose(train(1), train(2), atol=1e-3)
  assert not np.allclose(train(1), a, atol=1e-3)
  with pytest.raises(Exception, match="dropout"):
    Transformer(config).apply({"params": params}, SRC, TGT, deterministic=False)


@pytest.mark.slow
def test_bf16_compute_keeps_float32_params():
  config = _config(dtype="bfloat16")
  params = _init(config)
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  logits = _apply(config, params, SRC, TGT)
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, _apply(CONFIG, params, SRC, TGT), atol=0.1)
  encoded = jax.eval_shape(lambda: Transformer(config).apply(
      {"params": params}, SRC, method=Transformer.encode))
  assert encoded.dtype == jnp.bfloat16
  grads = jax.jit(jax.grad(lambda p: _apply(config, p, SRC, TGT).mean()))(params)
  assert {x.dtype for x in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}


def test_fused_attention_equals_plain_attention_in_the_whole_model():
  # Module-level equivalence is in attention_test.py.
  params = _init(CONFIG)
  a = _apply(CONFIG.replace(attention_impl="xla"), params, SRC, TGT)
  b = _apply(CONFIG.replace(attention_impl="plain"), params, SRC, TGT)
  np.testing.assert_allclose(a, b, atol=1e-5)


@functools.partial(jax.jit, static_argnums=0, static_argnames=("deterministic",))
def _grads(config, params, deterministic=False):
  loss = lambda p: _apply(config, p, SRC, TGT, deterministic=deterministic, dropout_seed=3).mean()
  return jax.grad(loss)(params)


@pytest.mark.parametrize("remat", [False, True])
@pytest.mark.slow
def test_scan_equals_unrolled(remat):
  params = _init(CONFIG)
  scanned = CONFIG.replace(scan_layers=True, remat=remat)
  scanned_params = stack_layer_params(params, 2)
  back = unstack_layer_params(scanned_params)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  for x, y in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
    np.testing.assert_array_equal(x, y)
  # The scanned model initializes to the same tree structure as the stacked one.
  assert jax.tree.structure(_init(scanned)) == jax.tree.structure(scanned_params)
  a = _apply(CONFIG, params, SRC, TGT)
  b = _apply(scanned, scanned_params, SRC, TGT)
  np.testing.assert_allclose(a, b, atol=1e-5)
  # Deterministic: scan splits dropout keys per layer differently from the unrolled stack.
  ga = stack_layer_params(_grads(CONFIG, params, deterministic=True), 2)
  gb = _grads(scanned, scanned_params, deterministic=True)
  for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(x, y, atol=1e-5)


@pytest.mark.slow
def test_remat_equals_plain_gradients():
  ga = _grads(CONFIG, _init(CONFIG))
  gb = _grads(CONFIG.replace(remat=True), _init(CONFIG))
  for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_allclose(a, b, atol=1e-6)
  norms = [float(jnp.abs(g).sum()) for g in jax.tree.leaves(ga)]
  assert all(np.isfinite(norms)) and sum(norms) > 0


@pytest.mark.parametrize("overrides", [dict(), dict(scan_layers=True), dict(pre_norm=True),
                                       dict(positional="learned", share_embeddings=False),
                                       dict(scan_layers=True, remat=True),
                                       dict(activation="swish", sinusoid_layout="split",
                                            scale_embeddings=False, logits_bias=True,
                                            decoder_start_is_pad=True, bos_id=0)])
@pytest.mark.slow
def test_cached_decoding_equals_full_forward(overrides):
  config = _config(**overrides)
  model = Transformer(config)
  params = _init(config)
  tgt = TGT.copy()
  tgt[:, 0] = config.bos_id  # 0 (padding) when the decoder starts with it.
  full = _apply(config, params, SRC, tgt)
  encoded = model.apply({"params": params}, SRC, method=Transformer.encode)
  cache = init_cache(model, params, encoded, SRC, tgt.shape[1])
  # Encoder-decoder keys/values are projected once, heads first; self-attention starts empty.
  layer = cache["decoder"]["layers"] if config.scan_layers else cache["decoder"]["layers_0"]
  heads = (config.num_heads, SRC.shape[1], config.head_dim)
  assert layer["cross_attention"]["cross_key"].shape[-3:] == heads
  assert not np.any(layer["self_attention"]["cached_key"])
  # One position counter, the decoder's, serves every layer's cache.
  assert set(layer["self_attention"]) == {"cached_key", "cached_value"}
  assert int(cache["decoder"]["position"]) == 0
  step_fn = jax.jit(functools.partial(model.apply, decode=True, method=Transformer.decode,
                                      mutable=["cache"]))
  for t in range(tgt.shape[1]):
    step, updates = step_fn({"params": params, "cache": cache}, encoded, SRC, tgt[:, t:t + 1])
    cache = updates["cache"]
    # Every position, padding included: the cache masks padding keys like the full pass.
    np.testing.assert_allclose(step[:, 0], full[:, t], atol=1e-5)


@pytest.mark.parametrize("overrides", [dict(), dict(scan_layers=True)])
def test_beam_slot_history_equals_full_forward_of_each_hypothesis(overrides):
  # Beam search never moves the cache: each step hypothesis n writes into slot n, and the slot
  # history (gathered by a random origin here, as top-k would) must make every hypothesis's
  # logits those of the full forward pass over its own token sequence.
  config = _config(**overrides)
  model = Transformer(config)
  params = _init(config)
  beams, length = 3, 5
  rng = np.random.default_rng(0)
  encoded = model.apply({"params": params}, SRC, method=Transformer.encode)
  cache = init_cache(model, params, encoded, SRC, length, beam_size=beams)
  step_fn = jax.jit(functools.partial(model.apply, decode=True, method=Transformer.decode,
                                      mutable=["cache"]))
  batch = SRC.shape[0]
  # Sequences padded to `length` with token 1: the causal mask makes what follows t irrelevant.
  seqs = np.ones((batch, beams, length), np.int32)
  history = np.zeros((batch, beams, length), np.int32)
  step_logits, step_seqs = [], []
  for t in range(length):
    tokens = rng.integers(1, VOCAB, (batch, beams)).astype(np.int32)
    tokens[0, 1] = config.pad_id if t == 2 else tokens[0, 1]  # A generated pad is masked too.
    seqs[:, :, t] = tokens
    history[:, :, t] = np.arange(beams)
    logits, updates = step_fn({"params": params, "cache": cache}, encoded, SRC, tokens,
                              beam_history=history)
    cache = updates["cache"]
    step_logits.append(np.asarray(logits))
    step_seqs.append(seqs.copy())
    origin = rng.integers(0, beams, (batch, beams))
    seqs = np.take_along_axis(seqs, origin[..., None], axis=1)
    history = np.take_along_axis(history, origin[..., None], axis=1)
  # One full forward pass over every (step, row, hypothesis) sequence.
  full = _apply(config, params, np.repeat(SRC, beams, axis=0)[None].repeat(length, 0).reshape(
      -1, SRC.shape[1]), np.stack(step_seqs).reshape(-1, length))
  full = np.asarray(full).reshape(length, batch, beams, length, VOCAB)
  for t in range(length):
    np.testing.assert_allclose(step_logits[t], full[t, :, :, t], atol=1e-5)
  with pytest.raises(ValueError, match="beam_history must be"):
    step_fn({"params": params, "cache": cache}, encoded, SRC, tokens, beam_history=history[:, :2])


def test_variants():
  pre = _config(pre_norm=True)
  assert "final_norm" in _init(pre)["encoder"] and "final_norm" not in _init(CONFIG)["encoder"]
  assert not np.allclose(_apply(pre, _init(pre), SRC, TGT), _apply(CONFIG, _init(pre), SRC, TGT))
  learned = _config(positional="learned", share_embeddings=False)
  params = _init(learned)
  assert params["encoder"]["embedder"]["positional"]["pos_embedding"].shape == (256, 32)
  assert {"src_embedding", "tgt_embedding"} <= set(params["encoder"]) | set(params["decoder"])
  assert "output_projection" in params["decoder"]
  gelu = _config(activation="gelu")
  out = _apply(gelu, _init(CONFIG), SRC, TGT)
  assert np.isfinite(np.asarray(out)).all()
  assert not np.allclose(out, _apply(CONFIG, _init(CONFIG), SRC, TGT))


def test_bad_inputs_raise_clear_errors():
  model, params = Transformer(CONFIG), _init(CONFIG)
  with pytest.raises(ValueError, match="batch, length"):
    model.apply({"params": params}, SRC[0], TGT)
  with pytest.raises(ValueError, match="integer"):
    model.apply({"params": params}, SRC.astype(np.float32), TGT)
  with pytest.raises(ValueError, match="max_len"):
    Transformer(_config(positional="learned", max_len=8)).init(
        jax.random.key(0), np.ones((1, 9), np.int32), TGT)
  encoded = model.apply({"params": params}, SRC, method=Transformer.encode)
  for beam_size in (0, True, 2.0):
    with pytest.raises(ValueError, match="beam_size must be"):
      init_cache(model, params, encoded, SRC, 4, beam_size=beam_size)

