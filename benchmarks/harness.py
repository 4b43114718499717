"""Side-by-side benchmark harness: each side lives in its own process, runs are interleaved.

Every side (ours, a peer) is built by a factory in a fresh `spawn`ed worker process, so that its
peak resident memory (`ru_maxrss`) is its own, and libraries do not share thread pools. The parent
asks the workers in turn for a block of timed calls (A B A B ...), so that noise from other load on
the machine falls on all sides alike; medians are reported.

A factory returns a `Runner`: `info` (a dict sent back once, e.g. parameter count, compile time)
and `step()` (one timed call, blocking until its results are ready). A side may get its own
environment variables (`Side(..., env=host_devices_env(2))`: two XLA CPU devices), set in the
worker before its factory runs, so before it initializes jax. A side whose setup or step fails
records its error and drops out (`Side.error`); the others go on.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import multiprocessing as mp
import os
import resource
import statistics
import time
from typing import Any, Callable

# Benchmarks run on one CPU device: drop the fake-device flag the tests use.
_FAKE_DEVICES = "--xla_force_host_platform_device_count"


def _flags_without_devices() -> list[str]:
  return [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(_FAKE_DEVICES)]


def one_device_env() -> None:
  """Removes the fake multi-device XLA flag from this process's environment (before spawning)."""
  os.environ["XLA_FLAGS"] = " ".join(_flags_without_devices())
  os.environ.setdefault("JAX_PLATFORMS", "cpu")


def host_devices_env(n: int) -> dict[str, str]:
  """The environment of a side that runs the CPU as `n` XLA devices (as train.py's recipe)."""
  return {"XLA_FLAGS": " ".join(_flags_without_devices() + [f"{_FAKE_DEVICES}={n}"]),
          "JAX_PLATFORMS": "cpu"}


# gperftools' tcmalloc keeps freed memory mapped. With glibc's malloc, XLA:CPU's per-execution
# temporary buffer (265 MB per device at the recipe, above glibc's 32 MB mmap ceiling) is mapped
# and unmapped every step, and each of its pages faulted back in: ~135,000 page faults and ~0.3 s
# of kernel time per recipe step. PyTorch's CPU guide recommends the same preload.
TCMALLOC_LIBRARIES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
_LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64",
                 "/usr/lib", "/usr/local/lib")


def find_tcmalloc(dirs: tuple[str, ...] = _LIBRARY_DIRS) -> str | None:
  """The path of an installed tcmalloc shared library, or None."""
  for directory in dirs:
    for name in TCMALLOC_LIBRARIES:
      path = os.path.join(directory, name)
      if os.path.isfile(path):
        return path
  return None


def malloc_env(malloc: str, tcmalloc_path: str | None = None) -> dict[str, str]:
  """Environment for processes started with `malloc` ("system" or "tcmalloc") as allocator."""
  if malloc == "system":
    return {}
  if malloc != "tcmalloc":
    raise ValueError(f"--malloc {malloc!r}: use system or tcmalloc.")
  path = tcmalloc_path or find_tcmalloc()
  if path is None:
    raise ValueError("--malloc tcmalloc: no tcmalloc library found; install it "
                     "(Debian/Ubuntu: apt install libtcmalloc-minimal4) or use --malloc system.")
  preload = os.environ.get("LD_PRELOAD", "")
  return {"LD_PRELOAD": f"{path}:{preload}" if preload else path}


def apply_env(env: dict[str, str] | None) -> None:
  """Sets `env` in this process's environment (a worker's, before anything imports jax)."""
  os.environ.update(env or {})


