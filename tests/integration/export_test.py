"""export.py on a pre-norm model trained on packed rows: exact in CTranslate2, refused by the
Hugging Face format; and every refused export writes nothing."""

import os
import shutil

import pytest

from transformer_jax import export, train_lib

from tests.integration.export_helpers import config, ct2, held_out, ours, run

ctranslate2 = pytest.importorskip("ctranslate2")


@pytest.fixture(scope="module")
def pre_norm(tmp_path_factory):
  """configs/tiny.py with pre-norm layers, trained on packed rows."""
  path = str(tmp_path_factory.mktemp("pre_norm"))
  train_lib.train_and_evaluate(config("tiny", **{"model.pre_norm": True}), path)
  return path


def test_a_pre_norm_model_trained_on_packed_rows_exports_exactly(pre_norm, tmp_path):
  lines, _ = held_out(40)
  out = str(tmp_path / "ct2")
  export.export_workdir(pre_norm, "ctranslate2", out)
  assert ct2(out, lines, beam_size=1) == ours(pre_norm, lines, beam_size=1)
  # Without a length penalty the two beam searches' stopping rules agree on any model; with one
  # they agree on a trained model (export_demo_test), not on this 20-step one, whose EOS
  # probabilities are still near uniform.
  assert ct2(out, lines, beam_size=3, alpha=0.0) == ours(
      pre_norm, lines, beam_size=3, alpha=0.0, beam_convention="huggingface")
  # The command: input order, an empty line kept, BLEU against a reference.
  src = tmp_path / "src.txt"
  src.write_text("\n".join([lines[0], "", lines[1]]) + "\n")
  result = run("translate.py", "--engine=ctranslate2", f"--model={out}", f"--input={src}",
               "--beam_size=1", f"--reference={src}")
  assert result.returncode == 0, result.stderr[-2000:]
  expected = ours(pre_norm, [lines[0], "", lines[1]], beam_size=1)
  assert result.stdout.split("\n")[:3] == expected and "BLEU" in result.stderr


def _refused(workdir, to, out, match, **kwargs):
  with pytest.raises(ValueError, match=match) as error:
    export.export_workdir(workdir, to, str(out), **kwargs)
  assert "\n" not in str(error.value)


def test_refused_exports_write_nothing(pre_norm, tmp_path):
  taken = tmp_path / "taken"
  taken.mkdir()
  (taken / "keep.txt").write_text("mine")
  # The command: one line, exit 2.
  result = run("export.py", f"--workdir={pre_norm}", "--to=ctranslate2", f"--out={taken}")
  errors = [l for l in result.stderr.splitlines() if l.startswith("error: ")]
  assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr
  assert "already exists and is not an empty directory" in errors[0]
  assert os.listdir(taken) == ["keep.txt"]
  _refused(pre_norm, "ctranslate2", os.path.join(pre_norm, "checkpoints", "export"),
           "lies in the workdir's checkpoints")
  assert not os.path.exists(os.path.join(pre_norm, "checkpoints", "export"))
  _refused(pre_norm, "huggingface", tmp_path / "hf", r"^TransformerConfig\.pre_norm=True")
  _refused(pre_norm, "ctranslate2", tmp_path / "q", "--quantization 'int3'",
           quantization="int3")
  corrupt = tmp_path / "corrupt"
  shutil.copytree(pre_norm, corrupt)
  steps = sorted(int(d) for d in os.listdir(corrupt / "checkpoints") if d.isdigit())
  newest = corrupt / "checkpoints" / str(steps[-1])
  big = max((p for p in newest.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  big.write_bytes(big.read_bytes()[:100])
  _refused(str(corrupt), "ctranslate2", tmp_path / "c", f"Checkpoint {steps[-1]}",
           checkpoint=str(steps[-1]))
  assert sorted(os.listdir(tmp_path)) == ["corrupt", "taken"]  # No output, no staging left.
