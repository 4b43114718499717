"""Export a trained model to CTranslate2, for fast CPU and GPU serving (int8, float16, ...).

The model is described with CTranslate2's own specs (`ctranslate2.specs.TransformerSpec`, as
its converters do) and saved with its quantization; our SentencePiece model goes beside it, so
`ctranslate2.Translator(DIR)` translates the token pieces our tokenizer gives. What the spec
carries, exactly as our model computes it:

  * post-norm or pre-norm layers (and pre-norm's final LayerNorms), the LayerNorm epsilon;
  * token embeddings scaled by sqrt(d_model) or not, shared or separate matrices;
  * positions as an explicit table (our sinusoid layout, or the learned table), so that
    CTranslate2 does not generate its own layout;
  * the activation (ReLU, GELU tanh or erf, swish), the output projection and its bias;
  * the special tokens: the decoder starts from our BOS piece and stops at our EOS piece.

Refused, before anything is written: a decoder that starts from the padding id (imported
OPUS-MT models: CTranslate2's own `ct2-transformers-converter` converts the original model).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from typing import Any

import numpy as np

from transformer_jax.config import TransformerConfig
from transformer_jax.decoding import EXTRA_LENGTH
from transformer_jax.model import sinusoidal_encoding
from transformer_jax.params import unstack_layer_params

QUANTIZATIONS = ("int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float16",
                 "bfloat16", "float32")
TOKENIZER_FILE = "sentencepiece.model"
RECORD_FILE = "transformer_jax_export.json"
_ACTIVATIONS = {"relu": "RELU", "gelu": "GELUTanh", "gelu_exact": "GELU", "swish": "SWISH"}


def check_exportable(config: TransformerConfig) -> None:
  """A one-line ValueError for a model CTranslate2's Transformer spec cannot express."""
  if config.decoder_start_is_pad:
    raise ValueError("TransformerConfig.decoder_start_is_pad=True (an imported OPUS-MT model): "
                     "CTranslate2 starts such decoders from a zero vector, not the padding "
                     "embedding; convert the original Hugging Face model with CTranslate2's "
                     "ct2-transformers-converter instead.")
  if config.activation not in _ACTIVATIONS:
    raise ValueError(f"TransformerConfig.activation={config.activation!r} has no CTranslate2 "
                     f"equivalent here; supported: {', '.join(_ACTIVATIONS)}.")


def _f32(x) -> np.ndarray:
  """A writable float32 copy (CTranslate2 quantizes in place)."""
  return np.array(x, np.float32, order="C")


def _linear(spec, dense: dict[str, Any]) -> None:
  """A Dense `kernel [in, out]` as CTranslate2's `weight [out, in]`."""
  spec.weight = _f32(dense["kernel"]).T.copy()
  spec.bias = _f32(dense["bias"])


def _norm(spec, norm: dict[str, Any]) -> None:
  spec.gamma, spec.beta = _f32(norm["scale"]), _f32(norm["bias"])


def _attention(spec, params: dict[str, Any], d_model: int, fused_kv_only: bool) -> None:
  """Q, K, V projections fused as CTranslate2 expects (QKV for self-attention, Q and KV for
  cross-attention), and the output projection."""
  weight = lambda name: _f32(params[name]["kernel"]).reshape(d_model, d_model).T
  bias = lambda name: _f32(params[name]["bias"]).reshape(d_model)
  names = ("query", "key", "value")
  groups = [names[:1], names[1:]] if fused_kv_only else [names]
  for linear, group in zip(spec.linear, groups):
    linear.weight = np.concatenate([weight(n) for n in group]).copy()
    linear.bias = np.concatenate([bias(n) for n in group])
  out = params["out"]
  spec.linear[-1].weight = _f32(out["kernel"]).reshape(d_model, d_model).T.copy()
  spec.linear[-1].bias = _f32(out["bias"])


def _positions(config: TransformerConfig, embedder: dict[str, Any]) -> np.ndarray:
  """The position table: learned, or our sinusoids for every position decoding may reach
  (sources of up to max_len tokens, translations of up to their length + EXTRA_LENGTH)."""
  if config.positional == "learned":
    return _f32(embedder["positional"]["pos_embedding"])
  return _f32(sinusoidal_encoding(np.arange(config.max_len + EXTRA_LENGTH), config.d_model,
                                  config.sinusoid_layout))


def require_ctranslate2():
  """The `ctranslate2` module, or a one-line ValueError saying how to install it."""
  try:
    import ctranslate2  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ValueError("CTranslate2 is not installed: pip install -e \".[serve]\" (or pip install "
                     "ctranslate2).") from None
  return ctranslate2


