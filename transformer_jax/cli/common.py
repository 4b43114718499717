"""What every command line tool shares: absl start-up, quiet logging and one-line errors.

A failure is one line on stderr, `error: <message>`, and an exit code: `USAGE_ERROR` (2) when the
command was refused before doing anything (a bad flag, config, input file or workdir),
`RUNTIME_ERROR` (1) when a run that had started failed (a non-finite loss, a failed save).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import logging
import math
import os
import pkgutil
import sys
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import NoReturn

from absl import app, flags

USAGE_ERROR = 2
RUNTIME_ERROR = 1


def fail(message: str, code: int = USAGE_ERROR) -> NoReturn:
  """Prints `error: message` on stderr and exits with `code`.

  Args:
    message: what went wrong and, where it helps, what to do instead.
    code: the exit status, `USAGE_ERROR` or `RUNTIME_ERROR`.

  Raises:
    SystemExit: always.
  """
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


@contextlib.contextmanager
def exit_on(*errors: type[BaseException], code: int = USAGE_ERROR) -> Iterator[None]:
  """A block whose `errors` end the command through `fail(str(error), code)`.

  For the errors a command expects of its inputs (a missing file, a bad value), whose messages
  are written for the user: a traceback would only bury them.

  Args:
    *errors: the exception types to report.
    code: the exit status for them.

  Yields:
    Nothing.
  """
  try:
    yield
  except errors as e:
    fail(str(e), code)


def check_outputs(outputs: Mapping[str, str | None], inputs: Mapping[str, str | None],
                  workdir: str | None = None) -> None:
  """Raises ValueError if an output path would overwrite an input or a file a workdir owns.

  Args:
    outputs: {flag: path} of what the command will write ("-" or None: stdout or unset).
    inputs: {flag: path} of what it reads ("-" or None: stdin or unset).
    workdir: The workdir the command reads, whose training files no output may replace.
  """
  from transformer_jax import workdir_layout  # pylint: disable=g-import-not-at-top
  def same(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
      return True
    try:
      return os.path.samefile(a, b)  # Hard links, bind mounts.
    except OSError:
      return False
  given = lambda m: {flag: path for flag, path in m.items() if path and path != "-"}
  outs = given(outputs)
  for out_flag, out in outs.items():
    for in_flag, source in given(inputs).items():
      if same(out, source):
        raise ValueError(f"{out_flag} {out} is the file {in_flag} reads: writing it would "
                         "destroy the input. Write to another path.")
    if workdir and (entry := workdir_layout.owned_entry(workdir, out)):
      raise ValueError(f"{out_flag} {out} would overwrite the workdir's {entry}, which training "
                       "owns. Write to another path.")
  names = list(outs.items())
  for i, (flag_a, a) in enumerate(names):
    for flag_b, b in names[i + 1:]:
      if same(a, b):
        raise ValueError(f"{flag_a} and {flag_b} name the same file {a}; give two paths.")


def check_alpha(alpha: float, flag: str = "--alpha") -> float:
  """A length penalty exponent that decoding can use: finite and >= 0 (0 = no penalty)."""
  if not (math.isfinite(alpha) and alpha >= 0):
    raise ValueError(f"{flag} {alpha}: give a finite length penalty >= 0 (0 = none; the paper "
                     "uses 0.6, Marian and fairseq 1.0).")
  return alpha


def setup_logging(*, training: bool = False) -> None:
  """Sets the log levels of a command: progress for training, only problems otherwise.

  Args:
    training: show INFO (the training loop's progress reports) rather than warnings only.
  """
  if training:
    logging.getLogger().setLevel(logging.INFO)
    # Orbax logs through absl: its per-save chatter, and tracebacks of failed saves that surface
    # as one CheckpointSaveError line.
    logging.getLogger("absl").setLevel(logging.CRITICAL)
  else:
    logging.getLogger("absl").setLevel(logging.ERROR)  # Orbax's read-only notices.
    logging.getLogger("jax").setLevel(logging.WARNING)  # Backend discovery notices.


def skip_absent_tpu() -> None:
  """Leaves JAX's TPU backend out where this machine has no TPU chip.

  With libtpu installed (the `tpu` and `test` extras), JAX's start-up asks libtpu for a TPU,
  and on a machine without one libtpu prints errors ("Failed to find host bounds", "unexpected
  worker hostname", a source-location trace) before JAX carries on with its other backends.
  Where JAX's own PCI scan finds no TPU chip, `JAX_PLATFORMS` is set to the other installed
  backends (CUDA / ROCm plugins, and the CPU). Nothing changes when the user set
  `JAX_PLATFORMS`, when libtpu is absent, or when an unknown JAX plugin is installed.
  `--compile_for` does not need the TPU backend: it builds compile-only TPU devices.
  """
  if "JAX_PLATFORMS" in os.environ or importlib.util.find_spec("libtpu") is None:
    return
  try:
    from jax._src import hardware_utils  # pylint: disable=g-import-not-at-top
    chips, _ = hardware_utils.num_available_tpu_chips_and_device_id()
  except Exception:  # pylint: disable=broad-except  # A private helper: if it moved, do nothing.
    return
  if chips:
    return
  plugins = {ep.name for ep in importlib.metadata.entry_points(group="jax_plugins")}
  try:
    import jax_plugins  # pylint: disable=g-import-not-at-top
    plugins |= {m.name for m in pkgutil.iter_modules(jax_plugins.__path__)}
  except ImportError:
    pass
  backends = {p: "cuda" if "cuda" in p else "rocm" if "rocm" in p else None for p in plugins}
  if any(b is None for b in backends.values()):
    return  # A backend we do not know: do not guess its platform name.
  platforms = ",".join([*sorted(set(backends.values())), "cpu"])
  os.environ["JAX_PLATFORMS"] = platforms  # For child processes.
  import jax  # pylint: disable=g-import-not-at-top  # Imported above; no backend started yet.
  jax.config.update("jax_platforms", platforms)


def run(main: Callable[[list[str]], None], command: types.ModuleType,
        argv: Sequence[str] | None = None,
        flags_parser: Callable[[list[str]], list[str]] = app.parse_flags_with_usage) -> None:
  """Runs `main` under absl's `app.run` (which exits) as the command defined in `command`.

  absl's `--help` prints the `__main__` module's docstring and the flags that module defines.
  A command runs as a repository script (`python train.py`), a console script or `python -m`,
  and its flags are defined in `command` in each case: both are taken from `command`, so that
  the help reads the same however it was started.

  Args:
    main: the command's main, called with the arguments left after flag parsing.
    command: the module that defines the command's flags and documents it.
    argv: the command line, `sys.argv` by default.
    flags_parser: parses the flags of `argv` and returns the other arguments.
  """
  sys.modules["__main__"].__doc__ = command.__doc__
  for flag in flags.FLAGS.get_key_flags_for_module(command):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  def main_without_tpu_probe(args: list[str]) -> None:
    skip_absent_tpu()  # After the flags (--help stays quick), before JAX starts a backend.
    main(args)
  app.run(main_without_tpu_probe, argv=None if argv is None else list(argv),
          flags_parser=flags_parser)
