"""Side-by-side benchmark harness: each side lives in its own process, runs are interleaved.

Every side (ours, a peer) is built by a factory in a fresh worker process, so that its peak
resident memory (`ru_maxrss`) is its own and libraries do not share thread pools. A worker is
`python -m benchmarks.harness serve FD`: it imports this module (standard library only), then
the factory's own module, and nothing of the tool that started it; so a PyTorch side's process
holds no jax. The parent asks the workers in turn for a block of timed calls (A B A B ...), so
that noise from other load on the machine falls on all sides alike; medians are reported.

A factory is a module-level function returning a `Runner`: `info` (a dict sent back once, e.g.
parameter count, compile time) and `step()` (one timed call, blocking until its results are
ready). A side may get its own environment variables (`Side(..., env=host_devices_env(2))`: two
XLA CPU devices), set in the worker before the factory's module is imported. A side whose setup
or step fails records its error and drops out (`Side.error`); the others go on.

  python -m benchmarks.harness tcmalloc   # the path of an installed tcmalloc, or nothing
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import math
import multiprocessing as mp
import os
import resource
import statistics
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # The repository.

# Benchmarks run on one CPU device: drop the fake-device flag the tests use.
_FAKE_DEVICES = "--xla_force_host_platform_device_count"


def _flags_without_devices() -> list[str]:
  return [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(_FAKE_DEVICES)]


def one_device_env() -> None:
  """Removes the fake multi-device XLA flag from this process's environment (workers inherit it).

  XLA reads XLA_FLAGS when jax first computes, so this works in a process that imported jax
  and has not computed yet; JAX_PLATFORMS is read when jax is imported (`workload.use_cpu`).
  """
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


def peak_rss_mib() -> float:
  """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclasses.dataclass
class Runner:
  """What a factory returns: `info` once, then `step()` per timed call."""
  info: dict[str, Any]
  step: Callable[[], Any]


def _error(e: Exception) -> str:
  """One line: the exception's type, its message's first and last lines, at most 400 chars."""
  lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [""]
  text = lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"
  return f"{type(e).__name__}: {text}"[:400]


def reference(factory: Callable) -> str:
  """`module:name` of a module-level function, as a worker imports it.

  A tool run as `python -m benchmarks.NAME` is `__main__` in its own process; the worker imports
  it by its real name (its `if __name__ == "__main__"` part does not run there).
  """
  module = factory.__module__
  if module == "__main__":
    spec = sys.modules["__main__"].__spec__
    if spec is None:
      raise ValueError(f"{factory.__qualname__} is in a script run by path; run the tool as "
                       "`python -m benchmarks.NAME` from the repository root.")
    module = spec.name
  return f"{module}:{factory.__qualname__}"


def _build(conn: Connection) -> Runner | None:
  """Receives the environment, then the factory and its arguments; runs it (None: it failed)."""
  os.environ.update(conn.recv())  # Before the factory's module (and its libraries) is imported.
  rss_before = peak_rss_mib()
  try:
    factory_ref, kwargs = conn.recv()
    module, name = factory_ref.split(":")
    runner = getattr(importlib.import_module(module), name)(**kwargs)
  except Exception as e:  # Report, do not hang the parent.
    conn.send({"error": _error(e)})
    return None
  conn.send({"info": runner.info, "rss_import_mib": rss_before, "rss_mib": peak_rss_mib()})
  return runner


def _serve(conn: Connection) -> None:
  """A worker's life: build the side, then run blocks of timed calls until told to stop."""
  runner = _build(conn)
  while runner is not None:
    try:
      n = conn.recv()
    except EOFError:  # The parent is gone.
      break
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

  def __init__(self, name: str, factory: Callable, *, env: dict[str, str] | None = None,
               **kwargs):
    """Starts the worker and builds the side; raises RuntimeError when its factory fails.

    Args:
      name: The side's name in tables.
      factory: A module-level function `(**kwargs) -> Runner`, run in the worker.
      env: Environment variables of the worker, set before the factory's module is imported.
      **kwargs: The factory's arguments (picklable).
    """
    self.name = name
    self.error: str | None = None
    self._conn, child = mp.Pipe()
    self._proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.harness", "serve", str(child.fileno())],
        pass_fds=(child.fileno(),), cwd=ROOT)
    child.close()
    try:
      self._conn.send(env or {})
      self._conn.send((reference(factory), kwargs))
      reply = self._conn.recv()
    except (EOFError, BrokenPipeError, OSError):  # The worker died (e.g. killed for memory).
      reply = {"error": f"worker exited with code {self._proc.wait(timeout=5)}"}
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
    """Stops the worker (killed when it does not exit within 30 s)."""
    try:
      self._conn.send(None)
    except (BrokenPipeError, OSError):
      pass
    self._conn.close()
    try:
      self._proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
      self._proc.kill()
      self._proc.wait()


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
                    quick_per_round: int, threads_help: str, shapes_help: str,
                    shapes_default: str) -> None:
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
  """Applies --quick and --malloc, and refuses unknown --shapes."""
  if args.quick:
    args.shapes, args.warmup, args.rounds, args.per_round = "small", 1, 2, args._quick_per_round
  try:  # The workers inherit it from this process's environment.
    os.environ.update(malloc_env(args.malloc))
  except ValueError as e:
    p.error(str(e))
  for name in args.shapes.split(","):
    if name not in shapes:
      p.error(f"--shapes: unknown shape {name!r}; choose among {', '.join(shapes)}.")


def main(argv=None) -> None:
  """Runs the command (see the module docstring)."""
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  commands = p.add_subparsers(dest="command", required=True)
  commands.add_parser("tcmalloc", help="Print the path of an installed tcmalloc library "
                      "(nothing when none is installed).")
  serve = commands.add_parser("serve", help="Run one side (started by `Side`, not by hand).")
  serve.add_argument("fd", type=int, help="The connection's file descriptor.")
  args = p.parse_args(argv)
  if args.command == "tcmalloc":
    print(find_tcmalloc() or "")
  else:
    _serve(Connection(args.fd))


if __name__ == "__main__":
  main()
