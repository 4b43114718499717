"""Importing a Marian (OPUS-MT) model: a small random MarianMTModel and MarianTokenizer are built
here (SentencePiece models trained on a few hundred lines), saved, imported, and compared with
Hugging Face's own forward pass, tokenizer, greedy search and beam search."""

import importlib.util
import io
import json
import os
import shutil

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
import sentencepiece as spm  # pylint: disable=g-import-not-at-top

from transformer_jax import decoding, evaluation, inference, marian, preflight, train_lib
from transformer_jax.data import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCES = ["2019-03-04", "1999-12-31", "2045-07-09", ">>fra<< 2001-01-01", "20x9-ü3-04",
           "1987-11-30", "2000-02-29", "2112-10-10"]
MAX_NEW = 24  # Generated tokens (EOS included); transformers' max_length counts the start too.


def _train_spm(lines, vocab_size):
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model,
                                 vocab_size=vocab_size, model_type="bpe", hard_vocab_limit=False,
                                 character_coverage=1.0, num_threads=1, minloglevel=2)
  return model.getvalue()


def _save_tokenizer(directory):
  pairs = synthetic.synthetic_pairs("dates", 300, seed=1)
  sources, targets = _train_spm([s for s, _ in pairs], 40), _train_spm([t for _, t in pairs], 90)
  pieces = []
  for proto in (sources, targets):
    processor = spm.SentencePieceProcessor(model_proto=proto)
    pieces += [processor.id_to_piece(i) for i in range(3, processor.get_piece_size())]
  # Marian's layout: EOS 0, <unk> 1, the pieces, language tokens, padding last.
  vocab = ["</s>", "<unk>"] + sorted(set(pieces)) + [">>fra<<", ">>deu<<", "<pad>"]
  for name, proto in (("source.spm", sources), ("target.spm", targets)):
    with open(os.path.join(directory, name), "wb") as f:
      f.write(proto)
  with open(os.path.join(directory, "vocab.json"), "w") as f:
    json.dump({piece: i for i, piece in enumerate(vocab)}, f)
  tokenizer = transformers.MarianTokenizer(
      os.path.join(directory, "source.spm"), os.path.join(directory, "target.spm"),
      os.path.join(directory, "vocab.json"), source_lang="en", target_lang="de")
  tokenizer.save_pretrained(directory)
  return len(vocab)


def _save_model(directory, vocab_size, encoder_layers=2, decoder_layers=1):
  """A random MarianMTModel with OPUS-MT's options (swish, scaled embeddings, padding last and
  the decoder start, a logits bias), d_model 16, saved as model.safetensors."""
  config = transformers.MarianConfig(
      vocab_size=vocab_size, decoder_vocab_size=vocab_size, d_model=16,
      encoder_layers=encoder_layers, decoder_layers=decoder_layers, encoder_attention_heads=2,
      decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
      activation_function="swish", scale_embedding=True, max_position_embeddings=128,
      pad_token_id=vocab_size - 1, eos_token_id=0, decoder_start_token_id=vocab_size - 1,
      forced_eos_token_id=None, init_std=0.3)
  torch.manual_seed(3)
  model = transformers.MarianMTModel(config).eval()
  with torch.no_grad():  # A random logits bias, EOS favoured so that lengths vary.
    bias = torch.randn(1, vocab_size) * 0.5
    bias[0, 0] += 2.5
    model.final_logits_bias.copy_(bias)
  model.save_pretrained(directory)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  """A saved random Marian model (2+1 layers) with its tokenizer."""
  directory = str(tmp_path_factory.mktemp("opus-mt-random"))
  _save_model(directory, _save_tokenizer(directory))
  return directory


@pytest.fixture(scope="module")
def hf(hf_dir):
  model = transformers.MarianMTModel.from_pretrained(hf_dir).eval()
  return model, transformers.MarianTokenizer.from_pretrained(hf_dir)


@pytest.fixture(scope="module")
def workdir(hf_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("imported") / "opus")
  marian.import_marian(hf_dir, workdir)
  return workdir


