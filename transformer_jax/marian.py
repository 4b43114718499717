"""Import Marian translation models (OPUS-MT, `Helsinki-NLP/opus-mt-*`) from Hugging Face.

A Marian Transformer is the paper's architecture with a few variations, each an option of
`TransformerConfig`: swish (or exact GELU) feed-forward activations (`activation`), sinusoids with
the sines in the first half (`sinusoid_layout="split"`), a final logits bias (`logits_bias`),
embeddings scaled or not (`scale_embeddings`), LayerNorm epsilon 1e-5, and the padding id as the
decoder start token (`decoder_start_is_pad`). Its padding id is not 0: the vocabulary is permuted
so that it is (padding and id 0 trade places, in the embedding rows, the logits bias and
`MarianTokenizer` alike). Variants that these options cannot express are refused, naming the
config.json field.

`import_marian(model, workdir)` reads a checkpoint directory as Hugging Face saves it
(`config.json`, `model.safetensors` or `pytorch_model.bin`, `source.spm`, `target.spm`,
`vocab.json`), or downloads a hub id, and writes a workdir that translate.py, tune_decoding.py
and train.py use as they use a trained one: `marian_tokenizer/`, `checkpoints/0` (the weights,
a fresh optimizer state and the experiment configuration) and `marian_import.json` (what was
imported, the experiment, and transformers' decoding settings of the model).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from transformer_jax.config import TransformerConfig
from transformer_jax.data.marian_tokenizer import MarianTokenizer
from transformer_jax.experiment_config import DataConfig, ExperimentConfig, OptimConfig
from transformer_jax.model import Transformer, sinusoidal_encoding
from transformer_jax.workdir_layout import MARIAN_IMPORT_FILE, MARIAN_TOKENIZER_DIR, MODEL_ENTRIES

_ACTIVATIONS = {"swish": "swish", "silu": "swish", "relu": "relu", "gelu": "gelu_exact",
                "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu"}
# config.json fields whose non-default values these modules cannot express: (field, default,
# what it would mean).
_UNSUPPORTED = (
    ("share_encoder_decoder_embeddings", True, "separate source and target embeddings"),
    ("tie_word_embeddings", True, "an output projection of its own"),
    ("normalize_before", False, "pre-norm layers"),
    ("normalize_embedding", False, "a LayerNorm on the embeddings"),
    ("add_final_layer_norm", False, "a final LayerNorm"),
    ("static_position_embeddings", True, "learned positions"),
    ("add_bias_logits", False, "a second logits bias"),
    ("activation_dropout", 0.0, "dropout inside the feed-forward network"),
    ("encoder_layerdrop", 0.0, "LayerDrop"),
    ("decoder_layerdrop", 0.0, "LayerDrop"),
)


def _refuse(field: str, value: Any, why: str) -> ValueError:
  return ValueError(f"config.json {field}={value!r}: {why}; transformer_jax cannot run this "
                    "Marian variant.")


# ----------------------------------------------------------------------------- config


def transformer_config(hf: dict[str, Any]) -> tuple[TransformerConfig, int]:
  """The `TransformerConfig` of a Marian config.json and Marian's padding id.

  The special ids are ours (padding permuted to 0, see the module docstring).

  Raises:
    ValueError: a variant the options cannot express, naming the config.json field.
  """
  if hf.get("model_type") != "marian":
    raise _refuse("model_type", hf.get("model_type"), "this importer reads Marian models only")
  for field, default, meaning in _UNSUPPORTED:
    if field in hf and hf[field] is not None and hf[field] != default:
      raise _refuse(field, hf[field], f"{meaning} is not supported")
  vocab_size = hf["vocab_size"]
  if hf.get("decoder_vocab_size") not in (None, vocab_size):
    raise _refuse("decoder_vocab_size", hf["decoder_vocab_size"],
                  f"a target vocabulary other than the shared one ({vocab_size}) is not supported")
  for field, other in (("decoder_attention_heads", "encoder_attention_heads"),
                       ("decoder_ffn_dim", "encoder_ffn_dim")):
    if hf[field] != hf[other]:
      raise _refuse(field, hf[field], f"it differs from {other}={hf[other]}, and one value "
                    "serves both stacks here")
  activation = _ACTIVATIONS.get(hf.get("activation_function", "gelu"))
  if activation is None:
    raise _refuse("activation_function", hf["activation_function"],
                  f"supported: {', '.join(_ACTIVATIONS)}")
  pad, eos = hf["pad_token_id"], hf["eos_token_id"]
  eos = eos[0] if isinstance(eos, list) and len(eos) == 1 else eos
  if not isinstance(eos, int):
    raise _refuse("eos_token_id", hf["eos_token_id"], "one EOS id is supported")
  if hf.get("decoder_start_token_id", pad) != pad:
    raise _refuse("decoder_start_token_id", hf["decoder_start_token_id"],
                  f"a start token other than the padding id {pad} is not supported")
  permute = lambda i: 0 if i == pad else pad if i == 0 else i
  config = TransformerConfig(
      vocab_size=vocab_size, d_model=hf["d_model"], num_heads=hf["encoder_attention_heads"],
      d_ff=hf["encoder_ffn_dim"], num_encoder_layers=hf["encoder_layers"],
      num_decoder_layers=hf["decoder_layers"], dropout_rate=float(hf.get("dropout", 0.1)),
      attention_dropout_rate=float(hf.get("attention_dropout", 0.0)),
      max_len=hf.get("max_position_embeddings", 512), activation=activation,
      sinusoid_layout="split", scale_embeddings=bool(hf.get("scale_embedding", False)),
      logits_bias=True, decoder_start_is_pad=True, layer_norm_epsilon=1e-5,
      pad_id=0, bos_id=0, eos_id=permute(eos))
  return config, pad


# ----------------------------------------------------------------------------- weights


def read_state_dict(directory: str) -> dict[str, np.ndarray]:
  """The checkpoint's tensors as float32 numpy arrays, keys without the "model." prefix.

  model.safetensors is read without torch; pytorch_model.bin needs torch.
  """
  path = os.path.join(directory, "model.safetensors")
  if os.path.isfile(path):
    from safetensors.numpy import load_file
    try:
      tensors = load_file(path)
    except Exception as e:  # pylint: disable=broad-except  # safetensors' own error types.
      raise ValueError(f"{path} cannot be read ({type(e).__name__}: {str(e)[:200]}): a "
                       "truncated or corrupt download? Fetch the model again.") from None
  else:
    path = os.path.join(directory, "pytorch_model.bin")
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{directory} holds neither model.safetensors nor "
                              "pytorch_model.bin; is it a Hugging Face model directory?")
    try:
      import torch
    except ImportError:
      raise ValueError(f"Reading {path} needs torch (pip install torch), or save the model as "
                       "model.safetensors.") from None
    tensors = {k: v.float().numpy() for k, v in
               torch.load(path, map_location="cpu", weights_only=True).items()}
  return {k.removeprefix("model."): np.asarray(v, np.float32) for k, v in tensors.items()}


def convert_params(state: dict[str, np.ndarray], config: TransformerConfig,
                   marian_pad: int) -> dict[str, Any]:
  """Hugging Face MarianMTModel tensors -> this package's `Transformer` parameters.

  Raises:
    ValueError: a missing, unexpected or misshapen tensor (an unsupported variant).
  """
  state = dict(state)
  used = set()

  def take(name):
    if name not in state:
      raise ValueError(f"The checkpoint has no tensor {name!r}: not a MarianMTModel.")
    used.add(name)
    return state[name]

  d, h, k = config.d_model, config.num_heads, config.head_dim
  dense = lambda p: {"kernel": take(f"{p}.weight").T, "bias": take(f"{p}.bias")}
  norm = lambda p: {"norm": {"scale": take(f"{p}.weight"), "bias": take(f"{p}.bias")}}

  def attention(p):
    heads = {name: {"kernel": take(f"{p}.{proj}.weight").T.reshape(d, h, k),
                    "bias": take(f"{p}.{proj}.bias").reshape(h, k)}
             for name, proj in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj"))}
    heads["out"] = {"kernel": take(f"{p}.out_proj.weight").T.reshape(h, k, d),
                    "bias": take(f"{p}.out_proj.bias")}
    return heads

  ffn = lambda p: {"wi": dense(f"{p}.fc1"), "wo": dense(f"{p}.fc2")}
  encoder = {f"layers_{i}": {
      "self_attention": attention(f"encoder.layers.{i}.self_attn"),
      "attention_block": norm(f"encoder.layers.{i}.self_attn_layer_norm"),
      "feed_forward": ffn(f"encoder.layers.{i}"),
      "ffn_block": norm(f"encoder.layers.{i}.final_layer_norm")}
      for i in range(config.num_encoder_layers)}
  decoder = {f"layers_{i}": {
      "self_attention": attention(f"decoder.layers.{i}.self_attn"),
      "self_attention_block": norm(f"decoder.layers.{i}.self_attn_layer_norm"),
      "cross_attention": attention(f"decoder.layers.{i}.encoder_attn"),
      "cross_attention_block": norm(f"decoder.layers.{i}.encoder_attn_layer_norm"),
      "feed_forward": ffn(f"decoder.layers.{i}"),
      "ffn_block": norm(f"decoder.layers.{i}.final_layer_norm")}
      for i in range(config.num_decoder_layers)}
  order = np.arange(config.vocab_size)
  order[[0, marian_pad]] = order[[marian_pad, 0]]  # Our id i is Marian's id order[i].
  embedding = _embedding(state, used)
  bias = state.get("final_logits_bias", np.zeros((1, config.vocab_size), np.float32))
  used.add("final_logits_bias")
  decoder["logits_bias"] = bias.reshape(-1)[order]
  _check_positions(state, config, used)
  unexpected = sorted(set(state) - used)
  if unexpected:
    raise ValueError(f"The checkpoint holds {unexpected[0]!r} (and {len(unexpected) - 1} more "
                     "unknown tensors): a Marian variant transformer_jax cannot run.")
  params = {"shared_embedding": {"embedding": embedding[order]}, "encoder": encoder,
            "decoder": decoder}
  _check_shapes(params, config)
  return params


def _embedding(state: dict[str, np.ndarray], used: set[str]) -> np.ndarray:
  """The shared embedding matrix; its tied copies must equal it."""
  names = [n for n in ("shared.weight", "encoder.embed_tokens.weight",
                       "decoder.embed_tokens.weight", "lm_head.weight") if n in state]
  if not names:
    raise ValueError("The checkpoint has no embedding matrix (shared.weight): not a "
                     "MarianMTModel.")
  embedding = state[names[0]]
  for name in names[1:]:
    if state[name].shape != embedding.shape or not np.array_equal(state[name], embedding):
      field = ("tie_word_embeddings" if name == "lm_head.weight"
               else "share_encoder_decoder_embeddings")
      raise _refuse(field, False, f"{name} differs from {names[0]}; only one shared matrix is "
                    "supported")
  used.update(names)
  return embedding


def _check_positions(state: dict[str, np.ndarray], config: TransformerConfig,
                     used: set[str]) -> None:
  """Stored position tables (older checkpoints keep them) must be Marian's sinusoids."""
  for name in ("encoder.embed_positions.weight", "decoder.embed_positions.weight"):
    if name in state:
      table = state[name]
      expected = np.asarray(sinusoidal_encoding(np.arange(table.shape[0]), config.d_model,
                                                "split"))
      if table.shape[1] != config.d_model or np.abs(table - expected).max() > 1e-3:
        raise _refuse("static_position_embeddings", False, f"{name} is not the sinusoid table")
      used.add(name)


