"""Exporting to a Hugging Face MarianMTModel: the inverse of the importer (marian.py), bit for bit,
and a model transformers loads and runs as ours runs. Tiny random models are built here."""

import json
import os

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from transformer_jax import export_hf, marian  # pylint: disable=g-import-not-at-top
from transformer_jax.config import TransformerConfig
from transformer_jax.model import Transformer
from transformer_jax.params import stack_layer_params

VOCAB = 40


def _save_hf_model(directory, activation, pad, encoder_layers, decoder_layers, scale):
  """A MarianMTModel, d_model 16, every tensor random (LayerNorms and logits bias included)."""
  eos = 0 if pad else 3  # OPUS-MT's EOS is 0.
  config = transformers.MarianConfig(
      vocab_size=VOCAB, decoder_vocab_size=VOCAB, d_model=16, encoder_layers=encoder_layers,
      decoder_layers=decoder_layers, encoder_attention_heads=2, decoder_attention_heads=2,
      encoder_ffn_dim=32, decoder_ffn_dim=32, activation_function=activation,
      scale_embedding=scale, max_position_embeddings=64, pad_token_id=pad, eos_token_id=eos,
      decoder_start_token_id=pad, forced_eos_token_id=eos)
  torch.manual_seed(pad)
  model = transformers.MarianMTModel(config).eval()
  with torch.no_grad():
    for name, value in model.named_parameters():  # Tied copies once; positions stay sinusoids.
      if "embed_positions" not in name:
        value.copy_(torch.randn_like(value) * 0.3)
    model.final_logits_bias.copy_(torch.randn_like(model.final_logits_bias))
  model.save_pretrained(directory)


def _importable_config(**changes):
  """The TransformerConfig the importer makes of a Marian model (pad 17 there, eos 0)."""
  fields = dict(vocab_size=VOCAB, d_model=16, num_heads=2, d_ff=32, num_encoder_layers=1,
                num_decoder_layers=2, max_len=64, activation="swish", sinusoid_layout="split",
                logits_bias=True, decoder_start_is_pad=True, layer_norm_epsilon=1e-5, bos_id=0,
                eos_id=17)
  return TransformerConfig(**{**fields, **changes})


def _random_params(config, seed=0):
  """Initialized parameters plus noise, so that LayerNorms and the logits bias are not trivial."""
  dummy = np.ones((1, 2), np.int32)
  params = Transformer(config).init(jax.random.key(seed), dummy, dummy)["params"]
  leaves, tree = jax.tree.flatten(params)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(tree, [np.asarray(x, np.float32) + 0.2 * rng.standard_normal(
      x.shape).astype(np.float32) for x in leaves])


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
    assert np.array_equal(np.asarray(x), np.asarray(y)), jax.tree_util.keystr(path)


@pytest.mark.parametrize("activation, pad, layers, scale", [
    ("swish", 17, (2, 1), True), ("gelu_new", VOCAB - 1, (1, 2), False),
    ("gelu", 5, (1, 1), True), ("relu", 0, (1, 1), False)])
def test_export_of_an_import_is_the_original_checkpoint(tmp_path, activation, pad, layers,
                                                        scale):
  _save_hf_model(str(tmp_path), activation, pad, *layers, scale)
  original = json.loads((tmp_path / "config.json").read_text())
  config, marian_pad = marian.transformer_config(original)
  params = marian.convert_params(marian.read_state_dict(str(tmp_path)), config, marian_pad)
  state = export_hf.marian_state_dict(params, config, marian_pad=marian_pad)
  saved = load_file(str(tmp_path / "model.safetensors"))  # Tied copies as transformers saves.
  assert sorted(state) == sorted(saved)
  assert sorted(k.removeprefix("model.") for k in state) == \
      sorted(marian.read_state_dict(str(tmp_path)))
  for name, value in saved.items():
    assert state[name].dtype == np.float32 and np.array_equal(state[name], value), name
  exported = export_hf.marian_config(config, marian_pad=marian_pad)
  assert {k: original[k] for k in exported} == exported
  assert set(original) - set(exported) == {"transformers_version"}


@pytest.mark.parametrize("changes, marian_pad", [
    (dict(activation="relu"), 17),  # Our EOS is Marian's padding id: Marian's EOS is 0.
    (dict(activation="gelu_exact", eos_id=5, scale_embeddings=False), 17),
    (dict(activation="gelu", eos_id=3, dropout_rate=0.3, attention_dropout_rate=0.1), 0)])
def test_import_of_an_export_is_the_identity(tmp_path, changes, marian_pad):
  config = _importable_config(**changes)
  params = _random_params(config)
  export_hf.write_marian(str(tmp_path), params, config, marian_pad=marian_pad)
  assert sorted(os.listdir(tmp_path)) == ["config.json", "generation_config.json",
                                          "model.safetensors"]
  hf = json.loads((tmp_path / "config.json").read_text())
  config2, marian_pad2 = marian.transformer_config(hf)
  assert (config2, marian_pad2) == (config, marian_pad)
  _assert_trees_equal(marian.convert_params(marian.read_state_dict(str(tmp_path)), config2,
                                            marian_pad2), params)
  assert marian.decoding_settings(str(tmp_path))["beam_size"] == 4


@pytest.mark.parametrize("changes", [
    dict(activation="relu", scale_embeddings=False, logits_bias=False, num_encoder_layers=2),
    dict(activation="gelu", eos_id=9)])
