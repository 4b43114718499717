"""The CTranslate2 export computes what our model computes: every option, scored token by token."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer_jax import export_ct2
from transformer_jax.data.tokenizer import Tokenizer
from transformer_jax.model import Transformer
from transformer_jax.config import TransformerConfig
from transformer_jax.params import stack_layer_params

ctranslate2 = pytest.importorskip("ctranslate2")

SENTENCES = [f"the {w} number {n} is here" for w in ("red", "blue", "green", "tall") for n in
             range(30)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  return Tokenizer.train(SENTENCES, 64, tmp_path_factory.mktemp("tok") / "tokenizer.model")


def _model(tokenizer, seed=0, **changes):
  """A tiny model with random parameters, LayerNorms and biases included (not the identity)."""
  config = TransformerConfig.tiny(tokenizer.vocab_size).replace(dtype="float32", max_len=32,
                                                                **changes)
  model = Transformer(config.replace(scan_layers=False))
  dummy = np.ones((1, 4), np.int32)
  params = model.init(jax.random.key(seed), dummy, dummy)["params"]
  rng = np.random.RandomState(seed)
  params = jax.tree.map(lambda x: x + 0.3 * rng.randn(*x.shape).astype(np.float32), params)
  return model, params, config


VARIANTS = {
    "paper": {},
    "pre_norm": dict(pre_norm=True),
    "learned_separate_bias_gelu": dict(positional="learned", share_embeddings=False,
                                       logits_bias=True, activation="gelu"),
    "split_swish_unscaled_erf": dict(sinusoid_layout="split", scale_embeddings=False,
                                     activation="swish", layer_norm_epsilon=1e-5),
    "gelu_exact_scanned": dict(activation="gelu_exact", scan_layers=True),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_exported_model_scores_every_token_as_ours(variant, tokenizer, tmp_path):
  model, params, config = _model(tokenizer, **VARIANTS[variant])
  exported = params
  if config.scan_layers:  # Exported as scanned stacks; our reference runs them unrolled.
    layers = {"encoder": config.num_encoder_layers, "decoder": config.num_decoder_layers}
    exported = {k: stack_layer_params(v, layers[k]) if k in layers else v
                for k, v in params.items()}
  export_ct2.export(str(tmp_path / "ct2"), exported, config, tokenizer)
  rng = np.random.RandomState(1)
  eos, bos = tokenizer.eos_id, tokenizer.bos_id
  src = rng.randint(4, tokenizer.vocab_size, (3, 9))
  src[:, -1] = eos
  tgt = rng.randint(4, tokenizer.vocab_size, (3, 7))
  logits = model.apply({"params": params}, jnp.asarray(src),
                       jnp.asarray(np.concatenate([np.full((3, 1), bos), tgt], axis=1)))
  expected = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits, axis=-1)),
                                np.concatenate([tgt, np.full((3, 1), eos)], 1)[..., None],
                                axis=-1)[..., 0]
  pieces = lambda rows: [[tokenizer.id_to_piece(i) for i in row] for row in rows]
  translator = ctranslate2.Translator(str(tmp_path / "ct2"), device="cpu")
  scored = translator.score_batch(pieces(src), pieces(tgt))
  np.testing.assert_allclose(np.array([r.log_probs for r in scored]), expected, atol=1e-4)


def test_export_writes_the_tokenizer_and_a_record_beside_the_model(tokenizer, tmp_path):
  model, params, _ = _model(tokenizer)
  out = tmp_path / "ct2"
  export_ct2.export(str(out), params, model.config, tokenizer, quantization="int8",
                    source={"workdir": "W"})
  assert {"model.bin", "config.json", export_ct2.TOKENIZER_FILE,
          export_ct2.RECORD_FILE} <= set(os.listdir(out))
  assert Tokenizer.load(out / export_ct2.TOKENIZER_FILE).fingerprint == tokenizer.fingerprint


def test_a_decoder_that_starts_from_padding_is_refused_in_one_line(tokenizer):
  config = TransformerConfig.tiny(64).replace(decoder_start_is_pad=True, bos_id=0)
  with pytest.raises(ValueError, match="decoder_start_is_pad.*ct2-transformers-converter"):
    export_ct2.check_exportable(config)
