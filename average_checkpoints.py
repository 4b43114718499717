"""Average the last N checkpoints of a workdir: `python average_checkpoints.py --workdir W`.

The `transformer-jax-average-checkpoints` command, run from a checkout; its flags and behaviour are
documented in transformer_jax/cli/average_checkpoints.py (and by `--help`).
"""

from transformer_jax.cli import average_checkpoints

if __name__ == "__main__":
  average_checkpoints.main()