def model_spec(params: dict[str, Any], config: TransformerConfig):
  """The `ctranslate2.specs.TransformerSpec` of our `Transformer` parameters."""
  require_ctranslate2()
  from ctranslate2.specs import common_spec, transformer_spec
  check_exportable(config)
  params = unstack_layer_params(dict(params))  # Scanned stacks as layers_0, layers_1, ...
  spec = transformer_spec.TransformerSpec.from_config(
      (config.num_encoder_layers, config.num_decoder_layers), config.num_heads,
      pre_norm=config.pre_norm,
      activation=getattr(common_spec.Activation, _ACTIVATIONS[config.activation]))
  spec.config.layer_norm_epsilon = config.layer_norm_epsilon
  d = config.d_model
  encoder, decoder = params["encoder"], params["decoder"]
  if config.share_embeddings:
    source = target = _f32(params["shared_embedding"]["embedding"])
  else:
    source = _f32(encoder["src_embedding"]["embedding"])
    target = _f32(decoder["tgt_embedding"]["embedding"])
  scale = math.sqrt(d) if config.scale_embeddings else 1.0
  for side, stack, table in ((spec.encoder, encoder, source), (spec.decoder, decoder, target)):
    side.scale_embeddings = scale
    (side.embeddings[0] if isinstance(side.embeddings, list) else side.embeddings).weight = table
    side.position_encodings.encodings = _positions(config, stack.get("embedder", {}))
    if config.pre_norm:
      _norm(side.layer_norm, stack["final_norm"])
  for i, layer_spec in enumerate(spec.encoder.layer):
    layer = encoder[f"layers_{i}"]
    _attention(layer_spec.self_attention, layer["self_attention"], d, fused_kv_only=False)
    _norm(layer_spec.self_attention.layer_norm, layer["attention_block"]["norm"])
    _ffn(layer_spec.ffn, layer)
  for i, layer_spec in enumerate(spec.decoder.layer):
    layer = decoder[f"layers_{i}"]
    _attention(layer_spec.self_attention, layer["self_attention"], d, fused_kv_only=False)
    _norm(layer_spec.self_attention.layer_norm, layer["self_attention_block"]["norm"])
    _attention(layer_spec.attention, layer["cross_attention"], d, fused_kv_only=True)
    _norm(layer_spec.attention.layer_norm, layer["cross_attention_block"]["norm"])
    _ffn(layer_spec.ffn, layer)
  projection = (target if config.share_embeddings
                else _f32(decoder["output_projection"]["kernel"]).T.copy())
  spec.decoder.projection.weight = projection
  if config.logits_bias:
    spec.decoder.projection.bias = _f32(decoder["logits_bias"])
  return spec


def _ffn(spec, layer: dict[str, Any]) -> None:
  _linear(spec.linear_0, layer["feed_forward"]["wi"])
  _linear(spec.linear_1, layer["feed_forward"]["wo"])
  _norm(spec.layer_norm, layer["ffn_block"]["norm"])


def save(directory: str, params: dict[str, Any], config: TransformerConfig, pieces: list[str],
         *, quantization: str = "float32") -> None:
  """Writes the CTranslate2 model (model.bin, config.json, vocabulary) into `directory`, new.

  `pieces[i]` is the token string of id i; the special tokens are those of the config's ids.
  """
  if quantization not in QUANTIZATIONS:
    raise ValueError(f"--quantization {quantization!r}: use one of {', '.join(QUANTIZATIONS)}.")
  spec = model_spec(params, config)
  spec.register_source_vocabulary(pieces)
  spec.register_target_vocabulary(pieces)
  spec.config.bos_token = spec.config.decoder_start_token = pieces[config.bos_id]
  spec.config.eos_token = pieces[config.eos_id]
  spec.validate()
  spec.optimize(quantization=quantization)
  os.makedirs(directory)
  spec.save(directory)


def export(directory: str, params: dict[str, Any], config: TransformerConfig, tokenizer, *,
           quantization: str = "float32", source: dict[str, Any] | None = None) -> None:
  """Writes the CTranslate2 model, the tokenizer and a record into `directory` (must not exist).

  Args:
    directory: where to write; created here (its parent must exist).
    params: the model's parameters; config: its `TransformerConfig`.
    tokenizer: our `Tokenizer` (its SentencePiece model is copied beside the model).
    quantization: one of `QUANTIZATIONS`.
    source: what was exported (workdir, checkpoint), stored in the record.
  """
  pieces = [tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size)]
  save(directory, params, config, pieces, quantization=quantization)
  shutil.copyfile(tokenizer.path, os.path.join(directory, TOKENIZER_FILE))
  record = {"format": "ctranslate2", "quantization": quantization, **(source or {}),
            "max_len": config.max_len, "positional": config.positional}
  with open(os.path.join(directory, RECORD_FILE), "w", encoding="utf-8") as f:
    json.dump(record, f, indent=1)
