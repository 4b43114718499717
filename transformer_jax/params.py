"""Parameter-tree utilities: convert between unrolled and scanned (`scan_layers`) layouts."""

import jax
import jax.numpy as jnp


def stack_layer_params(tree, num_layers: int):
  """Unrolled params (`layers_0`, `layers_1`, ...) -> scanned params (`layers`, leading axis).

  Lets a checkpoint trained with `scan_layers=False` run in a model with `scan_layers=True`.
  """
  if not isinstance(tree, dict):
    return tree
  out = {k: stack_layer_params(v, num_layers) for k, v in tree.items()
         if not k.startswith("layers_")}
  if "layers_0" in tree:
    out["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs),
                                 *[tree[f"layers_{i}"] for i in range(num_layers)])
  return out


def unstack_layer_params(tree):
  """Scanned params (`layers` with a leading axis) -> unrolled (`layers_0`, `layers_1`, ...)."""
  if not isinstance(tree, dict):
    return tree
  out = {k: unstack_layer_params(v) for k, v in tree.items() if k != "layers"}
  if "layers" in tree:
    num_layers = jax.tree.leaves(tree["layers"])[0].shape[0]
    for i in range(num_layers):
      out[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], tree["layers"])
  return out
