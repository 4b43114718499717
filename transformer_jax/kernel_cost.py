"""The work a Pallas kernel body does, counted from its jaxpr: what its CostEstimate declares.

The TPU compiler cannot look into a Mosaic kernel: it prices the call only by the
`pl.CostEstimate` attached to it, as a roofline. Counting by hand drifts from the kernel (a
matmul added to the body and not to the count); here the body itself is traced, with `jax.Ref`s
standing in for its blocks, and its equations are counted:

  * FLOPs: 2 x the multiply-adds of every `dot_general`;
  * transcendentals: the elements of every exp, log, divide (a reciprocal on the TPU's
    transcendental unit), ...;
  * vector ops: the elements of every other arithmetic op (compare, select, add, max, casts),
    and the input elements of reductions: the vector unit's share. Reading and writing blocks,
    slicing, broadcasting and iota are not counted.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax.extend import core as jex_core

TRANSCENDENTAL = frozenset({"exp", "exp2", "expm1", "log", "log1p", "div", "rsqrt", "sqrt",
                            "tanh", "logistic", "pow", "erf", "sin", "cos"})
NOT_COUNTED = frozenset({"new_ref", "get", "swap", "slice", "broadcast_in_dim", "reshape",
                         "squeeze", "expand_dims", "iota", "transpose"})
REDUCTIONS = frozenset({"reduce_max", "reduce_min", "reduce_sum", "reduce_prod", "argmax",
                        "argmin"})
CONTROL_FLOW = frozenset({"while", "scan", "cond", "fori_loop"})


@dataclasses.dataclass(frozen=True)
class KernelWork:
  """What one kernel call does, summed over every grid cell."""
  flops: int = 0
  transcendentals: int = 0
  vector_ops: int = 0

  def __add__(self, other: KernelWork) -> KernelWork:
    return KernelWork(self.flops + other.flops, self.transcendentals + other.transcendentals,
                      self.vector_ops + other.vector_ops)

  def __mul__(self, factor: int) -> KernelWork:
    return KernelWork(self.flops * factor, self.transcendentals * factor,
                      self.vector_ops * factor)


def count(kernel, inputs, outputs) -> KernelWork:
  """The work of `kernel(*input_refs, *output_refs)` on blocks shaped like `inputs`, `outputs`.

  Args:
    kernel: a Pallas kernel body (refs in, refs out, nothing returned).
    inputs, outputs: arrays or `jax.ShapeDtypeStruct`s, the blocks the body sees.
  """
  def run(*arrays):
    refs = [jax.new_ref(x) for x in arrays]
    kernel(*refs)
    return [ref[...] for ref in refs[len(inputs):]]

  structs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (*inputs, *outputs)]
  return _walk(jax.make_jaxpr(run)(*structs).jaxpr)


def _size(var) -> int:
  return math.prod(var.aval.shape)


def _dot_flops(eqn) -> int:
  (contracting, _), _ = eqn.params["dimension_numbers"]
  lhs_shape = eqn.invars[0].aval.shape
  return 2 * _size(eqn.outvars[0]) * math.prod(lhs_shape[d] for d in contracting)


def _walk(jaxpr) -> KernelWork:
  total = KernelWork()
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    subs = [p for p in eqn.params.values() if isinstance(p, (jex_core.ClosedJaxpr,
                                                              jex_core.Jaxpr))]
    if name in CONTROL_FLOW:
      raise ValueError(f"kernel_cost.count does not count loops or branches ({name}): "
                       "count the body once and multiply.")
    if subs:
      for sub in subs:
        total += _walk(sub.jaxpr if isinstance(sub, jex_core.ClosedJaxpr) else sub)
    elif name == "dot_general":
      total += KernelWork(flops=_dot_flops(eqn))
    elif name in TRANSCENDENTAL:
      total += KernelWork(transcendentals=_size(eqn.outvars[0]))
    elif name in REDUCTIONS:
      total += KernelWork(vector_ops=_size(eqn.invars[0]))
    elif name not in NOT_COUNTED:
      total += KernelWork(vector_ops=sum(_size(v) for v in eqn.outvars))
  return total


def tiled_bytes(shape, dtype, lanes: int = 128, single_row_tiles: bool = True) -> int:
  """Bytes of an array in the TPU's tiled layout: the minor dim padded to the lanes, the
  second-minor to 8 rows of 32 bits (16 of bfloat16), unless it is 1 and `single_row_tiles`
  (HBM gives such arrays `T(1,128)` tiles)."""
  itemsize = jnp.dtype(dtype).itemsize
  *major, second, minor = shape
  rows = 1 if second == 1 and single_row_tiles else 8 * 4 // itemsize
  return (math.prod(major) * -(-second // rows) * rows * -(-minor // lanes) * lanes * itemsize)
