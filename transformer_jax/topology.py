"""TPU topologies by their Cloud names ("v5e-8", "v4-8", "2xv5p-8"), as compile-only devices.

`jax.experimental.topologies` (with libtpu installed: the `tpu` extra) gives devices that the TPU
compiler can target from any host, a CPU machine included: nothing runs on them, but
`jit(...).lower(...).compile()` produces the real TPU program, its memory use and its cost.
"""

from __future__ import annotations

import dataclasses
import os
import re


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU generation: HBM and dense bf16 peak per chip (Google's published figures)."""
  name: str
  hbm_gib: float
  peak_tflops: float
  cores_in_name: bool  # v4-N and v5p-N count TensorCores (2 per chip); v5e-N and v6e-N chips.
  dims: int            # 3-D (torus) or 2-D slice shapes.
  host_chips: int      # Chips per TPU VM host of a multi-host slice (Cloud TPU docs).
  mxus: int            # Per TensorCore, and their width (Cloud TPU and Pallas docs).
  mxu_width: int

  @property
  def cores(self) -> int:
    """TensorCores per chip: two on the megacore chips (v4, v5p)."""
    return 2 if self.cores_in_name else 1

  @property
  def clock_ghz(self) -> float:
    """The clock implied by the peak: peak / (cores x MXUs x width^2 x 2 FLOPs)."""
    return self.peak_tflops * 1e3 / (self.cores * self.mxus * self.mxu_width**2 * 2)


CHIPS = {
    "v4": Chip("v4", 32.0, 275.0, cores_in_name=True, dims=3, host_chips=4, mxus=4,
               mxu_width=128),
    "v5e": Chip("v5e", 16.0, 197.0, cores_in_name=False, dims=2, host_chips=8, mxus=4,
                mxu_width=128),
    "v5p": Chip("v5p", 95.0, 459.0, cores_in_name=True, dims=3, host_chips=4, mxus=4,
                mxu_width=128),
    # Google's v6e page has said both 2 and 4 MXUs per core; 4 gives a 1.75 GHz clock (2 would
    # give 3.5 GHz), so 4 is taken.
    "v6e": Chip("v6e", 32.0, 918.0, cores_in_name=False, dims=2, host_chips=8, mxus=4,
                mxu_width=256),
}
_SHAPES = {
    2: {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
        256: "16x16"},
    3: {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8"},
}


@dataclasses.dataclass(frozen=True)
class Topology:
  """A slice shape of one chip generation, possibly several slices joined over DCN."""
  name: str
  chip: Chip
  chips_per_slice: int
  num_slices: int

  @property
  def chips(self) -> int:
    return self.chips_per_slice * self.num_slices

  @property
  def chips_per_host(self) -> int:
    """Chips that one host feeds (a slice smaller than a host has just its own)."""
    return min(self.chips_per_slice, self.chip.host_chips)

  @property
  def hosts(self) -> int:
    return self.chips // self.chips_per_host

  @property
  def topology_name(self) -> str:
    """The name `jax.experimental.topologies.get_topology_desc` takes, e.g. "v5e:2x4"."""
    return f"{self.chip.name}:{_SHAPES[self.chip.dims][self.chips_per_slice]}"


def parse(name: str) -> Topology:
  """"v5e-8", "v4-8", "v5p-8", "v6e-8", "v5e-32", or "2xv5e-8" (2 slices); a ValueError else."""
  match = re.fullmatch(r"(?:(\d+)x)?(v4|v5e|v5p|v6e)-(\d+)", name.strip().lower())
  if not match:
    raise ValueError(f"--compile_for={name!r}: give a TPU slice as Cloud names it, e.g. v5e-8, "
                     f"v4-8, v5p-8, v6e-8, v5e-32, or NxNAME for N slices (2xv5e-8); chips: "
                     f"{', '.join(CHIPS)}.")
  slices, chip, count = int(match.group(1) or 1), CHIPS[match.group(2)], int(match.group(3))
  chips = count // 2 if chip.cores_in_name else count
  if chips not in _SHAPES[chip.dims] or (chip.cores_in_name and count % 2):
    sizes = sorted(n * 2 if chip.cores_in_name else n for n in _SHAPES[chip.dims])
    raise ValueError(f"--compile_for={name!r}: no {chip.name} slice of that size here; sizes: "
                     f"{', '.join(f'{chip.name}-{n}' for n in sizes)}.")
  if slices < 1:
    raise ValueError(f"--compile_for={name!r}: the number of slices must be at least 1.")
  return Topology(name=name, chip=chip, chips_per_slice=chips, num_slices=slices)


def devices(topology: Topology) -> list:
  """The compile-only devices of `topology` (needs libtpu: `pip install -e ".[tpu]"`)."""
  # Compile-only use holds no TPU: let several processes (test workers, a training job's
  # compile check beside another) load libtpu instead of failing on its lock file.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  try:
    from jax.experimental import topologies
    desc = topologies.get_topology_desc(platform="tpu", topology_name=topology.topology_name,
                                        num_slices=topology.num_slices)
  except Exception as e:  # pylint: disable=broad-except  # No libtpu: jax raises several types.
    import importlib.util  # pylint: disable=g-import-not-at-top
    detail = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if importlib.util.find_spec("libtpu") is None:
      raise RuntimeError(
          f"Cannot build the TPU topology {topology.name} ({detail}); install the TPU compiler "
          "with `pip install -e \".[tpu]\"` (libtpu for this jax).") from None
    raise RuntimeError(
        f"The TPU compiler (libtpu, installed) cannot build {topology.name} as "
        f"{topology.topology_name} ({detail}); try another slice size, e.g. "
        f"{topology.chip.name}-{8 * (2 if topology.chip.cores_in_name else 1)}.") from None
  return list(desc.devices)
