"""Average the last N checkpoints of a workdir into WORKDIR/averaged/<step> (the paper: N=5/20).

`python average_checkpoints.py --workdir W --num_last 5`, then
`python translate.py --workdir W --checkpoint averaged`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import flags

from transformer_jax.cli import common

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """Defines the flags (at run time, so that importing this module defines nothing)."""
  flags.DEFINE_string("workdir", None, "Training workdir.", required=True)
  flags.DEFINE_integer("num_last", 5, "How many of the newest checkpoints to average.")


def _main(argv: list[str]) -> None:
  del argv
  common.setup_logging()
  from transformer_jax import checkpoint_reader  # After the flags: --help answers at once.
  with common.exit_on(FileNotFoundError, ValueError):
    path, steps = checkpoint_reader.save_averaged(FLAGS.workdir, FLAGS.num_last)
  print(f"Averaged checkpoints {steps} into {path}.")


def main(argv: Sequence[str] | None = None) -> None:
  """The `transformer-jax-average-checkpoints` command; `argv` defaults to `sys.argv`."""
  _define_flags()
  common.run(_main, sys.modules[__name__], argv)


if __name__ == "__main__":
  main()
