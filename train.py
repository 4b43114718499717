"""Train a Transformer: `python train.py [--config configs/NAME.py] [--workdir DIR] [--config.K=V]`.

The `transformer-jax-train` command, run from a checkout; its flags and behaviour are
documented in transformer_jax/cli/train.py (and by `--help`).
"""

from transformer_jax.cli import train

if __name__ == "__main__":
  train.main()