def _check_shapes(params: dict[str, Any], config: TransformerConfig) -> None:
  """Raises a ValueError naming the first parameter whose shape the config does not expect."""
  model = Transformer(config)
  dummy = np.ones((1, 2), np.int32)
  expected = jax.eval_shape(lambda: model.init(jax.random.key(0), dummy, dummy))["params"]
  flat = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  for path, leaf in jax.tree_util.tree_flatten_with_path(expected)[0]:
    name = jax.tree_util.keystr(path)
    if path not in flat:
      raise ValueError(f"The converted parameters lack {name}.")
    if flat[path].shape != leaf.shape:
      raise ValueError(f"Parameter {name} has shape {flat[path].shape} in the checkpoint but "
                       f"{leaf.shape} in the model its config.json describes.")


# ----------------------------------------------------------------------------- the workdir


def experiment_for(model: TransformerConfig, *, source_lang: str = "en",
                   target_lang: str = "de") -> ExperimentConfig:
  """The experiment an imported workdir stores: the model, and fine-tuning defaults.

  Fine-tuning defaults: a cosine schedule peaking at 5e-5 after 100 warmup steps, gradient
  clipping at 1.0, label smoothing 0.1, batches of 32 rows of 128 tokens. Data comes from the
  fine-tuning command (`--config.data.data_dir=...` or `--config.data.dataset=...`).
  """
  data = DataConfig(source_lang=source_lang, target_lang=target_lang,
                    vocab_size=model.vocab_size, max_len=128, seq_len=128, batch_size=32,
                    eval_batch_size=32)
  optim = OptimConfig(schedule="cosine", warmup_steps=100, peak_learning_rate=5e-5,
                      grad_clip_norm=1.0)
  return ExperimentConfig(num_train_steps=1_000, log_every_steps=50, eval_every_steps=500,
                          checkpoint_every_steps=500, keep_checkpoints=3, model=model,
                          data=data, optim=optim)


