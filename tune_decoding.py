"""Choose decoding settings on a development set: `python tune_decoding.py --workdir W ...`.

The `transformer-jax-tune-decoding` command, run from a checkout; its flags and behaviour are
documented in transformer_jax/cli/tune_decoding.py (and by `--help`).
"""

from transformer_jax.cli import tune_decoding

if __name__ == "__main__":
  tune_decoding.main()
