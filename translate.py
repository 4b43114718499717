"""Translate with a trained workdir: `python translate.py --workdir W [--input F] [--reference R]`.

The `transformer-jax-translate` command, run from a checkout; its flags and behaviour are
documented in transformer_jax/cli/translate.py (and by `--help`).
"""

from transformer_jax.cli import translate

if __name__ == "__main__":
  translate.main()