@pytest.fixture(scope="module")
def translator(workdir):
  return inference.load_translator(workdir)


def _generate(hf, sources, max_new=MAX_NEW, **kwargs):
  """transformers' output ids (without the start token), cut before EOS. OPUS-MT's generation
  configs forbid the padding id (bad_words_ids) as our searches do when it starts the decoder."""
  model, tokenizer = hf
  batch = tokenizer(sources, return_tensors="pt", padding=True)
  pad = model.config.pad_token_id
  with torch.no_grad():
    out = model.generate(**batch, max_new_tokens=max_new, bad_words_ids=[[pad]],
                         do_sample=False, **kwargs)
  return [decoding.ids_until_eos(row[1:], eos_id=model.config.eos_token_id, pad_id=pad)
          for row in out.numpy()]


def _source_batch(tokenizer, sources):
  """Source ids + EOS, padded to the shape evaluation.translate gives them (one compilation)."""
  ids = [tokenizer.encode(s) + [tokenizer.eos_id] for s in sources]
  src = np.zeros((len(ids), evaluation.bucket_length(max(map(len, ids)))), np.int32)
  for row, x in enumerate(ids):
    src[row, :len(x)] = x
  return src


def test_tokenizer_encodes_and_decodes_as_huggingfaces(hf, translator):
  _, hf_tokenizer = hf
  tokenizer = translator[2]
  assert (tokenizer.pad_id, tokenizer.bos_id) == (0, 0)
  texts = SOURCES + ["", "nineteenth of may two thousand twenty"]
  for text in texts:
    assert tokenizer.to_marian(tokenizer.encode(text) + [tokenizer.eos_id]) == \
        hf_tokenizer(text).input_ids, text
    target = hf_tokenizer(text_target=text).input_ids
    assert tokenizer.to_marian(tokenizer.encode(text, target=True) + [tokenizer.eos_id]) == \
        target, text
    assert tokenizer.decode(tokenizer.to_marian(target)) == \
        hf_tokenizer.decode(target, skip_special_tokens=True), text
  # The language token of multilingual models passes through whole.
  assert tokenizer.id_to_piece(tokenizer.encode(">>fra<< 2001")[0]) == ">>fra<<"


def test_logits_equal_huggingfaces_on_padded_batches(hf, translator):
  model, hf_tokenizer = hf
  jax_model, params, tokenizer, _ = translator
  targets = ["third of may", "first of january two thousand one", "may"]
  batch = hf_tokenizer(SOURCES[:3], text_target=targets, return_tensors="pt", padding=True)
  labels = batch.pop("labels")
  start = torch.full((3, 1), model.config.decoder_start_token_id)
  decoder_in = torch.cat([start, labels[:, :-1]], dim=1)  # Padded with Marian's pad id.
  with torch.no_grad():
    expected = model(**batch, decoder_input_ids=decoder_in).logits.numpy()
  to_ours = np.vectorize(lambda i: tokenizer.to_marian([i])[0])  # The permutation is an involution.
  logits = jax.jit(jax_model.apply)({"params": params}, to_ours(batch["input_ids"].numpy()),
                                    to_ours(decoder_in.numpy()))
  logits = np.asarray(logits)[..., to_ours(np.arange(logits.shape[-1]))]  # Marian's id order.
  real = (labels.numpy() != model.config.pad_token_id)  # Positions that predict a real label.
  assert real.sum() < real.size  # The batch is padded.
  np.testing.assert_allclose(logits[real], expected[real], atol=1e-4, rtol=0)


def test_greedy_search_equals_generate(hf, translator):
  jax_model, params, tokenizer, _ = translator
  expected = _generate(hf, SOURCES, num_beams=1)
  tokens = decoding.greedy_search(jax_model, params, _source_batch(tokenizer, SOURCES),
                                  max_len=MAX_NEW)
  ours = decoding.ids_until_eos(tokens, eos_id=tokenizer.eos_id)
  assert [tokenizer.to_marian(x) for x in ours] == expected
  assert len({len(x) for x in expected}) > 2  # EOS comes at various lengths.