def test_transformers_computes_our_logits(tmp_path, changes):
  config, marian_pad = _importable_config(**changes), 17
  params = _random_params(config, seed=1)
  export_hf.write_marian(str(tmp_path), params, config, marian_pad=marian_pad)
  model = transformers.MarianMTModel.from_pretrained(str(tmp_path)).eval()
  assert model.generation_config.decoder_start_token_id == marian_pad
  rng = np.random.default_rng(0)
  tokens = [i for i in range(VOCAB) if i != marian_pad]
  src = rng.choice(tokens, (2, 7))  # Marian's ids; the second row padded.
  src[1, 4:] = marian_pad
  tgt_in = np.concatenate([np.full((2, 1), marian_pad), rng.choice(tokens, (2, 5))], axis=1)
  with torch.no_grad():
    expected = model(input_ids=torch.tensor(src), attention_mask=torch.tensor(src != marian_pad),
                     decoder_input_ids=torch.tensor(tgt_in)).logits.numpy()
  order = np.arange(VOCAB)
  order[[0, marian_pad]] = order[[marian_pad, 0]]  # An involution: ours <-> Marian's ids.
  logits = Transformer(config).apply({"params": params}, order[src], order[tgt_in])
  np.testing.assert_allclose(np.asarray(logits)[..., order], expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("epsilon", [1e-5, 1e-6])
def test_a_model_trained_here_runs_in_transformers_as_ours(tmp_path, epsilon):
  """The paper's interleaved sinusoids (exported with the features permuted into Marian's split
  layout), a BOS of its own as the decoder start, padding id 0; epsilon 1e-6 (our default) is
  not Marian's 1e-5, which shows in the 6th digit only."""
  config = TransformerConfig(vocab_size=VOCAB, d_model=16, num_heads=2, d_ff=32,
                             num_encoder_layers=2, num_decoder_layers=2, max_len=64,
                             layer_norm_epsilon=epsilon)
  params = _random_params(config, seed=2)
  export_hf.write_marian(str(tmp_path), params, config, marian_pad=0)
  model = transformers.MarianMTModel.from_pretrained(str(tmp_path)).eval()
  assert model.generation_config.decoder_start_token_id == config.bos_id
  assert "bad_words_ids" not in json.loads((tmp_path / "generation_config.json").read_text())
  rng = np.random.default_rng(0)
  src = rng.integers(3, VOCAB, (2, 7))
  src[1, 4:] = 0
  tgt_in = np.concatenate([np.full((2, 1), config.bos_id), rng.integers(3, VOCAB, (2, 5))], 1)
  with torch.no_grad():
    expected = model(input_ids=torch.tensor(src), attention_mask=torch.tensor(src != 0),
                     decoder_input_ids=torch.tensor(tgt_in)).logits.numpy()
  logits = Transformer(config).apply({"params": params}, src, tgt_in)
  np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-4, rtol=0)


def test_scanned_layers_export_as_unrolled_ones():
  config = _importable_config(num_encoder_layers=2)
  params = _random_params(config)
  scanned = stack_layer_params(params, 2)  # Two layers in each stack.
  expected = export_hf.marian_state_dict(params, config, marian_pad=17)
  state = export_hf.marian_state_dict(scanned, config.replace(scan_layers=True), marian_pad=17)
  _assert_trees_equal(state, expected)


@pytest.mark.parametrize("changes, field", [
    (dict(pre_norm=True), "pre_norm"),
    (dict(share_embeddings=False), "share_embeddings"),
    (dict(positional="learned"), "positional"),
    (dict(sinusoid_layout="interleaved", d_model=17, num_heads=1), "d_model"),
])
def test_inexpressible_models_are_refused_naming_the_field(tmp_path, changes, field):
  config = _importable_config(**changes)
  with pytest.raises(ValueError, match=rf"^TransformerConfig\.{field}=") as error:
    export_hf.check_exportable(config)
  assert "\n" not in str(error.value)
  with pytest.raises(ValueError, match=rf"^TransformerConfig\.{field}="):
    export_hf.marian_config(config, marian_pad=17)
  export_hf.check_exportable(_importable_config())  # The importer's kind of model passes.


def test_bad_arguments_are_one_error_before_any_write(tmp_path):
  config = _importable_config()
  params = _random_params(config)
  with pytest.raises(ValueError, match=r"^marian_pad=40 is outside the vocabulary"):
    export_hf.write_marian(str(tmp_path), params, config, marian_pad=VOCAB)
  no_bias = {**params, "decoder": {k: v for k, v in params["decoder"].items()
                                   if k != "logits_bias"}}
  with pytest.raises(ValueError, match=r"params\['decoder'\]\['logits_bias'\] is missing"):
    export_hf.write_marian(str(tmp_path), no_bias, config, marian_pad=17)
  with pytest.raises(ValueError, match=r"has shape \(40,\), but .* has \(41,\)\.$"):
    export_hf.marian_state_dict(params, config.replace(vocab_size=VOCAB + 1), marian_pad=17)
  assert os.listdir(tmp_path) == []
  (tmp_path / "x").write_text("")
  with pytest.raises(ValueError, match="is not empty"):
    export_hf.write_marian(str(tmp_path), params, config, marian_pad=17)
  with pytest.raises(FileNotFoundError, match="is not a directory"):
    export_hf.write_marian(str(tmp_path / "missing"), params, config, marian_pad=17)
