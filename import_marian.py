"""Import an OPUS-MT (Marian) model: `python import_marian.py --model ID_OR_DIR --workdir OUT`.

The `transformer-jax-import-marian` command, run from a checkout; its flags and behaviour are
documented in transformer_jax/cli/import_marian.py (and by `--help`).
"""

from transformer_jax.cli import import_marian

if __name__ == "__main__":
  import_marian.main()