@pytest.mark.parametrize("alpha, max_new", [(1.0, MAX_NEW), (0.6, 5)])
@pytest.mark.slow
def test_beam_search_equals_generate(hf, translator, alpha, max_new):
  # transformers' length_penalty is alpha with convention="huggingface"; max_new 5 cuts some
  # hypotheses at the limit, where transformers lets them compete with the finished ones.
  jax_model, params, tokenizer, _ = translator
  expected = _generate(hf, SOURCES, max_new, num_beams=4, length_penalty=alpha,
                       early_stopping=False)
  tokens, _ = decoding.beam_search(jax_model, params, _source_batch(tokenizer, SOURCES),
                                   beam_size=4, alpha=alpha, max_len=max_new,
                                   convention="huggingface")
  ours = decoding.ids_until_eos(tokens[:, 0], eos_id=tokenizer.eos_id)
  assert [tokenizer.to_marian(x) for x in ours] == expected


def test_translate_gives_huggingfaces_text(hf, translator):
  jax_model, params, tokenizer, _ = translator
  model, hf_tokenizer = hf
  batch = hf_tokenizer(SOURCES, return_tensors="pt", padding=True)
  with torch.no_grad():
    out = model.generate(**batch, max_new_tokens=MAX_NEW, num_beams=4, do_sample=False,
                         bad_words_ids=[[model.config.pad_token_id]])
  expected = hf_tokenizer.batch_decode(out, skip_special_tokens=True)
  hypotheses = evaluation.translate(jax_model, params, tokenizer, SOURCES, beam_size=4,
                                    alpha=1.0, max_len=MAX_NEW, beam_convention="huggingface")
  assert hypotheses == expected


def test_state_dict_formats_read_alike(hf_dir, tmp_path):
  model = transformers.MarianMTModel.from_pretrained(hf_dir)
  torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
  from_bin = marian.read_state_dict(str(tmp_path))
  from_safetensors = marian.read_state_dict(hf_dir)
  for name, value in from_safetensors.items():
    np.testing.assert_array_equal(from_bin[name], value)


@pytest.mark.parametrize("changes, field", [
    (dict(share_encoder_decoder_embeddings=False), "share_encoder_decoder_embeddings"),
    (dict(normalize_before=True), "normalize_before"),
    (dict(static_position_embeddings=False), "static_position_embeddings"),
    (dict(activation_function="tanh"), "activation_function"),
    (dict(decoder_attention_heads=4), "decoder_attention_heads"),
    (dict(decoder_start_token_id=0), "decoder_start_token_id"),
    (dict(decoder_vocab_size=7), "decoder_vocab_size"),
    (dict(model_type="bart"), "model_type"),
])
def test_unsupported_variants_are_refused_naming_the_field(hf_dir, changes, field):
  with open(os.path.join(hf_dir, "config.json")) as f:
    config = json.load(f)
  with pytest.raises(ValueError, match=rf"^config\.json {field}="):
    marian.transformer_config({**config, **changes})


def test_bad_paths_are_refused(hf_dir, workdir, tmp_path):
  with pytest.raises(ValueError, match="already holds a model"):
    marian.import_marian(hf_dir, workdir)
  with pytest.raises(FileNotFoundError, match="not a hub id"):
    marian.import_marian(str(tmp_path / "missing"), str(tmp_path / "out"))
  with pytest.raises(FileNotFoundError, match="config.json is missing"):
    marian.import_marian(str(tmp_path), str(tmp_path / "out"))


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:300]),
     "model.safetensors cannot be read .*truncated or corrupt"),
    (lambda d: (d / "config.json").write_text(json.dumps(
        {k: v for k, v in json.loads((d / "config.json").read_text()).items()
         if k != "vocab_size"})), "config.json has no 'vocab_size'"),
    (lambda d: (d / "config.json").write_text("{not json"), r"config.json is not valid JSON"),
    (lambda d: (d / "source.spm").write_bytes(b"garbage"), "tokenizer files of .* cannot be read"),
])
def test_malformed_model_files_are_one_error_and_leave_nothing(hf_dir, tmp_path, damage, message):
  broken = tmp_path / "broken"
  shutil.copytree(hf_dir, broken)
  damage(broken)
  out = tmp_path / "out"
  with pytest.raises(ValueError, match=message):
    marian.import_marian(str(broken), str(out))
  assert sorted(os.listdir(tmp_path)) == ["broken"]  # No workdir, no staging directory left.
  marian.import_marian(hf_dir, str(out))  # The same command then simply works.
  assert os.path.isfile(out / "marian_import.json")


