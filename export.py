"""Export a trained model: `python export.py --workdir W --to ctranslate2|huggingface --out DIR`.

The `transformer-jax-export` command, run from a checkout; its flags and behaviour are
documented in transformer_jax/cli/export.py (and by `--help`).
"""

from transformer_jax.cli import export

if __name__ == "__main__":
  export.main()
