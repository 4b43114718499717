"""transformer_jax: the Transformer of "Attention Is All You Need" in JAX/Flax.

Each name is imported from its module on first use, so that a light module (a data worker
process, `transformer_jax.data.tokenizer`) can be imported without JAX and Flax.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "transformer_jax.config": ("TransformerConfig",),
    "transformer_jax.params": ("stack_layer_params", "unstack_layer_params"),
    "transformer_jax.decoding": ("beam_search", "greedy_search", "ids_until_eos",
                                 "length_penalty"),
    "transformer_jax.attention": (
        "AttentionMask", "MultiHeadAttention", "attention_mask", "causal_mask",
        "make_attention_mask", "padding_mask", "plain_attention", "segment_mask", "slot_mask"),
    "transformer_jax.model": (
        "Decoder", "DecoderLayer", "Embedder", "Encoder", "EncoderLayer", "FeedForward",
        "PositionalEncoding", "SharedEmbedding", "SubLayer", "Transformer", "init_cache",
        "sinusoidal_encoding"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "TransformerConfig", "Transformer", "Encoder", "Decoder", "EncoderLayer", "DecoderLayer",
    "MultiHeadAttention", "FeedForward", "SubLayer", "PositionalEncoding", "SharedEmbedding",
    "Embedder", "init_cache", "AttentionMask", "attention_mask", "causal_mask",
    "make_attention_mask", "padding_mask",
    "plain_attention", "segment_mask", "slot_mask", "sinusoidal_encoding", "greedy_search",
    "beam_search", "ids_until_eos", "length_penalty", "stack_layer_params", "unstack_layer_params",
]


def __getattr__(name: str):
  if name in _MODULE_OF:
    return getattr(importlib.import_module(_MODULE_OF[name]), name)
  try:  # A submodule, e.g. `transformer_jax.model` after a bare `import transformer_jax`.
    return importlib.import_module(f"{__name__}.{name}")
  except ModuleNotFoundError as e:
    if e.name != f"{__name__}.{name}":
      raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
  return sorted([*globals(), *__all__])
