"""transformer_jax: the Transformer of "Attention Is All You Need" in JAX/Flax."""

from transformer_jax.config import TransformerConfig
from transformer_jax.params import stack_layer_params, unstack_layer_params
from transformer_jax.decoding import beam_search, greedy_search, ids_until_eos, length_penalty
from transformer_jax.attention import (
    AttentionMask,
    MultiHeadAttention,
    attention_mask,
    causal_mask,
    make_attention_mask,
    padding_mask,
    plain_attention,
    segment_mask,
    slot_mask,
)
from transformer_jax.model import (
    Decoder,
    DecoderLayer,
    Embedder,
    Encoder,
    EncoderLayer,
    FeedForward,
    PositionalEncoding,
    SharedEmbedding,
    SubLayer,
    Transformer,
    init_cache,
    sinusoidal_encoding,
)

__version__ = "0.1.0"

__all__ = [
    "TransformerConfig", "Transformer", "Encoder", "Decoder", "EncoderLayer", "DecoderLayer",
    "MultiHeadAttention", "FeedForward", "SubLayer", "PositionalEncoding", "SharedEmbedding",
    "Embedder", "init_cache", "AttentionMask", "attention_mask", "causal_mask",
    "make_attention_mask", "padding_mask",
    "plain_attention", "segment_mask", "slot_mask", "sinusoidal_encoding", "greedy_search",
    "beam_search", "ids_until_eos", "length_penalty", "stack_layer_params", "unstack_layer_params",
]
