"""Compiled decoding programs kept on disk whole, so that a later process skips tracing too.

JAX's persistent compilation cache (`jit_cache`) saves the compile, but finding an entry needs
the program traced and lowered first: ~0.6 s of Python for a beam search, a quarter of a short
`translate.py` call. This cache stores the compiled executable itself
(`jax.experimental.serialize_executable`) under a key computed without tracing, from everything
the program depends on: this package's source files, the jax / jaxlib / flax / numpy versions,
the backend, device kind and CPU features, `XLA_FLAGS`, JAX's configuration, and the call's
static arguments, argument shapes, dtypes and shardings. A change to any of them is a miss.

A program is stored only after its stored form has run the call that compiled it, and a stored
program that fails to load or run is deleted and the call runs through `jax.jit` instead, so a
bad entry costs time, never a translation. (An executable that JAX's own persistent cache
loaded cannot be serialized again on CPU: its stored form fails with "Function ... not found",
caught by that first run.) Entries are pickles, as trusted as this package's own files; the
directory is kept under `MAX_BYTES`, least recently used first out.

Off unless `enable()` is called (translate.py and tune_decoding.py do): library users get plain
`jax.jit` behaviour.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import os
import pickle
import platform
import sys
from typing import Any, Callable

import jax
from jax.experimental import serialize_executable

from transformer_jax import jit_cache

MAX_BYTES = 1 << 30
ENV_DIR = "TRANSFORMER_JAX_EXECUTABLE_CACHE"
_FORMAT = "transformer_jax executable cache 1"
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

_dir: str | None = None
_loaded: dict[str, Any] = {}  # key -> a loaded executable, for calls in this process.
stats: collections.Counter = collections.Counter()  # compiled, stored, unstorable, loaded, dropped.


def default_dir() -> str:
  """`$TRANSFORMER_JAX_EXECUTABLE_CACHE`, else `$XDG_CACHE_HOME/transformer_jax/executables`."""
  if os.environ.get(ENV_DIR):
    return os.environ[ENV_DIR]
  return os.path.join(os.path.dirname(jit_cache.default_dir()), "executables")  # Its sibling.


def enable(path: str | None = None) -> str:
  """Turns the cache on in `path` (default `default_dir()`); returns it, or "" if unwritable."""
  global _dir
  path = path or default_dir()
  try:
    os.makedirs(path, exist_ok=True)
  except OSError:
    return ""  # A read-only home: run without the cache rather than fail.
  _dir = path
  _loaded.clear()
  return path


def enabled_dir() -> str | None:
  """Where programs are stored now, or None when the cache is off."""
  return _dir


def disable() -> None:
  global _dir
  _dir = None
  _loaded.clear()


def call(jitted: Callable, args: tuple, static: dict[str, Any]) -> Any:
  """`jitted(*args, **static)`, through a stored executable when the cache is on."""
  if _dir is None:
    return jitted(*args, **static)
  key = program_key(jitted, args, static)
  path = os.path.join(_dir, key + ".pkl")
  executable = _loaded.get(key) or _load(path)
  if executable is not None:
    try:
      out = jax.block_until_ready(executable(*args))
    except Exception:  # A stale or broken entry: drop it and compile as usual.
      _drop(key, path)
      return jitted(*args, **static)
    _loaded[key] = executable
    return out
  return _compile_and_store(jitted, args, static, key, path)


def program_key(jitted: Callable, args: tuple, static: dict[str, Any]) -> str:
  """A hex digest of everything the compiled program of `jitted(*args, **static)` depends on."""
  h = hashlib.sha256()
  name = f"{getattr(jitted, '__module__', '')}.{getattr(jitted, '__qualname__', repr(jitted))}"
  for part in (_FORMAT, _environment(), name, repr(sorted(static.items())), _signature(args)):
    h.update(part.encode())
    h.update(b"\0")
  return h.hexdigest()


def _signature(args: tuple) -> str:
  """The tree structure and, per leaf, type, dtype, shape, weak type and sharding."""
  leaves, treedef = jax.tree.flatten(args)
  parts = [str(treedef)]
  for x in leaves:
    sharding = getattr(x, "sharding", None) if isinstance(x, jax.Array) else None
    parts.append(f"{type(x).__name__}:{jax.typeof(x)}:{sharding}")
  return "|".join(parts)


@functools.lru_cache(maxsize=None)
def _environment() -> str:
  """What every program depends on in this process (computed once)."""
  import flax
  import jaxlib
  import numpy as np
  device = jax.devices()[0]
  parts = [jax.__version__, jaxlib.__version__, flax.__version__, np.__version__, sys.version,
           device.platform, device.device_kind, device.client.platform_version,
           str(jax.device_count()), os.environ.get("XLA_FLAGS", ""), _cpu_features(),
           _source_digest()]
  config = {k: v for k, v in jax.config.values.items()
            if v is None or isinstance(v, (bool, int, float, str))}
  parts.append(repr(sorted(config.items())))
  return "\n".join(parts)


def _cpu_features() -> str:
  """The host CPU's model and instruction set extensions (XLA:CPU compiles for them)."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      lines = [line for line in f if line.startswith(("flags", "model name"))]
    return "".join(sorted(set(lines)))
  except OSError:
    return f"{platform.machine()} {platform.processor()}"


