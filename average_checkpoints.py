"""Average the last N checkpoints of a workdir into WORKDIR/averaged/<step> (the paper: N=5/20).

`python average_checkpoints.py --workdir W --num_last 5`, then
`python translate.py --workdir W --checkpoint averaged`.
"""

import sys

from absl import app, flags

flags.DEFINE_string("workdir", None, "Training workdir.", required=True)
flags.DEFINE_integer("num_last", 5, "How many of the newest checkpoints to average.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  import logging
  logging.getLogger("absl").setLevel(logging.ERROR)  # Orbax's read-only notices.
  logging.getLogger("jax").setLevel(logging.WARNING)  # Backend discovery notices.
  from transformer_jax import checkpoint as checkpoint_lib
  try:
    path, steps = checkpoint_lib.save_averaged(FLAGS.workdir, FLAGS.num_last)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"Averaged checkpoints {steps} into {path}.")


if __name__ == "__main__":
  app.run(main)
