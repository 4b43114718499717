"""The command line tools, one module per command, each with a `main()` console entry point.

`train` (transformer-jax-train), `translate` (transformer-jax-translate), `tune_decoding`
(transformer-jax-tune-decoding), `average_checkpoints` (transformer-jax-average-checkpoints) and
`import_marian` (transformer-jax-import-marian); the repository's `train.py` etc. call the same
mains. `common` holds what they share: logging set-up and one-line `error: ...` exits.
"""
