"""Export a trained model: `python export.py --workdir W --to ctranslate2|huggingface --out DIR`.

Writes DIR, a new directory: a CTranslate2 model (`--quantization int8`, `float16`, ...; serve it
with `translate.py --engine ctranslate2 --model DIR` or `ctranslate2.Translator(DIR)`), or a
Hugging Face MarianMTModel (config.json, model.safetensors, tokenizer files) that transformers
loads. A model option the format cannot express, a corrupt checkpoint or an existing non-empty
DIR is refused in one line, and nothing is written.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import flags

from transformer_jax.cli import common

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """Defines the flags (at run time, so that importing this module defines nothing)."""
  flags.DEFINE_string("workdir", None, "The trained workdir to export.", required=True)
  flags.DEFINE_enum("to", None, ["ctranslate2", "huggingface"], "The format to write.",
                    required=True)
  flags.DEFINE_string("out", None, "The directory to write (new, or empty).", required=True)
  flags.DEFINE_string("checkpoint", "latest", "latest, a step number, average:N, or averaged.")
  flags.DEFINE_string("quantization", "float32", "CTranslate2 weights: int8, int8_float32, "
                      "int8_float16, int8_bfloat16, int16, float16, bfloat16 or float32.")


def _main(argv: list[str]) -> None:
  if len(argv) > 1:
    common.fail(f"unexpected arguments {argv[1:]}.")
  common.setup_logging()
  from transformer_jax import export  # After the flags: --help answers at once.
  with common.exit_on(FileNotFoundError, ValueError):
    record = export.export_workdir(FLAGS.workdir, FLAGS.to, FLAGS.out,
                                   checkpoint=FLAGS.checkpoint, quantization=FLAGS.quantization)
  print(f"Exported the {record['checkpoint']} of {FLAGS.workdir} to {FLAGS.out} ({FLAGS.to}"
        f"{', ' + FLAGS.quantization if FLAGS.to == 'ctranslate2' else ''}).")
  if FLAGS.to == "ctranslate2":
    print(f"Serve it: python translate.py --engine ctranslate2 --model {FLAGS.out} "
          "--beam_convention huggingface --alpha 1.0")
  else:
    print(f"Load it: transformers.MarianMTModel.from_pretrained({FLAGS.out!r})")


def main(argv: Sequence[str] | None = None) -> None:
  """The `transformer-jax-export` command; `argv` defaults to `sys.argv`."""
  _define_flags()
  common.run(_main, sys.modules[__name__], argv)


if __name__ == "__main__":
  main()
