"""Parallel corpora: Hugging Face hub datasets and local files, read strictly.

The file readers return lists of `(source, target)` string pairs; a split enters the pipeline as
a `datasets.Dataset` with string columns `source` and `target`: the hub's as loaded, local files
and the synthetic task through `pairs_to_dataset`. Lines are split on "\\n" only and stripped of
surrounding whitespace; nothing else is changed. Empty pairs are kept here (the pipeline drops
and counts them), and every inconsistency is an error that names the file:
  - different line counts on the two sides (both files, both counts),
  - a missing file or directory (the path, and the files that were expected),
  - an empty corpus,
  - bytes that are not UTF-8, a TSV line without a tab, a JSONL line that is not an object
    (file and line number).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import sys
import zlib
from typing import Any

log = logging.getLogger(__name__)

Pairs = list[tuple[str, str]]


# ----------------------------------------------------------------------------- reading files


def resolve_file(path: str | os.PathLike, what: str = "Corpus file") -> str:
  """`path`, or `path.gz` when only the compressed file exists.

  Raises:
    FileNotFoundError: neither exists; the message names both and lists the directory.
  """
  path = os.fspath(path)
  candidates = [path] if path.endswith(".gz") else [path, path + ".gz"]
  for candidate in candidates:
    if os.path.isfile(candidate):
      return candidate
  directory = os.path.dirname(path) or "."
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"{what} {path} not found: directory {directory} does not exist.")
  present = sorted(os.listdir(directory))
  shown = ", ".join(present[:20]) + (f", ... ({len(present)} in all)" if len(present) > 20 else "")
  tried = " or ".join(candidates)
  raise FileNotFoundError(f"{what} not found: expected {tried}. {directory} contains: "
                          f"[{shown or 'nothing'}].")


def read_lines(path: str | os.PathLike) -> list[str]:
  """The stripped lines of a UTF-8 text file (`.gz` decompressed; "-" = standard input).

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: undecodable bytes (file, line number and byte offset; "<stdin>" for "-"), or a
      corrupt gzip file.
  """
  path = os.fspath(path)
  if path == "-":
    # The raw bytes, not sys.stdin's text layer: its encoding follows the locale, and a bad byte
    # should name the line like a file's does.
    return _decode_lines(sys.stdin.buffer.read(), "<stdin>")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Corpus file {path} does not exist.")
  try:
    if path.endswith(".gz"):
      with gzip.open(path, "rb") as f:
        data = f.read()
    else:
      with open(path, "rb") as f:
        data = f.read()
  except (OSError, EOFError, zlib.error) as e:
    raise ValueError(f"Cannot read {path}: {e}. The file is corrupt or truncated; "
                     "download or decompress it again.") from e
  return _decode_lines(data, path)


def _decode_lines(data: bytes, name: str) -> list[str]:
  """`data` as UTF-8 lines, stripped; `name` is the file named in the decoding error."""
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    line = data.count(b"\n", 0, e.start) + 1
    column = e.start - (data.rfind(b"\n", 0, e.start) + 1)
    raise ValueError(
        f"{name}, line {line}: bytes that are not UTF-8 ({e.reason}, byte "
        f"{data[e.start:e.end]!r} at column {column}). Re-encode the file as UTF-8 "
        "(e.g. `iconv -f latin1 -t utf-8`) or fix that line.") from None
  if text.startswith("\ufeff"):  # A byte-order mark is not part of the first sentence.
    text = text[1:]
  lines = text.split("\n")
  if lines and lines[-1] == "":  # The final newline ends the last line; it does not add one.
    lines.pop()
  return [line.strip() for line in lines]


def load_parallel_files(source_path: str | os.PathLike, target_path: str | os.PathLike) -> Pairs:
  """Pairs from two line-aligned files (line N of one translates line N of the other).

  Raises:
    FileNotFoundError: a file is missing.
    ValueError: different line counts (naming both files and counts), an empty corpus, or
      undecodable bytes.
  """
  source_path, target_path = os.fspath(source_path), os.fspath(target_path)
  sources, targets = read_lines(source_path), read_lines(target_path)
  if len(sources) != len(targets):
    raise ValueError(
        f"Parallel files have different line counts: {source_path} has {len(sources)} lines "
        f"but {target_path} has {len(targets)}. Line N of one must translate line N of the "
        "other; restore the missing or extra lines (or re-extract the corpus).")
  if not sources:
    raise ValueError(f"Parallel corpus {source_path} / {target_path} is empty (0 lines).")
  return list(zip(sources, targets))


def load_tsv(path: str | os.PathLike, source_column: int = 0, target_column: int = 1) -> Pairs:
  """Pairs from tab-separated lines; a blank line is an empty pair (dropped later, counted).

  Raises:
    ValueError: a line with too few columns (file and line), an empty file, bad bytes.
  """
  path = os.fspath(path)
  pairs = []
  needed = max(source_column, target_column) + 1
  for n, line in enumerate(read_lines(path), start=1):
    if not line:
      pairs.append(("", ""))
      continue
    fields = line.split("\t")
    if len(fields) < needed:
      raise ValueError(
          f"{path}, line {n}: {len(fields)} tab-separated column(s), but columns "
          f"{source_column} (source) and {target_column} (target) are needed: {line[:80]!r}.")
    pairs.append((fields[source_column].strip(), fields[target_column].strip()))
  if not pairs:
    raise ValueError(f"TSV corpus {path} is empty (0 lines).")
  return pairs


def load_jsonl(path: str | os.PathLike, source_key: str, target_key: str, *,
               translation_field: str = "translation") -> Pairs:
  """Pairs from JSON lines: `{source_key: ..., target_key: ...}`, or keys inside a
  `translation_field` dict (WMT's `{"translation": {"de": ..., "en": ...}}`).

  Raises:
    ValueError: a line that is not a JSON object or lacks a key (file and line), an empty file.
  """
  path = os.fspath(path)
  pairs = []
  for n, line in enumerate(read_lines(path), start=1):
    if not line:
      pairs.append(("", ""))
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}, line {n}: not valid JSON ({e.msg} at column {e.colno}).") from None
    if not isinstance(record, dict):
      raise ValueError(f"{path}, line {n}: expected a JSON object, got {type(record).__name__}.")
    pairs.append((_field(record, source_key, translation_field, f"{path}, line {n}"),
                  _field(record, target_key, translation_field, f"{path}, line {n}")))
  if not pairs:
    raise ValueError(f"JSONL corpus {path} is empty (0 lines).")
  return pairs


def _field(record: dict[str, Any], key: str, translation_field: str, where: str) -> str:
  if key in record:
    value = record[key]
  elif isinstance(record.get(translation_field), dict) and key in record[translation_field]:
    value = record[translation_field][key]
  else:
    inner = record.get(translation_field)
    keys = sorted(record) + ([f"{translation_field}.{k}" for k in sorted(inner)]
                             if isinstance(inner, dict) else [])
    raise ValueError(f"{where}: no field {key!r}; the record has {keys}. Set "
                     "data.source_field / data.target_field to the right keys.")
  if not isinstance(value, str):
    raise ValueError(f"{where}: field {key!r} is a {type(value).__name__}, not a string.")
  return value.strip()


# ----------------------------------------------------------------------------- pairs as a dataset


def pairs_to_dataset(pairs: Pairs):
  """`pairs` as a `datasets.Dataset` with string columns `source` and `target`, in order.

  Its fingerprint is a hash of the text (`pairs_fingerprint`), not a random one, so the token-id
  cache keyed on it (`pipeline.tokenize_split`) is found again after a restart.
  """
  import datasets  # pylint: disable=g-import-not-at-top
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  table = datasets.table.InMemoryTable.from_pydict({
      "source": pa.array([p[0] for p in pairs], pa.string()),
      "target": pa.array([p[1] for p in pairs], pa.string())})
  return datasets.Dataset(table, fingerprint=pairs_fingerprint(pairs))


def pairs_fingerprint(pairs: Pairs) -> str:
  """A 16-hex-digit hash of the pairs' text (unchanged since it keyed caches of pair lists)."""
  h = hashlib.sha1()
  for source, target in pairs:
    h.update(source.encode("utf-8", "surrogatepass") + b"\t" +
             target.encode("utf-8", "surrogatepass") + b"\n")
  return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- local directories


def load_local_split(data_dir: str | os.PathLike, split: str, *, source_lang: str,
                     target_lang: str, file_pattern: str = "{split}.{lang}",
                     source_field: str = "", target_field: str = "") -> Pairs:
  """One split of a local corpus directory, the format chosen by `file_pattern`.

  - With `{lang}` in the pattern: two line-aligned text files per split, e.g. Multi30k's
    `train.en.gz` / `train.de.gz` ("{split}.{lang}"; ".gz" is tried too) or its tokenized
    `tok/train.lc.norm.tok.en.gz` ("{split}.lc.norm.tok.{lang}").
  - Without `{lang}`: one file per split, `.tsv` (columns `source_field` / `target_field`,
    default 0 and 1) or `.jsonl` (keys `source_field` / `target_field`, default the language
    codes, also looked up inside a "translation" dict); ".gz" is allowed after either.

  Raises:
    FileNotFoundError: the directory or a file is missing (naming the expected path).
    ValueError: an unknown pattern or any corpus error of the readers.
  """
  data_dir = os.fspath(data_dir)
  if not os.path.isdir(data_dir):
    what = "is a file, not a directory" if os.path.exists(data_dir) else "does not exist"
    raise FileNotFoundError(
        f"Corpus directory data_dir={data_dir} {what}. Set --config.data.data_dir to a directory "
        f"holding files named like {file_pattern!r} (e.g. "
        f"{_format(file_pattern, split, source_lang)}), or leave it empty to use the hub id.")
  if "{lang}" in file_pattern:
    source = resolve_file(os.path.join(data_dir, _format(file_pattern, split, source_lang)),
                          f"Source file ({source_lang}, split {split!r})")
    target = resolve_file(os.path.join(data_dir, _format(file_pattern, split, target_lang)),
                          f"Target file ({target_lang}, split {split!r})")
    return load_parallel_files(source, target)
  kind = file_pattern[:-3] if file_pattern.endswith(".gz") else file_pattern
  if not kind.endswith((".tsv", ".jsonl", ".json")):
    raise ValueError(
        f"data.file_pattern={file_pattern!r} names one file per split but is neither .tsv nor "
        ".jsonl. Use a '{split}.{lang}' style pattern for two parallel text files, or a .tsv / "
        ".jsonl pattern such as '{split}.tsv'.")
  path = resolve_file(os.path.join(data_dir, _format(file_pattern, split, "")),
                      f"Corpus file (split {split!r})")
  if kind.endswith(".tsv"):
    return load_tsv(path, _column(source_field, 0, "source_field"),
                    _column(target_field, 1, "target_field"))
  return load_jsonl(path, source_field or source_lang, target_field or target_lang)


def _format(pattern: str, split: str, lang: str) -> str:
  try:
    return pattern.format(split=split, lang=lang)
  except (KeyError, IndexError) as e:
    raise ValueError(f"data.file_pattern={pattern!r} has an unknown placeholder {e}; only "
                     "{split} and {lang} are filled in.") from None


def _column(field: str, default: int, name: str) -> int:
  if not field:
    return default
  if not field.isdigit():
    raise ValueError(f"data.{name}={field!r}: for a TSV corpus it must be a column number "
                     "(0, 1, ...).")
  return int(field)


# ----------------------------------------------------------------------------- the hub


def load_hub_split(name: str, split: str, *, hub_config: str = "", source_lang: str,
                   target_lang: str, source_field: str = "", target_field: str = "",
                   translation_field: str = "translation"):
  """One split of a hub dataset as a `datasets.Dataset` with columns `source` and `target`.

  Downloads (or reads the local datasets cache) through `datasets.load_dataset(name,
  hub_config, split=split)`; the layout is then found by `hub_to_pairs`.
  """
  import datasets  # pylint: disable=g-import-not-at-top
  try:
    ds = datasets.load_dataset(name, hub_config or None, split=split)
  except (ConnectionError, FileNotFoundError) as e:  # Offline, or no such dataset.
    raise FileNotFoundError(
        f"Hub dataset {name!r} (config {hub_config!r}, split {split!r}) could not be loaded: {e}. "
        "Check the name (data.dataset); without internet, set data.data_dir to a local corpus "
        "(or use a copy in the datasets cache with HF_DATASETS_OFFLINE=1).") from e
  except ValueError as e:
    raise ValueError(f"Loading split {split!r} of hub dataset {name!r} (config "
                     f"{hub_config!r}) failed: {e}. Check data.train_split / data.eval_split "
                     "and data.hub_config, or set data.data_dir for a local corpus.") from e
  return hub_to_pairs(ds, source_lang=source_lang, target_lang=target_lang,
                      source_field=source_field, target_field=target_field,
                      translation_field=translation_field, name=f"{name}:{split}")


def hub_to_pairs(ds, *, source_lang: str, target_lang: str, source_field: str = "",
                 target_field: str = "", translation_field: str = "translation",
                 name: str = "dataset"):
  """Selects and renames a dataset's columns to `source` / `target`.

  Layouts, in this order: explicit columns `source_field` / `target_field`; a
  `translation_field` dict column keyed by language (WMT14: `{"de": ..., "en": ...}`); plain
  columns named by the language codes (e.g. a Multi30k mirror's "en" / "de").
  """
  columns = ds.column_names
  src_col, tgt_col = source_field or source_lang, target_field or target_lang
  if not (source_field or target_field) and translation_field in columns:
    def split_translation(batch):
      pairs = batch[translation_field]
      return {"source": [(p.get(source_lang) or "").strip() for p in pairs],
              "target": [(p.get(target_lang) or "").strip() for p in pairs]}
    first = ds[0][translation_field] if len(ds) else {}
    missing = [lang for lang in (source_lang, target_lang) if lang not in first]
    if missing:
      raise ValueError(f"{name}: column {translation_field!r} has languages {sorted(first)}, "
                       f"not {missing}. Check data.source_lang / data.target_lang.")
    ds = ds.map(split_translation, batched=True, remove_columns=columns,
                desc=f"Selecting {source_lang}-{target_lang}")
  elif src_col in columns and tgt_col in columns:
    ds = ds.select_columns([src_col, tgt_col])
    if (src_col, tgt_col) != ("source", "target"):
      ds = ds.rename_columns({src_col: "__source", tgt_col: "__target"})
      ds = ds.rename_columns({"__source": "source", "__target": "target"})
  else:
    raise ValueError(
        f"{name}: cannot find the {source_lang}->{target_lang} text. Columns are {columns}; "
        f"expected a {translation_field!r} dict column or columns {src_col!r} and {tgt_col!r}. "
        "Set data.source_field / data.target_field to the column names.")
  if len(ds) == 0:
    raise ValueError(f"{name} is empty (0 rows).")
  return ds
