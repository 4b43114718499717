"""The embedded offline demo: a small model learns to spell dates as words, on 2 CPU cores.

The default config of `python train.py`. Its settings are defined in
transformer_jax/cli/demo_config.py, inside the package, so that an installed
`transformer-jax-train` runs the same demo without this repository.
"""

from transformer_jax.cli.demo_config import get_config

__all__ = ["get_config"]
