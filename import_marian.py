"""Import an OPUS-MT (Marian) model: `python import_marian.py --model ID_OR_DIR --workdir OUT`.

Reads a Marian checkpoint directory as Hugging Face saves it (config.json, model.safetensors or
pytorch_model.bin, source.spm, target.spm, vocab.json), or downloads a hub id such as
Helsinki-NLP/opus-mt-en-de where the machine is online, and writes OUT, a workdir that
translate.py, tune_decoding.py and train.py (`--config configs/opus_mt.py:OUT`) use as they use a
trained one. A Marian variant these modules cannot express is refused, naming its config field.
"""

import sys

from absl import app, flags

flags.DEFINE_string("model", None, "A Marian model directory, or a Hugging Face hub id "
                    "(e.g. Helsinki-NLP/opus-mt-en-de).", required=True)
flags.DEFINE_string("workdir", None, "The new workdir to write.", required=True)
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    print(f"error: unexpected arguments {argv[1:]}.", file=sys.stderr)
    sys.exit(2)
  import logging
  logging.getLogger("absl").setLevel(logging.ERROR)  # Orbax's notices.
  from transformer_jax import marian
  try:
    record = marian.import_marian(FLAGS.model, FLAGS.workdir)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  model, decoding = record["experiment"]["model"], record["decoding"]
  print(f"Imported {FLAGS.model} into {FLAGS.workdir}: {model['num_encoder_layers']}+"
        f"{model['num_decoder_layers']} layers, d_model {model['d_model']}, "
        f"{model['activation']}.")
  print(f"Translate as transformers does: python translate.py --workdir {FLAGS.workdir} "
        f"--beam_convention huggingface --beam_size {decoding['beam_size']} "
        f"--alpha {decoding['alpha']}")
  print(f"Fine-tune: python train.py --config configs/opus_mt.py:{FLAGS.workdir} --workdir "
        f"{FLAGS.workdir} --config.data.data_dir=DIR")


if __name__ == "__main__":
  app.run(main)
