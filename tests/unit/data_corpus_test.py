"""Corpus readers: every format, and every way a corpus can be wrong."""

import gzip
import io
import json
import sys

import datasets
import pytest

from transformer_jax.data import corpus


def write(path, lines, compress=False, raw=None):
  data = raw if raw is not None else "".join(line + "\n" for line in lines).encode("utf-8")
  path.parent.mkdir(parents=True, exist_ok=True)
  if compress:
    with gzip.open(path, "wb") as f:
      f.write(data)
  else:
    path.write_bytes(data)
  return path


EN = ["A man rides a horse.", "Two dogs play.", "", "  Leading and trailing spaces.  "]
DE = ["Ein Mann reitet ein Pferd.", "Zwei Hunde spielen.", "Leere Quelle.", "Leerzeichen."]


def test_parallel_files_plain_and_gz(tmp_path):
  pairs = corpus.load_parallel_files(write(tmp_path / "a.en", EN),
                                     write(tmp_path / "a.de.gz", DE, compress=True))
  assert pairs[0] == (EN[0], DE[0])
  assert pairs[2] == ("", DE[2])  # Empty lines are kept here; the pipeline drops and counts them.
  assert pairs[3] == ("Leading and trailing spaces.", DE[3])
  assert len(pairs) == 4


def test_lines_split_on_newline_only(tmp_path):
  raw = "one\r\ntwo\u2028still two\x0cstill\nthree".encode("utf-8")  # No final newline.
  assert corpus.read_lines(write(tmp_path / "x.txt", None, raw=raw)) == [
      "one", "two\u2028still two\x0cstill", "three"]
  assert corpus.read_lines(write(tmp_path / "bom.txt", None, raw=b"\xef\xbb\xbfHi\n")) == ["Hi"]


class FakeStdin:
  """sys.stdin whose `.buffer` holds `data`; reading its text layer is a test failure."""

  def __init__(self, data: bytes):
    self.buffer = io.BytesIO(data)

  def read(self, *args):
    pytest.fail("read the text layer of stdin, not its bytes")


def test_dash_reads_standard_input(monkeypatch):
  raw = "\ufeffone \r\n  zwei Straße\n\nthree".encode("utf-8")
  monkeypatch.setattr(sys, "stdin", FakeStdin(raw))
  assert corpus.read_lines("-") == ["one", "zwei Straße", "", "three"]


def test_non_utf8_standard_input_names_stdin_and_line(monkeypatch):
  monkeypatch.setattr(sys, "stdin", FakeStdin(b"fine\ncaf\xe9\n"))
  with pytest.raises(ValueError, match=r"<stdin>, line 2: bytes that are not UTF-8"):
    corpus.read_lines("-")


def test_pairs_to_dataset_keeps_order_and_hashes_the_text():
  pairs = [("a man", "ein Mann"), ("", "leer"), ("Straße", "street")]
  ds = corpus.pairs_to_dataset(pairs)
  assert ds.column_names == ["source", "target"]
  assert ds.features == datasets.Features({"source": datasets.Value("string"),
                                           "target": datasets.Value("string")})
  assert list(zip(ds["source"], ds["target"])) == pairs
  fingerprint = corpus.pairs_fingerprint(pairs)
  assert corpus.pairs_fingerprint(list(pairs)) == fingerprint  # Same text, same key.
  for other in (pairs[::-1], pairs[:2] + [("Strasse", "street")]):
    assert corpus.pairs_fingerprint(other) != fingerprint


def test_multi30k_layout_with_gz_and_tok_pattern(tmp_path):
  for split in ("train", "val", "test_2016_flickr"):
    write(tmp_path / f"{split}.en.gz", EN, compress=True)
    write(tmp_path / f"{split}.de.gz", DE, compress=True)
    write(tmp_path / "tok" / f"{split}.lc.norm.tok.en.gz", [s.lower() for s in EN], compress=True)
    write(tmp_path / "tok" / f"{split}.lc.norm.tok.de.gz", [s.lower() for s in DE], compress=True)
  pairs = corpus.load_local_split(tmp_path, "test_2016_flickr", source_lang="en",
                                  target_lang="de")
  assert pairs[1] == (EN[1], DE[1])
  reverse = corpus.load_local_split(tmp_path, "val", source_lang="de", target_lang="en")
  assert reverse[1] == (DE[1], EN[1])
  tok = corpus.load_local_split(tmp_path / "tok", "train", source_lang="en", target_lang="de",
                                file_pattern="{split}.lc.norm.tok.{lang}")
  assert tok[0] == (EN[0].lower(), DE[0].lower())


def test_tsv_and_jsonl(tmp_path):
  write(tmp_path / "train.tsv", ["hello\thallo", "", "cat\tKatze\textra"])
  pairs = corpus.load_local_split(tmp_path, "train", source_lang="en", target_lang="de",
                                  file_pattern="{split}.tsv")
  assert pairs == [("hello", "hallo"), ("", ""), ("cat", "Katze")]
  swapped = corpus.load_local_split(tmp_path, "train", source_lang="de", target_lang="en",
                                    file_pattern="{split}.tsv", source_field="1",
                                    target_field="0")
  assert swapped[0] == ("hallo", "hello")

  records = [{"en": "hello", "de": "hallo"}, {"translation": {"en": "cat", "de": "Katze"}}]
  write(tmp_path / "val.jsonl.gz", [json.dumps(r) for r in records], compress=True)
  pairs = corpus.load_local_split(tmp_path, "val", source_lang="en", target_lang="de",
                                  file_pattern="{split}.jsonl")
  assert pairs == [("hello", "hallo"), ("cat", "Katze")]
  write(tmp_path / "k.jsonl", [json.dumps({"src": "a", "tgt": "b"})])
  assert corpus.load_jsonl(tmp_path / "k.jsonl", "src", "tgt") == [("a", "b")]


