"""The demo model exported: served by CTranslate2 (float32 and int8) and by transformers, it
translates as ours does."""

import pytest

from transformer_jax import evaluation, export, train_lib

from tests.integration.export_helpers import config, ct2, held_out, ours, run

ctranslate2 = pytest.importorskip("ctranslate2")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
  """The embedded demo, trained to 400 steps (BLEU 100 on its held-out dates)."""
  path = str(tmp_path_factory.mktemp("demo"))
  train_lib.train_and_evaluate(config("demo", num_train_steps=400,
                                      checkpoint_every_steps=400), path)
  return path


def test_ctranslate2_serves_the_demo_as_we_do_and_int8_keeps_its_bleu(demo, tmp_path):
  lines, references = held_out(120)
  result = run("export.py", f"--workdir={demo}", "--to=ctranslate2", f"--out={tmp_path / 'f32'}")
  assert result.returncode == 0, result.stderr[-2000:]
  export.export_workdir(demo, "ctranslate2", str(tmp_path / "int8"), quantization="int8")
  greedy = ours(demo, lines, beam_size=1)
  beam = ours(demo, lines, beam_size=4, alpha=1.0, beam_convention="huggingface")
  assert evaluation.bleu(greedy, references).score == pytest.approx(100.0)
  assert ct2(tmp_path / "f32", lines, beam_size=1) == greedy
  assert ct2(tmp_path / "f32", lines, beam_size=4, alpha=1.0) == beam
  int8_greedy = ct2(tmp_path / "int8", lines, beam_size=1)
  int8_beam = ct2(tmp_path / "int8", lines, beam_size=4, alpha=1.0)
  assert evaluation.bleu(int8_greedy, references).score == pytest.approx(100.0)
  assert sum(a != b for a, b in zip(int8_beam, beam)) <= 0.03 * len(lines)


def test_transformers_generates_what_we_generate(demo, tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  lines, _ = held_out(24)
  out = str(tmp_path / "hf")
  export.export_workdir(demo, "huggingface", out)
  tokenizer = transformers.MarianTokenizer.from_pretrained(out)
  model = transformers.MarianMTModel.from_pretrained(out).eval()
  batch = tokenizer(lines, return_tensors="pt", padding=True)
  with torch.no_grad():
    generated = model.generate(**batch, num_beams=1, do_sample=False, max_new_tokens=60)
  theirs = tokenizer.batch_decode(generated, skip_special_tokens=True)
  assert theirs == ours(demo, lines, beam_size=1)