def test_training_an_import_with_another_config_is_refused_before_any_write(workdir):
  from transformer_jax import experiment_config  # pylint: disable=g-import-not-at-top
  before = sorted(os.listdir(workdir))
  wrong = experiment_config.from_config_dict(experiment_config.base_config("tiny"))
  with pytest.raises(ValueError, match=r"holds an imported OPUS-MT model.*--config "
                     r"configs/opus_mt.py:"):
    train_lib.train_and_evaluate(wrong, workdir)
  assert sorted(os.listdir(workdir)) == before
  right = experiment_config.from_config_dict(marian.imported_experiment(workdir))
  preflight.check_imported_model(right, workdir)  # Its own experiment passes.


def test_hub_ids_are_downloaded_and_a_failed_download_is_one_error(hf_dir, monkeypatch):
  import huggingface_hub  # pylint: disable=g-import-not-at-top
  asked = []
  monkeypatch.setattr(huggingface_hub, "snapshot_download",
                      lambda repo, allow_patterns: asked.append(repo) or hf_dir)
  assert marian.resolve_model("Helsinki-NLP/opus-mt-en-de") == hf_dir
  assert asked == ["Helsinki-NLP/opus-mt-en-de"]

  def offline(repo, allow_patterns):
    raise OSError("no network")
  monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
  with pytest.raises(FileNotFoundError, match="downloading it from the Hugging Face hub failed"):
    marian.resolve_model("Helsinki-NLP/opus-mt-en-de")


@pytest.mark.slow
def test_fine_tune_from_the_import_runs_and_resumes(hf_dir, tmp_path):
  small = tmp_path / "opus-mt-1+1"  # The same tokenizer; one layer each: a faster compile.
  shutil.copytree(hf_dir, small)
  _save_model(str(small), len(json.loads((small / "vocab.json").read_text())), 1, 1)
  workdir = str(tmp_path / "opus")
  marian.import_marian(str(small), workdir)
  spec = importlib.util.spec_from_file_location("opus_mt",
                                                os.path.join(ROOT, "configs", "opus_mt.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(workdir)
  config.num_train_steps, config.log_every_steps = 10, 5
  config.checkpoint_every_steps, config.eval_every_steps = 10, 0
  # rsqrt does not depend on num_train_steps: the resumed run compiles the same step, which the
  # tests' persistent compilation cache (conftest.py) then holds.
  config.optim.update(schedule="rsqrt", warmup_steps=2)
  config.data.update(dataset="synthetic", synthetic_train_size=200, synthetic_eval_size=8,
                     batch_size=8, eval_batch_size=8, seq_len=48, max_len=32, prefetch=0)
  first = train_lib.train_and_evaluate(config, workdir)
  assert first["step"] == 10 and np.isfinite(first["train_loss"])
  config.num_train_steps = 20
  second = train_lib.train_and_evaluate(config, workdir)
  assert second["step"] == 20
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    steps = [json.loads(line)["step"] for line in f]
  assert steps == [5, 10, 15, 20]  # The second run resumed at step 10.
  model, params, _, what = inference.load_translator(workdir)
  assert what == "checkpoint 20" and model.config.decoder_start_is_pad
  assert jax.tree.structure(params) == jax.tree.structure(inference.load_params(workdir, "0")[0])
