"""Import an OPUS-MT (Marian) model: `python import_marian.py --model ID_OR_DIR --workdir OUT`.

Reads a Marian checkpoint directory as Hugging Face saves it (config.json, model.safetensors or
pytorch_model.bin, source.spm, target.spm, vocab.json), or downloads a hub id such as
Helsinki-NLP/opus-mt-en-de where the machine is online, and writes OUT, a workdir that
translate.py, tune_decoding.py and train.py (`--config configs/opus_mt.py:OUT`) use as they use a
trained one. A Marian variant these modules cannot express is refused, naming its config field.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import flags

from transformer_jax.cli import common

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """Defines the flags (at run time, so that importing this module defines nothing)."""
  flags.DEFINE_string("model", None, "A Marian model directory, or a Hugging Face hub id "
                      "(e.g. Helsinki-NLP/opus-mt-en-de).", required=True)
  flags.DEFINE_string("workdir", None, "The new workdir to write.", required=True)


def _main(argv: list[str]) -> None:
  if len(argv) > 1:
    common.fail(f"unexpected arguments {argv[1:]}.")
  common.setup_logging()
  from transformer_jax import marian  # After the flags: --help answers at once.
  with common.exit_on(FileNotFoundError, ValueError):
    record = marian.import_marian(FLAGS.model, FLAGS.workdir)
  model, decoding = record["experiment"]["model"], record["decoding"]
  print(f"Imported {FLAGS.model} into {FLAGS.workdir}: {model['num_encoder_layers']}+"
        f"{model['num_decoder_layers']} layers, d_model {model['d_model']}, "
        f"{model['activation']}.")
  print(f"Translate as transformers does: python translate.py --workdir {FLAGS.workdir} "
        f"--beam_convention huggingface --beam_size {decoding['beam_size']} "
        f"--alpha {decoding['alpha']}")
  print(f"Fine-tune: python train.py --config configs/opus_mt.py:{FLAGS.workdir} --workdir "
        f"{FLAGS.workdir} --config.data.data_dir=DIR")


def main(argv: Sequence[str] | None = None) -> None:
  """The `transformer-jax-import-marian` command; `argv` defaults to `sys.argv`."""
  _define_flags()
  common.run(_main, sys.modules[__name__], argv)


if __name__ == "__main__":
  main()
