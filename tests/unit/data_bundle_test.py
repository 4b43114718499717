"""create_datasets: local and synthetic corpora, the tokenizer and token-id caches, the config."""

import logging

import numpy as np
import pytest

import data_pipeline_test
from transformer_jax.data import DataConfig, Tokenizer, create_datasets, synthetic


PAIRS = data_pipeline_test.pairs_fixture()  # The same mixed corpus as the pipeline tests.


def write_corpus(directory, pairs, split, src="en", tgt="de"):
  directory.mkdir(parents=True, exist_ok=True)
  (directory / f"{split}.{src}").write_text("".join(p[0] + "\n" for p in pairs))
  (directory / f"{split}.{tgt}").write_text("".join(p[1] + "\n" for p in pairs))


def data_config(**overrides):
  """Every setting these tests rely on, so that none comes from DataConfig's (WMT14) defaults."""
  c = dict(dataset="", data_dir="", source_lang="en", target_lang="de", train_split="train",
           eval_split="val", vocab_size=200, tokenizer_type="bpe", max_len=32, eval_max_len=0,
           batch_size=8, seq_len=32, packing=True, packing_window=0, num_workers=-1, prefetch=2,
           eval_batch_size=4, num_eval_examples=-1, process_sharding="shard")
  c.update(overrides)
  return c


def test_create_datasets_on_a_local_corpus(tmp_path, monkeypatch, caplog):
  data = tmp_path / "corpus"
  write_corpus(data, PAIRS[:300] + [("", "empty source")], "train")
  write_corpus(data, PAIRS[300:310], "val")
  config = DataConfig(**data_config(data_dir=str(data)))
  bundle = create_datasets(config, tmp_path / "work", seed=0)
  assert (tmp_path / "work" / "tokenizer.model").exists()
  assert bundle.tokenizer.pad_id == 0
  assert bundle.eval_sources == [p[0] for p in PAIRS[300:310]]
  assert bundle.eval_references == [p[1] for p in PAIRS[300:310]]
  batch = next(bundle.train_iter)
  assert batch["src"].shape == (8, 32)
  evals = list(bundle.eval_batches())
  assert len(evals) == 3 and len(list(bundle.eval_batches())) == 3
  decoded = [bundle.tokenizer.decode(row) for b in evals for row in b["tgt_out"]][:10]
  assert decoded == bundle.eval_references
  bundle.close()
  # A restart reuses the tokenizer and loads the cached token ids of the same files.
  monkeypatch.setattr(Tokenizer, "train", lambda *a, **k: pytest.fail("retrained"))
  monkeypatch.setattr(Tokenizer, "encode_batch", lambda *a: pytest.fail("re-tokenized"))
  with caplog.at_level(logging.INFO):
    again = create_datasets(data_config(data_dir=str(data), num_eval_examples=4),
                            tmp_path / "work", seed=0)
  assert caplog.text.count("loading token ids") == 2  # Train and val.
  assert again.tokenizer.fingerprint == bundle.tokenizer.fingerprint
  assert again.eval_sources == bundle.eval_sources[:4]
  np.testing.assert_array_equal(next(again.train_iter)["src"], batch["src"])
  again.close()


def test_bundle_close_stops_the_training_iterator(tmp_path):
  data = tmp_path / "corpus"
  write_corpus(data, PAIRS[:100], "train")
  write_corpus(data, PAIRS[100:104], "val")
  bundle = create_datasets(data_config(data_dir=str(data)), tmp_path / "w", seed=0)
  next(bundle.train_iter)
  bundle.close()
  bundle.close()
  with pytest.raises(ValueError, match="closed"):
    next(bundle.train_iter)
  assert len(list(bundle.eval_batches())) == 1  # Evaluation batches need no iterator.


