"""Export a model of this package to a Hugging Face `MarianMTModel` directory.

The exact inverse of the importer in `marian.py`: `marian.convert_params` of what this module
writes gives back the same parameters, bit for bit, and `marian.transformer_config` of its
config.json the same `TransformerConfig`. `MarianMTModel.from_pretrained(DIR)` then computes
the logits our `Transformer` computes, in Marian's id order.

A MarianMTModel (transformers 5's `modeling_marian`) is one fixed variant of the paper's
Transformer. Refused (`check_exportable` names the field): pre-norm layers (MarianMTModel
ignores config.json's `normalize_before`), separate embedding matrices, learned positions.
Carried exactly:

  * our sinusoid layout: MarianMTModel builds its own table with the sines in the first half
    (`sinusoid_layout="split"`). A model trained with the paper's interleaved layout is exported
    with its d_model features permuted (even ones first, then odd ones) in every tensor that
    reads or writes the residual stream: LayerNorm and the logits are invariant to a permutation
    of the features, so the permuted model computes exactly the same function, and its
    positions are then the split table;
  * the decoder start token: our BOS (`decoder_start_token_id`), or the padding id for
    `decoder_start_is_pad` models (imported OPUS-MT), as the config says.

Not exact: MarianMTModel's LayerNorms have epsilon 1e-5 (torch's default; no config field sets
it); a model trained with another epsilon (ours default to 1e-6) is exported with a warning, and
its logits then differ in the 6th digit.

Ids: our padding id is 0, Marian's is `marian_pad` (the importer's record keeps it as
`marian_pad_id`; OPUS-MT models put it last). The two trade places, in the embedding rows, the
logits bias and the special ids, exactly as the importer and `MarianTokenizer` permute them.
The tokenizer files (source.spm, target.spm, vocab.json) are not written here.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any

import flax
import jax
import numpy as np

from transformer_jax.config import TransformerConfig, require_int
from transformer_jax.data.marian_tokenizer import FILES, MarianTokenizer
from transformer_jax.model import Transformer
from transformer_jax.params import unstack_layer_params

MARIAN_LAYER_NORM_EPSILON = 1e-5  # torch.nn.LayerNorm's default, which modeling_marian keeps.
# Our activation -> Marian's activation_function; marian._ACTIVATIONS maps each one back.
_ACTIVATIONS = {"relu": "relu", "swish": "swish", "gelu": "gelu_new", "gelu_exact": "gelu"}
# (TransformerConfig field, the only value a MarianMTModel expresses, why), in checking order.
_REQUIRED = (
    ("pre_norm", False, "MarianMTModel has post-norm layers only (it ignores normalize_before)"),
    ("share_embeddings", True, "MarianMTModel (as the importer reads it) ties one matrix to the "
     "source and target embeddings and the output projection"),
    ("positional", "sinusoidal", "MarianMTModel has sinusoidal positions only"),
)
# What the exported generation_config.json asks of generate(): the paper's beam of 4 (as OPUS-MT).
_NUM_BEAMS = 4


def check_exportable(config: TransformerConfig) -> None:
  """Raises ValueError, one line naming the TransformerConfig field and its value, for a model a
  MarianMTModel cannot express exactly."""
  for field, needed, why in _REQUIRED:
    value = getattr(config, field)
    if value != needed:
      raise ValueError(f"TransformerConfig.{field}={value!r}: {why}, so this model cannot be "
                       f"exported to a MarianMTModel (that needs {field}={needed!r}).")
  if config.sinusoid_layout == "interleaved" and config.d_model % 2:
    raise ValueError(f"TransformerConfig.d_model={config.d_model} is odd: the interleaved "
                     "sinusoids cannot be permuted into MarianMTModel's split layout.")


def _feature_order(config: TransformerConfig) -> np.ndarray | None:
  """The d_model permutation that turns our interleaved sinusoids into Marian's split ones
  (feature j of the export is our feature order[j]), or None for split models."""
  if config.sinusoid_layout == "split":
    return None
  return np.concatenate([np.arange(0, config.d_model, 2), np.arange(1, config.d_model, 2)])


def _permute_features(params: dict[str, Any], order: np.ndarray) -> dict[str, Any]:
  """`params` (unrolled, numpy) with every residual-stream axis permuted by `order`."""
  # (name of the parameter, its residual-stream axis); the rest have none.
  axes = {("embedding",): 1, ("query", "kernel"): 0, ("key", "kernel"): 0,
          ("value", "kernel"): 0, ("out", "kernel"): 2, ("out", "bias"): 0,
          ("wi", "kernel"): 0, ("wo", "kernel"): 1, ("wo", "bias"): 0, ("norm", "scale"): 0,
          ("norm", "bias"): 0}

  def permute(path, x):
    keys = tuple(getattr(k, "key", str(k)) for k in path)
    for suffix, axis in axes.items():
      if keys[-len(suffix):] == suffix:
        return np.take(x, order, axis=axis)
    return x
  return jax.tree_util.tree_map_with_path(permute, params)


def _permutation(config: TransformerConfig, marian_pad: int) -> np.ndarray:
  """`order[i]`: the Marian id of our id i (and, an involution, our id of Marian's id i)."""
  require_int("marian_pad", marian_pad, minimum=0)
  if marian_pad >= config.vocab_size:
    raise ValueError(f"marian_pad={marian_pad} is outside the vocabulary [0, vocab_size="
                     f"{config.vocab_size}); give the Marian padding id the model was imported "
                     "with (marian_import.json's marian_pad_id).")
  order = np.arange(config.vocab_size)
  order[[0, marian_pad]] = order[[marian_pad, 0]]
  return order


def marian_config(config: TransformerConfig, *, marian_pad: int) -> dict[str, Any]:
  """The config.json dict of the MarianMTModel that `config` is (transformers 5's fields).

  Raises:
    ValueError: a model a MarianMTModel cannot express, or a `marian_pad` outside the vocabulary.
  """
  check_exportable(config)
  order = _permutation(config, marian_pad)
  eos = int(order[config.eos_id])
  start = marian_pad if config.decoder_start_is_pad else int(order[config.bos_id])
  return {
      "architectures": ["MarianMTModel"], "model_type": "marian",
      "vocab_size": config.vocab_size, "decoder_vocab_size": config.vocab_size,
      "d_model": config.d_model,
      "encoder_layers": config.num_encoder_layers, "decoder_layers": config.num_decoder_layers,
      "encoder_attention_heads": config.num_heads, "decoder_attention_heads": config.num_heads,
      "encoder_ffn_dim": config.d_ff, "decoder_ffn_dim": config.d_ff,
      "activation_function": _ACTIVATIONS[config.activation],
      "dropout": config.dropout_rate, "attention_dropout": config.attention_dropout_rate,
      "activation_dropout": 0.0, "encoder_layerdrop": 0.0, "decoder_layerdrop": 0.0,
      "max_position_embeddings": config.max_len, "scale_embedding": config.scale_embeddings,
      "share_encoder_decoder_embeddings": True, "tie_word_embeddings": True,
      "pad_token_id": marian_pad, "eos_token_id": eos, "decoder_start_token_id": start,
      "forced_eos_token_id": eos, "bos_token_id": None if config.decoder_start_is_pad else start,
      "is_encoder_decoder": True, "is_decoder": False, "use_cache": True, "init_std": 0.02,
      "dtype": "float32",
  }


def _generation_config(hf: dict[str, Any]) -> dict[str, Any]:
  """generation_config.json: Marian's special ids, beam 4, and the padding id never generated
  where it is the decoder start token (as our decoding forbids it then)."""
  generation = {"decoder_start_token_id": hf["decoder_start_token_id"],
                "pad_token_id": hf["pad_token_id"], "eos_token_id": hf["eos_token_id"],
                "forced_eos_token_id": hf["forced_eos_token_id"], "num_beams": _NUM_BEAMS,
                "max_length": hf["max_position_embeddings"]}
  if hf["decoder_start_token_id"] == hf["pad_token_id"]:
    generation["bad_words_ids"] = [[hf["pad_token_id"]]]
  return generation


def _numpy_params(params: Any, config: TransformerConfig) -> dict[str, Any]:
  """`params` as float32 numpy arrays in the unrolled layout, after checking every shape."""
  params = flax.core.unfreeze(params)
  model = Transformer(config)
  dummy = np.ones((1, 2), np.int32)
  expected = jax.eval_shape(lambda: model.init(jax.random.key(0), dummy, dummy))["params"]
  expected = dict(jax.tree_util.tree_flatten_with_path(expected)[0])
  given = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  for path in sorted(set(expected) | set(given), key=jax.tree_util.keystr):
    name = f"params{jax.tree_util.keystr(path)}"
    if path not in given:
      raise ValueError(f"{name} is missing: these parameters are not those of the model the "
                       "config describes.")
    if path not in expected:
      raise ValueError(f"{name} is not a parameter of the model the config describes.")
    if np.shape(given[path]) != expected[path].shape:
      raise ValueError(f"{name} has shape {np.shape(given[path])}, but the model the config "
                       f"describes has {expected[path].shape}.")
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  return unstack_layer_params(params) if config.scan_layers else params


def _tensor(x: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(x, np.float32)


def _attention(p: dict[str, Any], prefix: str, d: int) -> dict[str, np.ndarray]:
  """Heads-split query/key/value/out kernels -> torch Linear weights `[out, in]` and biases."""
  state = {}
  for name, proj in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
    state[f"{prefix}.{proj}.weight"] = _tensor(p[name]["kernel"].reshape(d, d).T)
    state[f"{prefix}.{proj}.bias"] = _tensor(p[name]["bias"].reshape(d))
  state[f"{prefix}.out_proj.weight"] = _tensor(p["out"]["kernel"].reshape(d, d).T)
  state[f"{prefix}.out_proj.bias"] = _tensor(p["out"]["bias"])
  return state


def _norm(p: dict[str, Any], prefix: str) -> dict[str, np.ndarray]:
  return {f"{prefix}.weight": _tensor(p["norm"]["scale"]),
          f"{prefix}.bias": _tensor(p["norm"]["bias"])}


def _feed_forward(p: dict[str, Any], prefix: str) -> dict[str, np.ndarray]:
  return {f"{prefix}.{fc}.{kind}": _tensor(p[ours]["kernel"].T if kind == "weight"
                                           else p[ours]["bias"])
          for fc, ours in (("fc1", "wi"), ("fc2", "wo")) for kind in ("weight", "bias")}


def _layers(params: dict[str, Any], config: TransformerConfig) -> dict[str, np.ndarray]:
  """The encoder and decoder layers' tensors, named as MarianMTModel's state_dict names them."""
  d, state = config.d_model, {}
  for i in range(config.num_encoder_layers):
    p, prefix = params["encoder"][f"layers_{i}"], f"model.encoder.layers.{i}"
    state.update(_attention(p["self_attention"], f"{prefix}.self_attn", d))
    state.update(_norm(p["attention_block"], f"{prefix}.self_attn_layer_norm"))
    state.update(_feed_forward(p["feed_forward"], prefix))
    state.update(_norm(p["ffn_block"], f"{prefix}.final_layer_norm"))
  for i in range(config.num_decoder_layers):
    p, prefix = params["decoder"][f"layers_{i}"], f"model.decoder.layers.{i}"
    state.update(_attention(p["self_attention"], f"{prefix}.self_attn", d))
    state.update(_norm(p["self_attention_block"], f"{prefix}.self_attn_layer_norm"))
    state.update(_attention(p["cross_attention"], f"{prefix}.encoder_attn", d))
    state.update(_norm(p["cross_attention_block"], f"{prefix}.encoder_attn_layer_norm"))
    state.update(_feed_forward(p["feed_forward"], prefix))
    state.update(_norm(p["ffn_block"], f"{prefix}.final_layer_norm"))
  return state


def marian_state_dict(params: Any, config: TransformerConfig, *,
                      marian_pad: int) -> dict[str, np.ndarray]:
  """Our parameters -> MarianMTModel's tensors (float32), named as transformers saves them.

  The keys carry the "model." prefix, plus `final_logits_bias` (zeros when the config has no
  logits bias). Of the tied embedding copies only `model.shared.weight` is kept, as transformers'
  `save_pretrained` keeps it (encoder/decoder `embed_tokens` and `lm_head` are tied to it on
  load); the position tables are not saved either (MarianMTModel builds them).

  Raises:
    ValueError: a model a MarianMTModel cannot express, a `marian_pad` outside the vocabulary,
      or parameters that do not fit the config (naming the first one).
  """
  check_exportable(config)
  order = _permutation(config, marian_pad)
  params = _numpy_params(params, config)
  features = _feature_order(config)
  if features is not None:
    params = _permute_features(params, features)
  embedding = params["shared_embedding"]["embedding"]
  bias = params["decoder"].get("logits_bias", np.zeros(config.vocab_size, np.float32))
  state = {"model.shared.weight": _tensor(embedding[order]),
           "final_logits_bias": _tensor(bias[order][None, :])}
  state.update(_layers(params, config))
  return state


def write_marian(directory: str, params: Any, config: TransformerConfig, *,
                 marian_pad: int) -> None:
  """Writes config.json, generation_config.json and model.safetensors (safetensors.numpy.save_file)
  into an existing empty directory.

  Everything is converted and checked before the first file is written.

  Raises:
    FileNotFoundError: `directory` does not exist.
    ValueError: `directory` is not empty, or `marian_state_dict` refuses the model.
  """
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"{directory} is not a directory; create an empty one to export into.")
  if os.listdir(directory):
    raise ValueError(f"{directory} is not empty (it holds {sorted(os.listdir(directory))[0]}); "
                     "export into an empty directory.")
  state = marian_state_dict(params, config, marian_pad=marian_pad)
  hf = marian_config(config, marian_pad=marian_pad)
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  for name, value in (("config.json", hf), ("generation_config.json", _generation_config(hf))):
    with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
      json.dump(value, f, indent=2, sort_keys=True)
      f.write("\n")
  # The metadata save_pretrained writes (transformers 4's loader checks it).
  save_file(state, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})


