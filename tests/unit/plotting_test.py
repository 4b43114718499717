"""Attention plots: weights that are distributions over the source, and a PNG on disk."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from transformer_jax import Transformer, TransformerConfig
from transformer_jax import plotting

CONFIG = TransformerConfig.tiny(20)
SRC, TGT = [5, 6, 7, 8, 2], [9, 10, 2]


@pytest.fixture(scope="module")
def params():
  src = np.ones((1, 4), np.int32)
  return jax.jit(lambda: Transformer(CONFIG).init(jax.random.key(0), src, src)["params"])()


def test_cross_attention_weights_are_distributions_over_the_source(params):
  weights = plotting.cross_attention_weights(Transformer(CONFIG), params, SRC, TGT)
  assert weights.shape == (2, 4, 3, 5)  # [layers, heads, T, S]
  np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
  # Scanned layers give the same maps.
  stacked = jax.tree.map(lambda *x: jnp.stack(x), params["decoder"]["layers_0"],
                         params["decoder"]["layers_1"])
  scanned_params = {**params, "decoder": {**{k: v for k, v in params["decoder"].items()
                                             if not k.startswith("layers_")}, "layers": stacked}}
  scanned_params["encoder"] = {**{k: v for k, v in params["encoder"].items()
                                  if not k.startswith("layers_")},
                               "layers": jax.tree.map(lambda *x: jnp.stack(x),
                                                      params["encoder"]["layers_0"],
                                                      params["encoder"]["layers_1"])}
  scanned = plotting.cross_attention_weights(Transformer(CONFIG.replace(scan_layers=True)),
                                             scanned_params, SRC, TGT)
  np.testing.assert_allclose(scanned, weights, atol=1e-5)


def test_plot_writes_a_png(params, tmp_path):
  model = Transformer(CONFIG)
  weights = plotting.cross_attention_weights(model, params, SRC, TGT)
  path = tmp_path / "attention.png"
  plotted = plotting.plot_cross_attention(model, params, SRC, TGT, path,
                                          src_labels=["a", "b", "c", "d", "</s>"],
                                          tgt_labels=["x", "y", "</s>"])
  data = path.read_bytes()
  assert data.startswith(b"\x89PNG") and len(data) > 1000
  np.testing.assert_allclose(plotted, weights[-1].mean(0), atol=1e-6)
  one = plotting.plot_cross_attention(model, params, SRC, TGT, tmp_path / "one.png", layer=0,
                                      head=1)
  np.testing.assert_allclose(one, weights[0, 1], atol=1e-6)
  mean = plotting.plot_cross_attention(model, {"params": params}, SRC, TGT, tmp_path / "m.png",
                                       layer=None)
  np.testing.assert_allclose(mean, weights.mean((0, 1)), atol=1e-6)
  with pytest.raises(ValueError, match="layer=2"):
    plotting.plot_cross_attention(model, params, SRC, TGT, tmp_path / "bad.png", layer=2)
  with pytest.raises(ValueError, match="labels"):
    plotting.plot_attention(weights[0, 0], ["a"], ["x", "y", "z"], tmp_path / "bad.png")