def test_create_datasets_errors(tmp_path):
  data = tmp_path / "corpus"
  write_corpus(data, PAIRS[:29], "train")
  (data / "train.de").write_text("".join(p[1] + "\n" for p in PAIRS[:28]))
  with pytest.raises(ValueError, match="29.*28"):
    create_datasets(data_config(data_dir=str(data)), tmp_path / "w", seed=0)
  with pytest.raises(FileNotFoundError, match="no_such_dir"):
    create_datasets(data_config(data_dir=str(tmp_path / "no_such_dir")), tmp_path / "w", seed=0)
  with pytest.raises(ValueError, match="config.data.batchsize"):
    create_datasets(data_config(batchsize=3), tmp_path / "w", seed=0)
  with pytest.raises(ValueError, match="max_len=64: exceeds data.seq_len=32"):
    create_datasets(data_config(max_len=64), tmp_path / "w", seed=0)
  with pytest.raises(ValueError, match="config.data.batch_size='8' should be an integer"):
    create_datasets(data_config(batch_size="8"), tmp_path / "w", seed=0)
  # Found before the corpus is read, not at the first evaluation.
  with pytest.raises(ValueError, match="data.eval_batch_size=3 .* process count 2"):
    create_datasets(data_config(data_dir=str(tmp_path / "unread"), eval_batch_size=3),
                    tmp_path / "w", seed=0, process_count=2)


def test_create_datasets_synthetic(tmp_path):
  config = data_config(dataset="synthetic", synthetic_task="dates", synthetic_train_size=500,
                       synthetic_eval_size=20, synthetic_seed=0, vocab_size=128,
                       process_sharding="rows", max_len=24, seq_len=48, eval_batch_size=8)
  bundle = create_datasets(config, tmp_path, seed=0)
  train, eval_ = synthetic.synthetic_splits("dates", 500, 20, seed=0)
  assert bundle.eval_sources == [s for s, _ in eval_]
  assert bundle.eval_references == [t for _, t in eval_]
  tok = bundle.tokenizer
  for b in bundle.eval_batches():
    for src, tgt in zip(b["src"], b["tgt_out"]):
      if src.any():
        assert tok.decode(tgt) in bundle.eval_references
  halves = [create_datasets(config, tmp_path, seed=0, process_index=p, process_count=2)
            for p in range(2)]
  g = next(bundle.train_iter)
  np.testing.assert_array_equal(
      g["tgt_in"], np.concatenate([next(h.train_iter)["tgt_in"] for h in halves]))
  for b in [bundle] + halves:
    b.close()


def test_tokenizer_trains_on_a_seeded_sample_in_corpus_order(tmp_path, monkeypatch):
  data = tmp_path / "corpus"
  write_corpus(data, PAIRS[:100], "train")
  write_corpus(data, PAIRS[100:104], "val")
  seen = []
  train = Tokenizer.train

  def spy(texts, *args, **kwargs):
    seen.append(list(texts))
    return train(seen[-1], *args, **kwargs)

  monkeypatch.setattr(Tokenizer, "train", spy)
  create_datasets(data_config(data_dir=str(data), tokenizer_max_sentences=40), tmp_path / "w",
                  seed=0).close()
  sample = np.sort(np.random.default_rng(0).choice(100, 20, replace=False))
  assert seen == [[s for i in sample for s in PAIRS[i]]]  # Source, target of each pair in turn.


def test_eval_keeps_long_pairs_unless_eval_max_len(tmp_path):
  data = tmp_path / "corpus"
  write_corpus(data, PAIRS[:100], "train")
  long_pair = (" ".join(["the big red house"] * 20), "a dog")
  write_corpus(data, [PAIRS[0], long_pair, ("", "x")], "val")
  bundle = create_datasets(data_config(data_dir=str(data)), tmp_path / "w", seed=0)
  assert bundle.eval_sources == [PAIRS[0][0], long_pair[0]]  # The empty pair is dropped.
  batch = next(iter(bundle.eval_batches()))
  assert batch["src"].shape[1] > 32 and batch["src"].shape[1] % 8 == 0
  limited = create_datasets(data_config(data_dir=str(data), eval_max_len=32), tmp_path / "w",
                            seed=0)
  assert limited.eval_sources == [PAIRS[0][0]]
  bundle.close()
  limited.close()