def export(directory: str, params: Any, config: TransformerConfig, tokenizer, *,
           source: dict[str, Any] | None = None) -> None:
  """Writes a MarianMTModel directory (created here) with the tokenizer files transformers'
  `MarianTokenizer` reads: an imported model's own, or our SentencePiece model as both
  source.spm and target.spm with vocab.json mapping its pieces to our ids."""
  marian_pad = tokenizer.marian_pad_id if isinstance(tokenizer, MarianTokenizer) else 0
  if config.layer_norm_epsilon != MARIAN_LAYER_NORM_EPSILON:
    logging.warning("This model's LayerNorm epsilon is %g; MarianMTModel's is fixed at 1e-5: "
                    "its logits will differ from ours in about the 6th digit.",
                    config.layer_norm_epsilon)
  os.makedirs(directory)
  write_marian(directory, params, config, marian_pad=marian_pad)
  if isinstance(tokenizer, MarianTokenizer):
    for name in FILES:
      shutil.copyfile(os.path.join(tokenizer.path, name), os.path.join(directory, name))
  else:
    for name in ("source.spm", "target.spm"):
      shutil.copyfile(tokenizer.path, os.path.join(directory, name))
    vocab = {tokenizer.id_to_piece(i): i for i in range(tokenizer.vocab_size)}
    with open(os.path.join(directory, "vocab.json"), "w", encoding="utf-8") as f:
      json.dump(vocab, f, ensure_ascii=False, indent=1)
  tokenizer_config = {"tokenizer_class": "MarianTokenizer", "model_max_length": config.max_len,
                      "separate_vocabs": False}
  with open(os.path.join(directory, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump(tokenizer_config, f, indent=1)
  with open(os.path.join(directory, "transformer_jax_export.json"), "w", encoding="utf-8") as f:
    json.dump({"format": "huggingface", **(source or {})}, f, indent=1)
