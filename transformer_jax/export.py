"""Export a workdir's model for serving elsewhere: CTranslate2, or a Hugging Face MarianMTModel.

`export_workdir` reads one checkpoint (as translate.py does), checks that the target format can
express the model exactly, and builds the export in a staging directory beside `out`, moved into
place at the end: a refused or failed export writes nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from transformer_jax import inference

FORMATS = ("ctranslate2", "huggingface")


def check_out(out: str, workdir: str) -> None:
  """A ValueError if `out` exists with something in it, or lies in the workdir's own files."""
  from transformer_jax import workdir_layout  # pylint: disable=import-outside-toplevel
  if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
    raise ValueError(f"--out {out} already exists and is not an empty directory; give a new "
                     "directory (nothing was written).")
  if entry := workdir_layout.owned_entry(workdir, out):
    raise ValueError(f"--out {out} lies in the workdir's {entry}, which training owns; give a "
                     "directory outside it.")
  parent = os.path.dirname(os.path.abspath(out))
  if not os.path.isdir(parent):
    raise ValueError(f"--out {out}: directory {parent} does not exist; create it first.")


def export_workdir(workdir: str, to: str, out: str, *, checkpoint: str = "latest",
                   quantization: str = "float32") -> dict[str, Any]:
  """Exports `workdir`'s `checkpoint` to `out` in format `to`; returns what was exported.

  Raises:
    ValueError: `out` not new, a model option the format cannot express, an unreadable
      checkpoint, an unknown format or quantization (nothing is written then).
    FileNotFoundError: no such workdir, tokenizer or checkpoint.
  """
  if to not in FORMATS:
    raise ValueError(f"--to {to!r}: use one of {', '.join(FORMATS)}.")
  check_out(out, workdir)
  tokenizer = inference.load_tokenizer(workdir)
  params, config_dict, what = inference.load_params(workdir, checkpoint)
  model = inference.model_for(inference.experiment_from_checkpoint(config_dict, workdir),
                              tokenizer)
  params = params.get("params", params)
  source = {"workdir": os.path.abspath(workdir), "checkpoint": what}
  write = _writer(to, model.config, tokenizer, quantization)
  parent = os.path.dirname(os.path.abspath(out))
  staging = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out))}.exporting-",
                             dir=parent)
  try:
    target = os.path.join(staging, "model")
    write(target, params, source)
    if os.path.isdir(out):
      os.rmdir(out)  # Empty (checked above).
    os.rename(target, out)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return {**source, "format": to, "quantization": quantization if to == "ctranslate2" else None,
          "config": model.config}


def _writer(to: str, config, tokenizer, quantization: str):
  """A function (directory, params, source) that writes the export, after checking `config`."""
  if to == "ctranslate2":
    from transformer_jax import export_ct2  # pylint: disable=import-outside-toplevel
    export_ct2.require_ctranslate2()
    export_ct2.check_exportable(config)  # The quantization: export_ct2.save, before it writes.
    if not hasattr(tokenizer, "path") or not tokenizer.path:
      raise ValueError("This workdir's tokenizer is not a SentencePiece model of ours (an "
                       "imported OPUS-MT tokenizer?): CTranslate2 export needs tokenizer.model.")
    return lambda directory, params, source: export_ct2.export(
        directory, params, config, tokenizer, quantization=quantization, source=source)
  if quantization != "float32":
    raise ValueError(f"--quantization {quantization}: the Hugging Face export is float32; "
                     "quantize when loading it (transformers) or export --to ctranslate2.")
  from transformer_jax import export_hf  # pylint: disable=import-outside-toplevel
  export_hf.check_exportable(config)
  return lambda directory, params, source: export_hf.export(directory, params, config,
                                                            tokenizer, source=source)
