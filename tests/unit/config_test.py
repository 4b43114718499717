"""TransformerConfig: presets and every validation error."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from transformer_jax import Transformer, TransformerConfig


def _num_params(config):
  src = jnp.ones((1, 4), jnp.int32)
  shapes = jax.eval_shape(lambda: Transformer(config).init(jax.random.key(0), src, src))
  return sum(x.size for x in jax.tree.leaves(shapes["params"]))


def test_paper_parameter_counts():
  # Table 3: base ~65M, big ~213M; with a shared 37k vocabulary exactly these.
  assert _num_params(TransformerConfig.base(37000)) == 63_082_496
  assert _num_params(TransformerConfig.big(37000)) == 214_245_376


def test_presets_match_table_3():
  base, big = TransformerConfig.base(100), TransformerConfig.big(100)
  assert (base.d_model, base.d_ff, base.num_heads, base.num_encoder_layers,
          base.num_decoder_layers, base.dropout_rate) == (512, 2048, 8, 6, 6, 0.1)
  assert (big.d_model, big.d_ff, big.num_heads, big.num_encoder_layers,
          big.num_decoder_layers, big.dropout_rate) == (1024, 4096, 16, 6, 6, 0.3)
  assert base.head_dim == 64 and big.head_dim == 64
  assert TransformerConfig.tiny(100, d_model=64).d_model == 64


def test_untied_embeddings_add_two_matrices():
  tied = _num_params(TransformerConfig.tiny(100))
  untied = _num_params(TransformerConfig.tiny(100, share_embeddings=False))
  assert untied - tied == 2 * 100 * 32


def test_marian_options_are_valid_and_a_pad_start_needs_bos_equal_to_pad():
  config = TransformerConfig.tiny(100, activation="swish", sinusoid_layout="split",
                                  scale_embeddings=False, logits_bias=True,
                                  decoder_start_is_pad=True, bos_id=0)
  assert config.bos_id == config.pad_id == 0
  assert _num_params(config) - _num_params(TransformerConfig.tiny(100)) == 100  # The bias.
  for activation in ("relu", "gelu", "gelu_exact", "swish"):
    TransformerConfig.tiny(100, activation=activation)


def test_frozen_and_hashable():
  config = TransformerConfig.tiny(10)
  with pytest.raises(dataclasses.FrozenInstanceError):
    config.d_model = 64
  assert hash(config) == hash(TransformerConfig.tiny(10))
  assert config.replace(d_model=64).d_model == 64


@pytest.mark.parametrize("changes, words", [
    (dict(d_model=30, num_heads=4), ["d_model", "num_heads", "divisible"]),
    (dict(d_model=0), ["d_model", "positive"]),
    (dict(d_ff=-1), ["d_ff", "positive"]),
    (dict(num_heads=0), ["num_heads", "positive"]),
    (dict(num_encoder_layers=0), ["num_encoder_layers"]),
    (dict(num_decoder_layers=0), ["num_decoder_layers"]),
    (dict(max_len=0), ["max_len"]),
    (dict(vocab_size=0), ["vocab_size"]),
    (dict(dropout_rate=1.0), ["dropout_rate", "[0, 1)"]),
    (dict(dropout_rate=-0.1), ["dropout_rate"]),
    (dict(attention_dropout_rate=1.5), ["attention_dropout_rate"]),
    (dict(bos_id=0), ["collide", "bos_id"]),
    (dict(eos_id=1), ["collide"]),
    (dict(eos_id=64), ["eos_id", "vocab"]),
    (dict(bos_id=-1), ["bos_id", "vocab"]),
    (dict(pad_id=3), ["pad_id"]),
    (dict(activation="tanh"), ["activation"]),
    (dict(sinusoid_layout="halves"), ["sinusoid_layout"]),
    (dict(decoder_start_is_pad=True), ["decoder_start_is_pad", "bos_id must equal pad_id"]),
    (dict(decoder_start_is_pad=True, bos_id=0, eos_id=0), ["collide", "eos_id"]),
    (dict(positional="rope"), ["positional"]),
    (dict(attention_impl="flash"), ["attention_impl"]),
    (dict(dtype="int32"), ["dtype", "floating"]),
    (dict(param_dtype="nonsense"), ["param_dtype"]),
    (dict(layer_norm_epsilon=0.0), ["layer_norm_epsilon"]),
])
def test_validation_errors_name_the_field(changes, words):
  fields = dict(vocab_size=64, d_model=32, num_heads=4, d_ff=64)
  with pytest.raises(ValueError) as info:
    TransformerConfig(**{**fields, **changes})
  for word in words:
    assert word in str(info.value), (word, str(info.value))