def _source_digest() -> str:
  """A digest of every Python source file of this package."""
  h = hashlib.sha256()
  for root, dirs, files in os.walk(_PACKAGE_DIR):
    dirs.sort()
    for name in sorted(files):
      if name.endswith(".py"):
        path = os.path.join(root, name)
        h.update(os.path.relpath(path, _PACKAGE_DIR).encode())
        with open(path, "rb") as f:
          h.update(f.read())
  return h.hexdigest()


def _load(path: str) -> Any | None:
  """The executable stored at `path`, or None (missing or unreadable: then it is deleted)."""
  try:
    with open(path, "rb") as f:
      executable = _deserialize(pickle.load(f))
  except FileNotFoundError:
    return None
  except Exception:  # Truncated, from another machine, or otherwise unusable.
    _drop(None, path)
    return None
  stats["loaded"] += 1
  try:
    os.utime(path)  # Recently used: evicted last.
  except OSError:
    pass
  return executable


def _deserialize(entry: dict) -> Any:
  """A loaded executable from a stored entry, on the devices it was compiled for."""
  devices = {d.id: d for d in jax.devices()}
  return serialize_executable.deserialize_and_load(
      entry["payload"], entry["in_tree"], entry["out_tree"],
      execution_devices=[devices[i] for i in entry["device_ids"]])


def _compile_and_store(jitted: Callable, args: tuple, static: dict[str, Any], key: str,
                       path: str) -> Any:
  """Compiles, runs the call through the stored form (checking it), and stores it."""
  compiled = jitted.lower(*args, **static).compile()
  stats["compiled"] += 1
  try:
    device_ids = sorted({d.id for s in jax.tree.leaves(compiled.input_shardings)
                         for d in s.device_set})
    if len(device_ids) != 1:
      raise ValueError("only single-device programs are stored")
    payload, in_tree, out_tree = serialize_executable.serialize(compiled)
    entry = {"payload": payload, "in_tree": in_tree, "out_tree": out_tree,
             "device_ids": device_ids}
    executable = _deserialize(entry)
    out = jax.block_until_ready(executable(*args))
  except Exception:  # Not storable: this call runs as compiled, nothing is stored.
    stats["unstorable"] += 1
    return compiled(*args)
  _loaded[key] = executable
  _write(path, pickle.dumps(entry, protocol=pickle.HIGHEST_PROTOCOL))
  return out


def _write(path: str, data: bytes) -> None:
  """Writes `data` atomically and evicts old entries; a full or read-only disk skips it."""
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with open(tmp, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
    stats["stored"] += 1
    _evict(os.path.dirname(path))
  except OSError:
    try:
      os.remove(tmp)
    except OSError:
      pass


def _evict(directory: str) -> None:
  """Deletes the least recently used entries while the directory holds over `MAX_BYTES`."""
  entries = []
  for name in os.listdir(directory):
    if name.endswith(".pkl"):
      st = os.stat(os.path.join(directory, name))
      entries.append((st.st_mtime, st.st_size, name))
  total = sum(size for _, size, _ in entries)
  for _, size, name in sorted(entries):
    if total <= MAX_BYTES:
      break
    os.remove(os.path.join(directory, name))
    total -= size


def _drop(key: str | None, path: str) -> None:
  stats["dropped"] += 1
  _loaded.pop(key, None)
  try:
    os.remove(path)
  except OSError:
    pass