def test_mismatched_line_counts_name_both_files_and_counts(tmp_path):
  write(tmp_path / "train.en", [f"line {i}" for i in range(29)])
  write(tmp_path / "train.de", [f"Zeile {i}" for i in range(28)])
  with pytest.raises(ValueError) as e:
    corpus.load_local_split(tmp_path, "train", source_lang="en", target_lang="de")
  message = str(e.value)
  for part in (str(tmp_path / "train.en"), str(tmp_path / "train.de"), "29", "28"):
    assert part in message


def test_missing_directory_and_files_are_named(tmp_path):
  missing = tmp_path / "nowhere"
  with pytest.raises(FileNotFoundError, match=str(missing)):
    corpus.load_local_split(missing, "train", source_lang="en", target_lang="de")
  write(tmp_path / "train.en", EN)
  with pytest.raises(FileNotFoundError) as e:
    corpus.load_local_split(tmp_path, "train", source_lang="en", target_lang="de")
  assert str(tmp_path / "train.de") in str(e.value) and "train.de.gz" in str(e.value)
  assert "train.en" in str(e.value)  # Lists what the directory holds.
  with pytest.raises(FileNotFoundError, match="val"):
    corpus.load_local_split(tmp_path, "val", source_lang="en", target_lang="de")


def test_empty_corpus(tmp_path):
  write(tmp_path / "train.en", [])
  write(tmp_path / "train.de", [])
  with pytest.raises(ValueError, match="empty"):
    corpus.load_local_split(tmp_path, "train", source_lang="en", target_lang="de")
  with pytest.raises(ValueError, match="empty"):
    corpus.load_tsv(write(tmp_path / "e.tsv", []))


def test_undecodable_bytes_name_file_and_line(tmp_path):
  raw = "fine\nalso fine\n".encode() + b"caf\xe9 latin-1\n" + b"after\n"
  path = write(tmp_path / "bad.de", None, raw=raw)
  with pytest.raises(ValueError) as e:
    corpus.read_lines(path)
  assert str(path) in str(e.value) and "line 3" in str(e.value)
  gz = write(tmp_path / "bad.en.gz", None, raw=raw, compress=True)
  with pytest.raises(ValueError, match="line 3"):
    corpus.read_lines(gz)
  write(tmp_path / "broken.gz", None, raw=b"not gzip at all")
  with pytest.raises(ValueError, match="broken.gz"):
    corpus.read_lines(tmp_path / "broken.gz")


def test_malformed_tsv_and_jsonl_lines(tmp_path):
  with pytest.raises(ValueError, match="line 2"):
    corpus.load_tsv(write(tmp_path / "x.tsv", ["a\tb", "no tab here"]))
  with pytest.raises(ValueError, match="line 2"):
    corpus.load_jsonl(write(tmp_path / "x.jsonl", ['{"en": "a", "de": "b"}', "{oops"]),
                      "en", "de")
  with pytest.raises(ValueError, match="line 1.*'fr'"):
    corpus.load_jsonl(tmp_path / "x.jsonl", "en", "fr")
  with pytest.raises(ValueError, match="neither"):
    corpus.load_local_split(tmp_path, "x", source_lang="en", target_lang="de",
                            file_pattern="{split}.csv")


def test_hub_layouts():
  wmt = datasets.Dataset.from_dict({"translation": [{"de": "Hallo", "en": "Hello"},
                                                    {"de": " Katze ", "en": "Cat"}]})
  pairs = corpus.hub_to_pairs(wmt, source_lang="en", target_lang="de")
  assert pairs.column_names == ["source", "target"]
  assert pairs["source"] == ["Hello", "Cat"] and pairs["target"] == ["Hallo", "Katze"]
  plain = datasets.Dataset.from_dict({"en": ["Hello"], "de": ["Hallo"], "id": [0]})
  pairs = corpus.hub_to_pairs(plain, source_lang="de", target_lang="en")
  assert pairs["source"] == ["Hallo"] and pairs["target"] == ["Hello"]
  named = datasets.Dataset.from_dict({"text_a": ["x"], "text_b": ["y"]})
  pairs = corpus.hub_to_pairs(named, source_lang="en", target_lang="de", source_field="text_a",
                              target_field="text_b")
  assert pairs[0] == {"source": "x", "target": "y"}
  with pytest.raises(ValueError, match="text_a"):
    corpus.hub_to_pairs(named, source_lang="en", target_lang="de")
  with pytest.raises(ValueError, match="fr"):
    corpus.hub_to_pairs(wmt, source_lang="en", target_lang="fr")


def test_hub_split_goes_through_load_dataset(monkeypatch):
  calls = []

  def fake_load_dataset(name, config, split):
    calls.append((name, config, split))
    return datasets.Dataset.from_dict({"translation": [{"de": "Hallo", "en": "Hello"}]})

  monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
  pairs = corpus.load_hub_split("wmt14", "validation", hub_config="de-en", source_lang="en",
                                target_lang="de")
  assert calls == [("wmt14", "de-en", "validation")]
  assert pairs[0] == {"source": "Hello", "target": "Hallo"}


def test_unreachable_hub_dataset_says_what_to_do(monkeypatch):
  def offline(name, config, split):
    raise ConnectionError(f"Couldn't reach {name!r} on the Hub")

  monkeypatch.setattr(datasets, "load_dataset", offline)
  with pytest.raises(FileNotFoundError, match="wmt14.*data_dir"):
    corpus.load_hub_split("wmt14", "train", hub_config="de-en", source_lang="en",
                          target_lang="de")
