"""TransformerConfig: every architectural hyperparameter, named as in the paper."""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

Activation = Literal["relu", "gelu", "gelu_exact", "swish"]
Positional = Literal["sinusoidal", "learned"]
SinusoidLayout = Literal["interleaved", "split"]
AttentionImpl = Literal["auto", "xla", "cudnn", "plain", "pallas"]

# The paper's models (Table 3) and a small one for tests and demos: the fields each preset sets.
# The dataclass defaults are Transformer-base, so "base" changes nothing.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(d_model=32, num_heads=4, d_ff=64, num_encoder_layers=2, num_decoder_layers=2,
                 dropout_rate=0.1, max_len=256),
    "base": {},
    "big": dict(d_model=1024, num_heads=16, d_ff=4096, dropout_rate=0.3),
}


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Hyperparameters of the encoder-decoder Transformer (Vaswani et al., 2017).

  Attributes:
    vocab_size: Size of the (shared) vocabulary, special ids included.
    d_model: Width of every sub-layer output and of the embeddings.
    num_heads: Number of attention heads h; d_model must be divisible by it.
    d_ff: Inner width of the position-wise feed-forward network.
    num_encoder_layers: N for the encoder stack.
    num_decoder_layers: N for the decoder stack.
    dropout_rate: P_drop, on embeddings + positions and every sub-layer output.
    attention_dropout_rate: Dropout on the attention weights (0 in the paper).
    max_len: Longest position the model supports (learned positions' table size).
    share_embeddings: One matrix for source, target and output projection.
    pre_norm: LayerNorm before each sub-layer (plus a final one) instead of after.
    dtype: Computation dtype: "auto" (bfloat16 on GPU/TPU, float32 on CPU, resolved for the
      backend the model runs on; read `compute_dtype`), "float32" or "bfloat16".
    param_dtype: Parameter dtype (keep float32).
    pad_id: Id of padding; always 0.
    bos_id: Id that starts every decoder input (the decoder start token).
    eos_id: Id that ends every target.
    activation: Feed-forward non-linearity: "relu" as in the paper, "gelu" (tanh
      approximation), "gelu_exact" (erf), or "swish" (x * sigmoid(x), also called SiLU).
    positional: "sinusoidal" (the paper's formula) or "learned".
    sinusoid_layout: Where the sinusoids' sines and cosines go: "interleaved" as in the paper
      (sin in even dimensions, cos in odd ones) or "split" as in Marian (the D/2 sines first,
      then the D/2 cosines); same frequencies.
    scale_embeddings: Multiply token embeddings by sqrt(d_model) (the paper; Marian's
      `scale_embedding`).
    logits_bias: Add a learned bias `[V]` to the output logits (Marian's `final_logits_bias`).
    decoder_start_is_pad: The decoder input starts with pad_id instead of a BOS of its own, as in
      Marian (OPUS-MT); bos_id must then equal pad_id. A pad_id at target position 0 is then the
      start token, attended to and never masked as padding, and the searches never generate
      pad_id.
    layer_norm_epsilon: Epsilon of every LayerNorm.
    attention_impl: "auto" (the Pallas kernel on TPUs, cuDNN's fused kernel on GPUs in half
      precision, "plain" on CPUs, XLA otherwise), "xla", "cudnn" (`jax.nn.dot_product_attention`),
      "pallas" (attention_kernel.py: one fused TPU kernel per pass for lengths up to 256, XLA
      beyond; elsewhere it runs in the slow Pallas interpreter), or "plain" (explicit heads-first
      einsum/softmax; always used when attention dropout is active).
    scan_layers: Run each stack as one `nn.scan` over stacked layer parameters
      (fast compiles; parameters get a leading layer axis).
    remat: Rematerialize each layer's activations in the backward pass.
  """

  vocab_size: int
  d_model: int = 512
  num_heads: int = 8
  d_ff: int = 2048
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  max_len: int = 512
  share_embeddings: bool = True
  pre_norm: bool = False
  dtype: Any = "auto"
  param_dtype: Any = "float32"
  pad_id: int = 0
  bos_id: int = 1
  eos_id: int = 2
  activation: Activation = "relu"
  positional: Positional = "sinusoidal"
  sinusoid_layout: SinusoidLayout = "interleaved"
  scale_embeddings: bool = True
  logits_bias: bool = False
  decoder_start_is_pad: bool = False
  layer_norm_epsilon: float = 1e-6
  attention_impl: AttentionImpl = "auto"
  scan_layers: bool = False
  remat: bool = False

  def __post_init__(self):
    for name in ("vocab_size", "d_model", "num_heads", "d_ff", "num_encoder_layers",
                 "num_decoder_layers", "max_len"):
      require_int(f"TransformerConfig.{name}", getattr(self, name), minimum=1)
    if self.d_model % self.num_heads:
      raise ValueError(
          f"TransformerConfig.d_model={self.d_model} is not divisible by num_heads="
          f"{self.num_heads}: each head gets d_model / num_heads dimensions, so choose "
          "num_heads among the divisors of d_model "
          f"(e.g. {_divisors_near(self.d_model, self.num_heads)}).")
    for name in ("dropout_rate", "attention_dropout_rate"):
      value = getattr(self, name)
      if not 0.0 <= value < 1.0:
        raise ValueError(f"TransformerConfig.{name} must be in [0, 1), got {value!r}.")
    if not self.layer_norm_epsilon > 0:
      raise ValueError("TransformerConfig.layer_norm_epsilon must be positive, got "
                       f"{self.layer_norm_epsilon!r}.")
    if self.pad_id != 0:
      raise ValueError(f"TransformerConfig.pad_id must be 0 (padding is id 0 everywhere), "
                       f"got {self.pad_id!r}.")
    ids = {"pad_id": self.pad_id, "bos_id": self.bos_id, "eos_id": self.eos_id}
    for name, value in ids.items():
      if not 0 <= value < self.vocab_size:
        raise ValueError(f"TransformerConfig.{name}={value} is outside the vocabulary "
                         f"[0, vocab_size={self.vocab_size}); use an id below vocab_size.")
    self._check_special_ids(ids)
    check_choices(self, "TransformerConfig")
    for name in ("dtype", "param_dtype"):
      value = getattr(self, name)
      if name == "dtype" and value == "auto":
        continue
      try:
        dtype = jnp.dtype(value)
      except TypeError as e:
        raise ValueError(f"TransformerConfig.{name}={value!r} is not a dtype; use e.g. "
                         "'float32' or 'bfloat16'" + (" (or 'auto')." if name == "dtype" else ".")
                         ) from e
      if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"TransformerConfig.{name} must be a floating dtype, got {dtype}.")

  def _check_special_ids(self, ids: dict[str, int]) -> None:
    if self.decoder_start_is_pad:
      if self.bos_id != self.pad_id:
        raise ValueError(f"TransformerConfig.decoder_start_is_pad=True starts the decoder with "
                         f"pad_id, so bos_id must equal pad_id={self.pad_id}; got bos_id="
                         f"{self.bos_id}. Use a tokenizer whose BOS is its padding id (Marian's) "
                         "or set decoder_start_is_pad=False.")
      if self.eos_id == self.pad_id:
        raise ValueError(f"TransformerConfig special ids collide ({ids}); eos_id must differ "
                         "from pad_id.")
    elif len(set(ids.values())) != 3:
      raise ValueError(f"TransformerConfig special ids collide ({ids}); pad_id, bos_id and "
                       "eos_id must be three different ids (bos_id may equal pad_id only with "
                       "decoder_start_is_pad=True).")

  def resolved(self, platform: str | None = None) -> TransformerConfig:
    """A copy with "auto" `dtype` and `attention_impl` made concrete for `platform`.

    `platform` is that of the devices the model will run on ("cpu", "gpu", "tpu"; default: the
    default backend). Resolve for the mesh's devices when they are not the default backend's,
    e.g. compiling for TPU from a CPU host: "auto" alone would pick the CPU's choices there.
    """
    platform = platform or jax.default_backend()
    dtype = self.dtype
    if dtype == "auto":
      dtype = "float32" if platform == "cpu" else "bfloat16"
    impl = self.attention_impl
    if impl == "auto":
      half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
      # CPU: the heads-first plain path is 1.04-1.07x faster (docs/performance.md).
      # TPU: the fused kernel keeps scores in VMEM (docs/tpu.md: 1.2-1.34x faster steps).
      choices = {"cpu": "plain", "gpu": "cudnn" if half else "xla", "tpu": "pallas"}
      impl = choices.get(platform, "xla")
    return self.replace(dtype=dtype, attention_impl=impl)

  @property
  def compute_dtype(self) -> jnp.dtype:
    """`dtype`, with "auto" resolved for the default backend (see `resolved`)."""
    return jnp.dtype(self.resolved().dtype if self.dtype == "auto" else self.dtype)

  @property
  def head_dim(self) -> int:
    """d_k = d_v = d_model / num_heads."""
    return self.d_model // self.num_heads

  def replace(self, **changes) -> TransformerConfig:
    """A copy with some fields changed (validated again)."""
    return dataclasses.replace(self, **changes)

  @classmethod
  def preset(cls, name: str, vocab_size: int, **overrides) -> TransformerConfig:
    """The model of `PRESETS[name]` ("tiny", "base" or "big"), with `overrides` on top."""
    if name not in PRESETS:
      raise ValueError(f"No model preset {name!r}; choose one of {', '.join(PRESETS)}.")
    return cls(vocab_size=vocab_size, **{**PRESETS[name], **overrides})

  @classmethod
  def tiny(cls, vocab_size: int, **overrides) -> TransformerConfig:
    """A 2+2-layer, d_model 32 model for tests and demos."""
    return cls.preset("tiny", vocab_size, **overrides)

  @classmethod
  def base(cls, vocab_size: int, **overrides) -> TransformerConfig:
    """Transformer-base, Table 3 of the paper: 512 / 2048 / 8 heads / 6+6 / P_drop 0.1."""
    return cls.preset("base", vocab_size, **overrides)

  @classmethod
  def big(cls, vocab_size: int, **overrides) -> TransformerConfig:
    """Transformer-big, Table 3 of the paper: 1024 / 4096 / 16 heads / 6+6 / P_drop 0.3."""
    return cls.preset("big", vocab_size, **overrides)


def _divisors_near(n: int, k: int) -> list[int]:
  divisors = [d for d in range(1, n + 1) if n % d == 0]
  return sorted(divisors, key=lambda d: (abs(d - k), d))[:3]


def require_int(name: str, value: Any, *, minimum: int | None = None) -> int:
  """`value` if it is an integer (not a bool) >= `minimum`; else a ValueError naming `name`."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"{name} must be an integer, got {value!r}.")
  if minimum is not None and value < minimum:
    kind = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum,
                                                                      f"an integer >= {minimum}")
    raise ValueError(f"{name} must be {kind}, got {value!r}.")
  return int(value)


def choices(kind: Any) -> tuple[str, ...]:
  """The allowed values of a `Literal` type, e.g. `choices(Activation)`."""
  return typing.get_args(kind)


@functools.cache
def _literal_fields(cls: type) -> dict[str, tuple[str, ...]]:
  hints = typing.get_type_hints(cls)
  return {name: choices(kind) for name, kind in hints.items()
          if typing.get_origin(kind) is Literal}


def check_choices(instance: Any, where: str, error: type[Exception] = ValueError) -> None:
  """The one check of every `Literal`-typed field of a config dataclass: `error` naming it."""
  for name, allowed in _literal_fields(type(instance)).items():
    value = getattr(instance, name)
    if value not in allowed:
      raise error(f"{where}.{name}={value!r}: must be one of {', '.join(allowed)}.")
