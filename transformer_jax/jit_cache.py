"""JAX's persistent compilation cache for the command-line tools.

Compiling the train step or the beam search takes seconds; with the cache, a second
`translate.py` call or a resumed `train.py` loads the compiled programs from disk instead. The
cache lives in `$XDG_CACHE_HOME/transformer_jax/xla` (`~/.cache/...`), or wherever
`JAX_COMPILATION_CACHE_DIR` points. JAX keys every entry on the program, the jax/jaxlib versions,
the backend and the compile options, so entries from other versions or devices are never used.
"""

from __future__ import annotations

import os

import jax

# Programs that compile faster than this are not worth a disk round trip.
MIN_COMPILE_SECONDS = 0.5


def default_dir() -> str:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "transformer_jax", "xla")


def enable() -> str:
  """Turns the cache on (unless JAX_COMPILATION_CACHE_DIR already chose a place); returns it."""
  chosen = os.environ.get("JAX_COMPILATION_CACHE_DIR")
  if chosen:
    return chosen  # JAX reads the variable itself.
  path = default_dir()
  try:
    os.makedirs(path, exist_ok=True)
  except OSError:
    return ""  # A read-only home: run without the cache rather than fail.
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  return path
