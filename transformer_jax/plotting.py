"""Encoder-decoder attention maps: which source tokens each target token looked at.

The weights come from the plain attention path, which sows them into the "intermediates"
collection (`MultiHeadAttention`); the plots are drawn with matplotlib's Agg canvas, without
pyplot, so nothing depends on a display or on global figure state.
"""

from __future__ import annotations

from collections.abc import Sequence
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from transformer_jax.config import TransformerConfig
from transformer_jax.model import Transformer


@functools.partial(jax.jit, static_argnums=0)
def _cross_attention(config: TransformerConfig, params, src_1xS, tgt_in_1xT):
  _, state = Transformer(config).apply({"params": params}, src_1xS, tgt_in_1xT,
                                       mutable=["intermediates"])
  decoder = state["intermediates"]["decoder"]
  if config.scan_layers:  # One sown entry with a leading layer axis: [N, 1, H, T, S].
    return decoder["layers"]["cross_attention"]["attention_weights"][0][:, 0]
  return jnp.stack([decoder[f"layers_{i}"]["cross_attention"]["attention_weights"][0][0]
                    for i in range(config.num_decoder_layers)])


def cross_attention_weights(model: Transformer, params: Any, src_ids: Sequence[int],
                            tgt_ids: Sequence[int]) -> np.ndarray:
  """Encoder-decoder attention for one sentence pair, `[layers, heads, T, S]` (float32).

  Args:
    model: The `Transformer`.
    params: Its parameters (the "params" collection, or `{"params": ...}`).
    src_ids: Source ids as fed to the encoder (usually ending in EOS).
    tgt_ids: Target ids (without BOS, usually ending in EOS); row t of the result is the
      attention of the decoder position that predicts `tgt_ids[t]` (its input is the shifted
      target, BOS first).

  Returns:
    Attention weights; each row sums to 1 over the source.
  """
  config = model.config.replace(attention_impl="plain")  # The path that sows its weights.
  if isinstance(params, dict) and "params" in params:
    params = params["params"]
  src = np.asarray(src_ids, np.int32).reshape(1, -1)
  tgt = np.asarray(tgt_ids, np.int32).reshape(-1)
  if src.size == 0 or tgt.size == 0:
    raise ValueError(f"Need a non-empty source and target, got {src.size} and {tgt.size} ids.")
  if (src == config.pad_id).any():
    raise ValueError("src_ids contains pad_id; give the sentence's ids without padding.")
  tgt_in = np.concatenate([[config.bos_id], tgt[:-1]]).astype(np.int32)[None]
  return np.asarray(_cross_attention(config, params, src, tgt_in), np.float32)


def plot_attention(weights_TxS: Any, src_labels: Sequence[str], tgt_labels: Sequence[str],
                   path: str | os.PathLike, *, title: str | None = None) -> str:
  """Draws a `[T, S]` attention matrix as a heat map with token labels; writes a PNG to `path`."""
  # Imported here: matplotlib is only needed for plots.
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  weights_TxS = np.asarray(weights_TxS, np.float32)
  if weights_TxS.ndim != 2 or weights_TxS.shape != (len(tgt_labels), len(src_labels)):
    raise ValueError(f"weights of shape {weights_TxS.shape} do not match {len(tgt_labels)} "
                     f"target and {len(src_labels)} source labels; expected [T, S].")
  num_tgt, num_src = weights_TxS.shape
  figure = Figure(figsize=(min(2 + 0.45 * num_src, 30), min(1.5 + 0.4 * num_tgt, 30)))
  FigureCanvasAgg(figure)
  axes = figure.add_subplot()
  image = axes.imshow(weights_TxS, cmap="viridis", vmin=0.0, vmax=max(float(weights_TxS.max()),
                                                                        1e-6), aspect="auto")
  axes.set_xticks(range(num_src), labels=list(src_labels), rotation=90)
  axes.set_yticks(range(num_tgt), labels=list(tgt_labels))
  axes.set_xlabel("source")
  axes.set_ylabel("target")
  if title:
    axes.set_title(title)
  figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
  figure.tight_layout()
  path = os.fspath(path)
  figure.savefig(path, format="png", dpi=100)
  return path


def plot_cross_attention(model: Transformer, params: Any, src_ids: Sequence[int],
                         tgt_ids: Sequence[int], path: str | os.PathLike, *,
                         src_labels: Sequence[str] | None = None,
                         tgt_labels: Sequence[str] | None = None, layer: int | None = -1,
                         head: int | None = None) -> np.ndarray:
  """Plots the encoder-decoder attention of one sentence pair to a PNG.

  Args:
    model: The `Transformer`.
    params: Its parameters.
    src_ids: Source ids (usually ending in EOS).
    tgt_ids: Target ids without BOS (usually ending in EOS).
    path: Where to write the PNG.
    src_labels: Tick labels for the source (default: the ids); e.g. tokenizer pieces.
    tgt_labels: Tick labels for the target (default: the ids).
    layer: Decoder layer (negative counts from the end; default the last), or None for the
      mean over layers.
    head: Attention head, or None (default) for the mean over heads.

  Returns:
    The plotted `[T, S]` weights.
  """
  weights_NxHxTxS = cross_attention_weights(model, params, src_ids, tgt_ids)
  num_layers, num_heads = weights_NxHxTxS.shape[:2]
  if layer is not None and not -num_layers <= layer < num_layers:
    raise ValueError(f"layer={layer} is out of range for {num_layers} decoder layers.")
  if head is not None and not -num_heads <= head < num_heads:
    raise ValueError(f"head={head} is out of range for {num_heads} heads.")
  by_layer = weights_NxHxTxS.mean(0) if layer is None else weights_NxHxTxS[layer]
  weights_TxS = by_layer.mean(0) if head is None else by_layer[head]
  src_labels = [str(i) for i in src_ids] if src_labels is None else src_labels
  tgt_labels = [str(i) for i in tgt_ids] if tgt_labels is None else tgt_labels
  title = (f"encoder-decoder attention, layer {'mean' if layer is None else layer}, "
           f"head {'mean' if head is None else head}")
  plot_attention(weights_TxS, src_labels, tgt_labels, path, title=title)
  return weights_TxS