def peak_rss_mib() -> float:
  """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclasses.dataclass
class Runner:
  """What a factory returns: `info` once, then `step()` per timed call."""
  info: dict[str, Any]
  step: Callable[[], None]


def _error(e: Exception) -> str:
  """One line: the exception's type, its message's first and last lines, at most 400 chars."""
  lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [""]
  text = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
  return f"{type(e).__name__}: {text}"[:400]


def _serve(conn, factory, kwargs, env):
  apply_env(env)
  rss_before = peak_rss_mib()
  try:
    runner = factory(**kwargs)
  except Exception as e:  # Report, do not hang the parent.
    conn.send({"error": _error(e)})
    return
  conn.send({"info": runner.info, "rss_import_mib": rss_before, "rss_mib": peak_rss_mib()})
  while True:
    n = conn.recv()
    if n is None:
      break
    times = []
    try:
      for _ in range(n):
        start = time.perf_counter()
        runner.step()
        times.append(time.perf_counter() - start)
    except Exception as e:  # Report, do not hang the parent.
      conn.send({"error": _error(e)})
      break
    conn.send({"times": times, "rss_mib": peak_rss_mib()})
  conn.close()


class Side:
  """One benchmark side in a worker process."""

  def __init__(self, name: str, factory, *, env: dict[str, str] | None = None, **kwargs):
    """Starts the worker and builds the side; raises RuntimeError when its factory fails.

    Args:
      name: The side's name in tables.
      factory: A module-level function `(**kwargs) -> Runner`, run in the worker.
      env: Environment variables of the worker, set before `factory` runs.
      **kwargs: The factory's arguments (picklable).
    """
    ctx = mp.get_context("spawn")
    self.name = name
    self.error: str | None = None
    self._conn, child = ctx.Pipe()
    self._proc = ctx.Process(target=_serve, args=(child, factory, kwargs, env), daemon=True)
    self._proc.start()
    try:
      reply = self._conn.recv()
    except EOFError:  # The worker died (e.g. killed for memory).
      self._proc.join(timeout=5)
      reply = {"error": f"worker exited with code {self._proc.exitcode}"}
    if "error" in reply:
      self.close()
      raise RuntimeError(f"{name}: setup failed: {reply['error']}")
    self.info = reply["info"]
    self.rss_import_mib = reply["rss_import_mib"]
    self.rss_mib = reply["rss_mib"]
    self.times: list[float] = []

  def run(self, n: int, record: bool = True) -> None:
    """Runs `n` timed calls; keeps their times unless `record` is False (warmup).

    A failing call sets `error` (the side then drops out of `interleave`) instead of raising.
    """
    try:
      self._conn.send(n)
      reply = self._conn.recv()
    except (EOFError, BrokenPipeError, OSError) as e:
      reply = {"error": f"worker lost: {type(e).__name__}"}
    if "error" in reply:
      self.error = reply["error"]
      return
    self.rss_mib = reply["rss_mib"]
    if record:
      self.times.extend(reply["times"])

  @property
  def median(self) -> float:
    """Median timed call in seconds (NaN when none was recorded)."""
    return statistics.median(self.times) if self.times else math.nan

  def close(self) -> None:
    try:
      self._conn.send(None)
    except (BrokenPipeError, OSError):
      pass
    self._proc.join(timeout=30)
    if self._proc.is_alive():
      self._proc.kill()


def interleave(sides: list[Side], *, warmup: int, rounds: int, per_round: int) -> None:
  """Warms every side up, then runs `rounds` rounds of `per_round` calls, side after side."""
  for side in sides:
    if side.error is None:
      side.run(warmup, record=False)
  for r in range(rounds):
    order = sides if r % 2 == 0 else sides[::-1]  # ABBA: neither side always goes first.
    for side in order:
      if side.error is None:
        side.run(per_round)


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
  """A GitHub markdown table."""
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def add_timing_args(p: argparse.ArgumentParser, *, unit: str, warmup: int, per_round: int,
                    quick_per_round: int, threads_help: str,
                    shapes_help: str = "Comma-separated: base, small.",
                    shapes_default: str = "base,small") -> None:
  """The options every side-by-side benchmark shares (shapes, vocabulary, timing, threads)."""
  p.add_argument("--shapes", default=shapes_default, help=shapes_help)
  p.add_argument("--vocab_size", type=int, default=8000)
  p.add_argument("--warmup", type=int, default=warmup, help=f"Untimed {unit}s per side.")
  p.add_argument("--rounds", type=int, default=5, help="Interleaved rounds.")
  p.add_argument("--per_round", type=int, default=per_round,
                 help=f"Timed {unit}s per side per round.")
  p.add_argument("--threads", type=int, default=os.cpu_count(), help=threads_help)
  p.add_argument("--malloc", default="system", choices=("system", "tcmalloc"),
                 help="Allocator of every side's process: glibc's, or tcmalloc preloaded "
                 "(LD_PRELOAD) for all sides alike.")
  p.add_argument("--quick", action="store_true",
                 help=f"Small shapes only, 2 rounds of {quick_per_round} {unit}(s).")
  p.set_defaults(_quick_per_round=quick_per_round)


def finish_timing_args(p: argparse.ArgumentParser, args, shapes) -> None:
  """Applies --quick and refuses unknown --shapes."""
  if args.quick:
    args.shapes, args.warmup, args.rounds, args.per_round = "small", 1, 2, args._quick_per_round
  try:  # Workers are spawned, so they inherit it from this process's environment.
    os.environ.update(malloc_env(args.malloc))
  except ValueError as e:
    p.error(str(e))
  for name in args.shapes.split(","):
    if name not in shapes:
      p.error(f"--shapes: unknown shape {name!r}; choose among {sorted(shapes)}.")