def resolve_model(model: str) -> str:
  """A local Marian model directory for `model`: the directory itself, or a hub id downloaded."""
  if os.path.isdir(model):
    return model
  if os.path.exists(model):
    raise FileNotFoundError(f"--model {model} is a file; give a Marian model directory (with "
                            "config.json) or a Hugging Face hub id.")
  if model.count("/") != 1 or model.startswith((".", "/", "~")):
    raise FileNotFoundError(f"--model {model}: no such directory, and not a hub id (OWNER/NAME, "
                            "e.g. Helsinki-NLP/opus-mt-en-de).")
  from huggingface_hub import snapshot_download
  try:
    path = snapshot_download(model, allow_patterns=["*.json", "*.spm", "model.safetensors"])
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
      path = snapshot_download(model, allow_patterns=["pytorch_model.bin"])
  except Exception as e:  # pylint: disable=broad-except  # Network and hub errors of all kinds.
    raise FileNotFoundError(f"--model {model}: no such directory, and downloading it from the "
                            f"Hugging Face hub failed ({type(e).__name__}: {str(e)[:200]}). On "
                            "an offline machine, download the model elsewhere and give its "
                            "directory.") from None
  return path


def _read_json(directory: str, name: str, required: bool = True) -> dict[str, Any]:
  path = os.path.join(directory, name)
  if not os.path.isfile(path):
    if required:
      raise FileNotFoundError(f"{path} is missing: is {directory} a Hugging Face model "
                              "directory?")
    return {}
  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is not valid JSON ({e}); fetch the model again.") from None
  if not isinstance(value, dict):
    raise ValueError(f"{path} holds a {type(value).__name__}, not a JSON object; fetch the "
                     "model again.")
  return value


def _check_target(workdir: str) -> None:
  for name in MODEL_ENTRIES:
    if os.path.exists(os.path.join(workdir, name)):
      raise ValueError(f"--workdir {workdir} already holds a model ({name}); import into a new "
                       "directory.")


def _check_tokenizer_config(directory: str) -> dict[str, Any]:
  tokenizer = _read_json(directory, "tokenizer_config.json", required=False)
  if tokenizer.get("separate_vocabs") or os.path.exists(os.path.join(directory,
                                                                     "target_vocab.json")):
    raise ValueError("tokenizer_config.json separate_vocabs=true: separate source and target "
                     "vocabularies are not supported; transformer_jax cannot run this Marian "
                     "variant.")
  return tokenizer


def decoding_settings(directory: str) -> dict[str, Any]:
  """transformers' decoding settings of the model (generation_config.json, or its defaults)."""
  generation = _read_json(directory, "generation_config.json", required=False)
  return {"beam_size": int(generation.get("num_beams", 1) or 1),
          "alpha": float(generation.get("length_penalty", 1.0)),
          "beam_convention": "huggingface"}


def import_marian(model: str, workdir: str) -> dict[str, Any]:
  """Converts a Marian model (directory or hub id) into a new workdir; returns what it wrote.

  Returns:
    The contents of `WORKDIR/marian_import.json`: the model given, the experiment
    configuration, Marian's padding id, and transformers' decoding settings.

  Raises:
    FileNotFoundError: the model cannot be found or lacks a file.
    ValueError: an unsupported Marian variant (naming the config.json field), or a workdir that
      already holds a model.
  """
  _check_target(workdir)
  directory = resolve_model(model)
  hf = _read_json(directory, "config.json")
  try:
    config, marian_pad = transformer_config(hf)
  except KeyError as e:
    raise ValueError(f"{os.path.join(directory, 'config.json')} has no {e.args[0]!r}: not a "
                     "complete Marian config; fetch the model again.") from None
  tokenizer_config = _check_tokenizer_config(directory)
  params = convert_params(read_state_dict(directory), config, marian_pad)
  # Built in a temporary sibling and moved in at the end: a failure leaves nothing behind, so
  # the same command can simply be run again.
  parent = os.path.dirname(os.path.abspath(workdir))
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(workdir))}.importing-",
                             dir=parent)
  try:
    record = _write_workdir(staging, model, directory, hf, config, marian_pad, tokenizer_config,
                            params)
    _move_into(staging, workdir)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return record


def _move_into(staging: str, workdir: str) -> None:
  """Moves the staged workdir into place (its entries, if `workdir` already exists)."""
  if not os.path.exists(workdir):
    os.rename(staging, workdir)
    return
  for name in os.listdir(staging):
    os.rename(os.path.join(staging, name), os.path.join(workdir, name))


def _write_workdir(workdir: str, model: str, directory: str, hf: dict[str, Any],
                   config: TransformerConfig, marian_pad: int, tokenizer_config: dict[str, Any],
                   params: Any) -> dict[str, Any]:
  """Writes the tokenizer, the step-0 checkpoint and marian_import.json into `workdir`."""
  from flax.training import train_state
  from transformer_jax import checkpoint as checkpoint_lib
  from transformer_jax import schedules
  eos = hf["eos_token_id"][0] if isinstance(hf["eos_token_id"], list) else hf["eos_token_id"]
  try:
    tokenizer = MarianTokenizer.write(directory, os.path.join(workdir, MARIAN_TOKENIZER_DIR),
                                      vocab_size=config.vocab_size, pad_id=marian_pad,
                                      eos_id=eos)
  except (OSError, RuntimeError, KeyError, TypeError) as e:
    raise ValueError(f"The tokenizer files of {directory} (source.spm, target.spm, vocab.json) "
                     f"cannot be read ({type(e).__name__}: {str(e)[:200]}); fetch the model "
                     "again.") from None
  langs = {k: tokenizer_config[k] for k in ("source_lang", "target_lang")
           if isinstance(tokenizer_config.get(k), str) and tokenizer_config[k]}
  if len(set(langs.values())) != 2:
    langs = {}
  experiment = experiment_for(config, **langs)
  tx, _ = schedules.create_optimizer(experiment.optim, d_model=config.d_model,
                                     num_train_steps=experiment.num_train_steps)
  state = train_state.TrainState.create(apply_fn=Transformer(config).apply,
                                        params=jax.tree.map(jnp.asarray, params), tx=tx)
  checkpointer = checkpoint_lib.Checkpointer(workdir, max_to_keep=1, async_save=False)
  try:
    checkpointer.save(0, state, {}, experiment.to_dict())
  finally:
    checkpointer.close()
  record = {"model": model, "directory": os.path.abspath(directory), "marian_pad_id": marian_pad,
            "tokenizer": tokenizer.fingerprint, "decoding": decoding_settings(directory),
            "experiment": experiment.to_dict()}
  with open(os.path.join(workdir, MARIAN_IMPORT_FILE), "w", encoding="utf-8") as f:
    json.dump(record, f, indent=1)
  return record


def imported_experiment(workdir: str) -> dict[str, Any]:
  """The experiment configuration (a nested dict) that `import_marian` stored in `workdir`."""
  path = os.path.join(workdir, MARIAN_IMPORT_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} is missing: import a model into {workdir} first with "
                            "`python import_marian.py --model ID --workdir ...`.")
  with open(path, encoding="utf-8") as f:
    return json.load(f)["experiment"]
