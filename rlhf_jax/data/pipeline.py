"""From a raw file to resumable training batches: prepare -> tokenise -> TFDS -> grain loader.

TFDS = TensorFlow Datasets (array_record files, read without TensorFlow), SFT = supervised
fine-tuning. Three stages, each with a verified manifest:

  1. `prepare.prepare_dataset`: raw file(s) -> validated, deduplicated, split JSONL + manifest.
  2. `build_tfds_from_prepared`: verifies that manifest, tokenises every split
     (`tokenization`), writes a TFDS array_record dataset and a manifest of its own next to the
     shards: parent dataset id, tokenizer id, settings, the sha256 of every array_record file
     and of the TFDS metadata files. Its id is the hash of that content, so rebuilding the same
     inputs gives the same id. The target folder name carries a hash of the inputs (parent id,
     tokenizer id, settings), and a target whose manifest verifies is reused without rebuilding.
  3. `open_tfds_dataset` verifies the manifest (a tampered or truncated file is refused with an
     error naming it) and opens the splits; `load_preference_batches` / `load_sft_batches` /
     `load_prompt_batches` wrap all of it: give them a raw file, a prepared manifest or a TFDS
     folder, and get a `loader.Loader` of `batching.PreferenceBatch` / `SequenceBatch` (or
     `packing.PackedRows` with `pack=True`) / `PromptBatch`, resumable through
     `get_state()` / `set_state()`.

Several processes must not build the same target at once: on a multi-host run build it on
process 0 first (e.g. call `load_*_batches` there, then a barrier), then load everywhere.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import pathlib
import re
from typing import Any, Callable, Literal, Mapping, Sequence

from rlhf_jax.data import batching, dedup, ingest, loader, manifest, packing, prepare, records
from rlhf_jax.data import tfds_builders, tokenization
from rlhf_jax.data.chat import DEFAULT_TEMPLATE, ChatTemplate
from rlhf_jax.data.schemas import PreferenceExample, PromptExample, SFTExample
from rlhf_jax.data.tokenizer import Tokenizer
from rlhf_jax.data.validation import IngestionReport, ValidationPolicy

Kind = Literal["preference", "sft", "prompt"]

FORMAT = "tfds_array_record"  # manifest params["format"] of a dataset built here
TFDS_VERSION = "1.0.0"
MANIFEST_FILE = "manifest.json"
_METADATA_FILES = ("dataset_info.json", "features.json")

# Kind of records each prepare reader produces, and the example class of its JSONL files.
READER_KINDS: Mapping[str, Kind] = {"preferences": "preference", "hh_rlhf": "preference",
                                    "comparisons": "preference", "sft": "sft",
                                    "prompts": "prompt"}
_EXAMPLE_CLASSES = {"preference": PreferenceExample, "sft": SFTExample, "prompt": PromptExample}
_DEFAULT_READERS = {"preference": "preferences", "sft": "sft", "prompt": "prompts"}


def _snake(name: str) -> str:
  """A TFDS-safe lower snake case name ("hh-rlhf/helpful" -> "hh_rlhf_helpful")."""
  snake = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
  return snake if re.match(r"^[a-z]", snake) else f"d_{snake}"


def _short_hash(obj: Any) -> str:
  canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
  return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:10]


def _template_dict(template: ChatTemplate) -> dict[str, Any]:
  return {"role_names": dict(sorted(template.role_names.items())),
          "separator": template.separator}


def _reuse(manifest_path: pathlib.Path, want: Mapping[str, Any], key: str,
           verify: Callable[[pathlib.Path], dict[str, Any]] = manifest.verify_manifest
           ) -> dict | None:
  """The manifest at `manifest_path` when `verify` passes and params[key] == want, else None."""
  if not manifest_path.is_file():
    return None
  try:
    m = verify(manifest_path)
  except manifest.ManifestError as e:
    logging.warning("rebuilding %s: %s", manifest_path.parent, e)
    return None
  return m if m["params"].get(key) == json.loads(json.dumps(want)) else None


def _read_examples(path: pathlib.Path, kind: Kind) -> list[Any]:
  cls = _EXAMPLE_CLASSES[kind]
  return [cls.from_dict(d) for d in records.read_jsonl_dicts(path)]


def _row_length(kind: Kind, record: Mapping[str, Any]) -> int:
  if kind == "preference":
    return len(record["prompt_ids"]) + max(len(record["chosen_ids"]), len(record["rejected_ids"]))
  return len(record["token_ids"] if kind == "sft" else record["prompt_ids"])


def build_tfds_from_prepared(manifest_path: str | os.PathLike, tokenizer: Tokenizer,
                             data_dir: str | os.PathLike, *, kind: Kind | None = None,
                             max_len: int | None = None, policy: ValidationPolicy | None = None,
                             template: ChatTemplate = DEFAULT_TEMPLATE,
                             loss_on_prompt_assistant_turns: bool = False,
                             name: str | None = None, splits: Sequence[str] | None = None,
                             report: IngestionReport | None = None) -> tuple[str, dict[str, Any]]:
  """Tokenises a dataset made by `prepare_dataset` into a TFDS array_record dataset + manifest.

  Args:
    manifest_path: the prepared dataset's manifest.json (verified first).
    tokenizer: the tokenizer; its id is recorded and part of the target's name.
    data_dir: TFDS root; the dataset goes to `data_dir/<name>/1.0.0`.
    kind: record kind; defaults to the prepare reader's ("prompt" is also allowed for
      preference and SFT data: their distinct prompts, repeats counted as
      "duplicate_prompt_normalized").
    max_len: most tokens per row; None: no limit.
    policy: over-long handling; defaults to the policy the dataset was prepared with.
    template: chat template.
    loss_on_prompt_assistant_turns: SFT only, see `chat.render`.
    name: TFDS name; default "<prepared name>_<kind>_<hash of the inputs>".
    splits: the prepared splits to build (default: all), e.g. ["eval"] for evaluation only.
    report: if given, receives the tokenisation counts (over all splits) of a build; a reused
      target leaves it untouched.

  Returns:
    (TFDS folder, its manifest). Splits whose records were all dropped are left out.

  Raises:
    manifest.ManifestError: the prepared dataset does not verify.
    ValueError: unknown reader or unsupported kind, or no split left.
  """
  manifest_path = pathlib.Path(manifest_path)
  parent = manifest.verify_manifest(manifest_path)
  reader = parent.get("params", {}).get("reader")
  if reader not in READER_KINDS:
    raise ValueError(f"{manifest_path}: prepared with reader {reader!r}; expected one of "
                     f"{sorted(READER_KINDS)}")
  source_kind = READER_KINDS[reader]
  kind = kind or source_kind
  if kind not in (source_kind, "prompt"):
    raise ValueError(f"{manifest_path}: cannot build {kind!r} records from {source_kind!r} data")
  if policy is None:
    saved = parent["params"].get("policy")
    policy = ValidationPolicy(**saved) if saved else ingest.DEFAULT_POLICY
  if splits is not None:
    unknown = sorted(set(splits) - set(parent["splits"]))
    if unknown:
      raise KeyError(f"{manifest_path}: no split(s) {unknown}; available: "
                     f"{sorted(parent['splits'])}")
  settings = {"kind": kind, "parent_dataset_id": parent["dataset_id"],
              "splits": None if splits is None else sorted(splits),
              "tokenizer_id": tokenizer.id, "max_len": max_len,
              "policy": dataclasses.asdict(policy), "template": _template_dict(template),
              "loss_on_prompt_assistant_turns": loss_on_prompt_assistant_turns}
  name = name or f"{_snake(parent['name'])}_{kind}_{_short_hash(settings)}"
  tfds_dir = pathlib.Path(data_dir) / name / TFDS_VERSION
  reused = _reuse(tfds_dir / MANIFEST_FILE, settings, "settings", _verify_tfds)
  if reused is not None:
    return str(tfds_dir), reused

  tokenize = {"preference": tokenization.tokenize_preferences,
              "sft": functools.partial(
                  tokenization.tokenize_sft,
                  loss_on_prompt_assistant_turns=loss_on_prompt_assistant_turns),
              "prompt": tokenization.tokenize_prompts}[kind]
  records_by_split, reports, sources = {}, [], []
  for split, entry in sorted(parent["splits"].items()):
    if splits is not None and split not in splits:
      continue
    split_report = IngestionReport(source=f"{parent['dataset_id']}:{split}")
    split_records = []
    for file_entry in entry["files"]:
      path = manifest_path.parent / file_entry["path"]
      sources.append(path)
      split_records += tokenize(_read_examples(path, source_kind), tokenizer, template=template,
                                max_len=max_len, policy=policy, report=split_report, path=path)
    if kind != source_kind:  # prompts of pairs / demonstrations: one record per prompt
      seen, distinct = set(), []
      for record in split_records:
        key = dedup.normalize_text(record["prompt"])
        if key not in seen:
          seen.add(key)
          distinct.append(record)
      split_report.remove_kept("duplicate_prompt_normalized", len(split_records) - len(distinct))
      split_records = distinct
    reports.append(split_report)
    if split_records:
      records_by_split[split] = split_records
  if not records_by_split:
    raise ValueError(f"{manifest_path}: no records left to build (every split is empty)")
  total = IngestionReport.merge(reports, source=name)
  if report is not None:
    for field in dataclasses.fields(IngestionReport):
      setattr(report, field.name, getattr(total, field.name))

  tfds_builders.build_dataset(kind, records_by_split, data_dir, name, TFDS_VERSION,
                              with_token_ids=True, overwrite=True)
  outputs = {split: sorted(tfds_dir.glob(f"{name}-{split}.array_record-*"))
             for split in records_by_split}
  m = manifest.build_manifest(
      name, root=tfds_dir, outputs=outputs,
      counts={split: len(recs) for split, recs in records_by_split.items()}, sources=sources,
      report=total, tokenizer_id=tokenizer.id,
      params={"format": FORMAT, "kind": kind, "parent_dataset_id": parent["dataset_id"],
              "settings": settings,
              "max_row_len": {split: max(_row_length(kind, r) for r in recs)
                              for split, recs in records_by_split.items()},
              "metadata_files": {f: manifest.file_digest(tfds_dir / f)
                                 for f in _METADATA_FILES}})
  manifest.write_manifest(tfds_dir / MANIFEST_FILE, m)
  return str(tfds_dir), m


def _verify_tfds(manifest_path: pathlib.Path) -> dict[str, Any]:
  """`verify_manifest` plus the TFDS metadata files; returns the manifest."""
  m = manifest.verify_manifest(manifest_path)
  if m["params"].get("format") != FORMAT:
    raise manifest.ManifestError(f"{manifest_path}: not a TFDS dataset built by "
                                 "build_tfds_from_prepared")
  for file, digest in m["params"]["metadata_files"].items():
    path = manifest_path.parent / file
    if not path.is_file() or manifest.file_digest(path) != digest:
      raise manifest.ManifestError(f"{path}: missing or modified; it does not match manifest "
                                   f"{manifest_path}")
  return m


def open_tfds_dataset(tfds_dir: str | os.PathLike
                      ) -> tuple[dict[str, tfds_builders.RecordSource], dict[str, Any]]:
  """Verifies a dataset built by `build_tfds_from_prepared` and opens every split.

  Raises:
    manifest.ManifestError: naming the manifest or the file that is missing, truncated or
      modified (array_record shards and TFDS metadata files are all checked).
  """
  tfds_dir = pathlib.Path(tfds_dir)
  manifest_path = tfds_dir / MANIFEST_FILE
  m = _verify_tfds(manifest_path)
  splits = {split: tfds_builders.open_split(tfds_dir, split) for split in m["splits"]}
  for split, source in splits.items():
    if len(source) != m["splits"][split]["count"]:
      raise manifest.ManifestError(f"{tfds_dir}: split {split!r} has {len(source)} records, "
                                   f"manifest {manifest_path} says {m['splits'][split]['count']}")
  return splits, m


def prepare_raw(path: str | os.PathLike, data_dir: str | os.PathLike, *,
                reader: str, tokenizer: Tokenizer | None = None,
                policy: ValidationPolicy = ingest.DEFAULT_POLICY,
                reader_options: Mapping[str, Any] | None = None, eval_fraction: float = 0.0,
                split_seed: int = 0,
                dedup_mode: Literal["exact", "normalized"] | None = "normalized",
                report: IngestionReport | None = None) -> pathlib.Path:
  """`prepare_dataset` of one raw file into `data_dir/prepared/<name>_<hash>`; returns its manifest.

  The name comes from the file ("helpful-base/test.jsonl.gz" -> "helpful_base_test"); the hash
  covers the file's sha256 and every option, and a folder whose manifest verifies is reused
  (then `report` is left untouched). Arguments are those of `prepare.prepare_dataset`
  (`split_seed` is its `seed`); `report` receives the ingestion report of a fresh run.
  """
  path = pathlib.Path(path)
  name = _snake(ingest.default_source(path))
  options = {"source_sha256": manifest.file_digest(path)["sha256"], "reader": reader,
             "reader_options": dict(reader_options or {}), "policy": dataclasses.asdict(policy),
             "eval_fraction": eval_fraction, "split_seed": split_seed, "dedup_mode": dedup_mode,
             "tokenizer_id": tokenizer.id if tokenizer is not None else None}
  out_dir = pathlib.Path(data_dir) / "prepared" / f"{name}_{_short_hash(options)}"
  if _reuse(out_dir / MANIFEST_FILE, options, "prepare_options") is None:
    prepare.prepare_dataset(name, [path], out_dir, reader=reader, reader_options=reader_options,
                            policy=policy, tokenizer=tokenizer, dedup_mode=dedup_mode,
                            eval_fraction=eval_fraction, seed=split_seed,
                            params={"prepare_options": options}, report=report)
  return out_dir / MANIFEST_FILE


def materialize(path_or_manifest: str | os.PathLike, tokenizer: Tokenizer, *, kind: Kind,
                data_dir: str | os.PathLike | None = None, reader: str | None = None,
                reader_options: Mapping[str, Any] | None = None,
                policy: ValidationPolicy | None = None, eval_fraction: float = 0.0,
                max_len: int | None = None, template: ChatTemplate = DEFAULT_TEMPLATE,
                loss_on_prompt_assistant_turns: bool = False) -> pathlib.Path:
  """The TFDS folder for a raw file, a prepared manifest or a TFDS folder (built when needed).

  A path named manifest.json, or a folder holding one, is a prepared dataset or a TFDS dataset
  (told apart by the manifest); anything else is a raw data file read with `reader` (default:
  the kind's usual reader). Raw and prepared inputs need `data_dir` for what is built
  (`data_dir/prepared`, `data_dir/tfds`); the ingestion and tokenisation reports of a build are
  logged at INFO level and kept as counts in the manifests. A TFDS folder is used as it is:
  the build options only apply to what is built here.
  """
  path = pathlib.Path(path_or_manifest)
  manifest_path = path / MANIFEST_FILE if path.is_dir() else path
  if path.is_dir() and not manifest_path.is_file():
    raise FileNotFoundError(f"{path}: folder without {MANIFEST_FILE}")
  if manifest_path.name == MANIFEST_FILE:
    m = manifest.load_manifest(manifest_path)
    if m.get("params", {}).get("format") == FORMAT:
      if m["params"]["kind"] != kind:
        raise ValueError(f"{manifest_path}: holds {m['params']['kind']!r} records, not {kind!r}")
      if m["tokenizer_id"] != tokenizer.id:
        raise ValueError(f"{manifest_path}: tokenised with tokenizer {m['tokenizer_id']}, but "
                         f"the given tokenizer is {tokenizer.id}")
      return manifest_path.parent
  if data_dir is None:
    raise ValueError(f"{path}: data_dir is needed to build datasets from a raw or prepared file")
  if manifest_path.name != MANIFEST_FILE:
    ingested = IngestionReport()
    manifest_path = prepare_raw(
        path, data_dir, reader=reader or _DEFAULT_READERS[kind], tokenizer=tokenizer,
        policy=policy or ingest.DEFAULT_POLICY, reader_options=reader_options,
        eval_fraction=eval_fraction, report=ingested)
    if ingested.records_read:
      logging.info("ingested %s\n%s", path, ingested.summary())
  tokenized = IngestionReport()
  tfds_dir, _ = build_tfds_from_prepared(
      manifest_path, tokenizer, pathlib.Path(data_dir) / "tfds", kind=kind, max_len=max_len,
      policy=policy, template=template,
      loss_on_prompt_assistant_turns=loss_on_prompt_assistant_turns, report=tokenized)
  if tokenized.records_read:
    logging.info("tokenised into %s\n%s", tfds_dir, tokenized.summary())
  return pathlib.Path(tfds_dir)


def _loader(kind: Kind, path_or_manifest, tokenizer: Tokenizer, *, batch_size: int, seed: int,
            buckets: Sequence[int] | None, split: str, data_dir, max_len: int | None,
            shuffle: bool, num_epochs: int | None, drop_remainder: bool,
            process_index: int | None, process_count: int | None, pack: bool = False,
            row_length: int | None = None, row_buckets: Sequence[int] | None = None,
            **build_options) -> loader.Loader:
  tfds_dir = materialize(path_or_manifest, tokenizer, kind=kind, data_dir=data_dir,
                         max_len=max_len, **build_options)
  splits, m = open_tfds_dataset(tfds_dir)
  base_split = re.split(r"[\[+]", split, maxsplit=1)[0]
  if base_split not in splits:
    raise KeyError(f"split {base_split!r} not in {tfds_dir}; available: {sorted(splits)}")
  source = splits[split] if split in splits else tfds_builders.open_split(tfds_dir, split)
  longest = max_len or m["params"]["max_row_len"][base_split]
  buckets = tuple(buckets) if buckets is not None else batching.bucket_lengths(longest)
  pad_id = tokenizer.pad_id
  identity = {"dataset_id": m["dataset_id"], "split": split, "kind": kind,
              "buckets": list(buckets), "pack": pack}
  if kind == "preference":
    batch_fn = functools.partial(batching.collate_preferences, buckets=buckets, pad_id=pad_id)
  elif kind == "prompt":
    batch_fn = functools.partial(batching.collate_prompts, buckets=buckets, pad_id=pad_id)
  elif pack:
    row_length = row_length or max(buckets)
    row_buckets = tuple(row_buckets or batching.bucket_lengths(batch_size, min_len=1))
    identity.update(row_length=row_length, row_buckets=list(row_buckets))
    batch_fn = functools.partial(packing.collate_packed_sft, row_length=row_length,
                                 pad_id=pad_id, row_buckets=row_buckets)
  else:
    batch_fn = functools.partial(batching.collate_sft, buckets=buckets, pad_id=pad_id)
  return loader.make_loader(source, batch_size=batch_size, seed=seed, shuffle=shuffle,
                            num_epochs=num_epochs, batch_fn=batch_fn, process_index=process_index,
                            process_count=process_count, drop_remainder=drop_remainder,
                            identity=identity)


def load_preference_batches(path_or_manifest: str | os.PathLike, tokenizer: Tokenizer, *,
                            batch_size: int, seed: int, buckets: Sequence[int] | None = None,
                            split: str = "train", data_dir: str | os.PathLike | None = None,
                            max_len: int | None = None, shuffle: bool = True,
                            num_epochs: int | None = None, drop_remainder: bool = True,
                            process_index: int | None = None, process_count: int | None = None,
                            **build_options) -> loader.Loader:
  """A resumable loader of `batching.PreferenceBatch`es (weights, margins, ties included).

  Args:
    path_or_manifest: a raw data file, a prepared dataset's manifest.json (or its folder), or a
      TFDS folder built here (see `materialize`).
    tokenizer: the tokenizer (must match a TFDS folder's).
    batch_size: rows per batch on this process (pairs here; examples read per batch when
      packing SFT data).
    seed: shuffle seed.
    buckets: padded lengths; default `batching.bucket_lengths(max_len or longest row)`.
    split: split to read ("train", "eval", or a TFDS slice such as "train[:10%]").
    data_dir: where prepared and TFDS datasets are written (needed unless given a TFDS folder).
    max_len: most tokens per row at tokenisation; over-long rows follow the policy.
    shuffle, num_epochs, drop_remainder, process_index, process_count: see `loader.make_loader`.
    **build_options: reader, reader_options, policy, eval_fraction, template (see `materialize`).

  Example:
    batches = load_preference_batches("prefs.jsonl", tok, batch_size=8, seed=0, data_dir=work)
    it = iter(batches); batch = next(it); state = it.get_state()   # resume: it.set_state(state)
  """
  return _loader("preference", path_or_manifest, tokenizer, batch_size=batch_size, seed=seed,
                 buckets=buckets, split=split, data_dir=data_dir, max_len=max_len,
                 shuffle=shuffle, num_epochs=num_epochs, drop_remainder=drop_remainder,
                 process_index=process_index, process_count=process_count, **build_options)


def load_sft_batches(path_or_manifest: str | os.PathLike, tokenizer: Tokenizer, *,
                     batch_size: int, seed: int, buckets: Sequence[int] | None = None,
                     split: str = "train", data_dir: str | os.PathLike | None = None,
                     max_len: int | None = None, shuffle: bool = True,
                     num_epochs: int | None = None, drop_remainder: bool = True,
                     process_index: int | None = None, process_count: int | None = None,
                     pack: bool = False, row_length: int | None = None,
                     row_buckets: Sequence[int] | None = None,
                     **build_options) -> loader.Loader:
  """A resumable loader of `batching.SequenceBatch`es, or `packing.PackedRows` with pack=True.

  Packing reads `batch_size` examples per batch and packs them first-fit into rows of
  `row_length` (default: the largest bucket); the row count is padded up to one of
  `row_buckets` (default: powers of two up to batch_size). Pass
  `loss_on_prompt_assistant_turns=True` to train on earlier assistant turns too. Other
  arguments as `load_preference_batches`.
  """
  return _loader("sft", path_or_manifest, tokenizer, batch_size=batch_size, seed=seed,
                 buckets=buckets, split=split, data_dir=data_dir, max_len=max_len,
                 shuffle=shuffle, num_epochs=num_epochs, drop_remainder=drop_remainder,
                 process_index=process_index, process_count=process_count, pack=pack,
                 row_length=row_length, row_buckets=row_buckets, **build_options)


def load_prompt_batches(path_or_manifest: str | os.PathLike, tokenizer: Tokenizer, *,
                        batch_size: int, seed: int, buckets: Sequence[int] | None = None,
                        split: str = "train", data_dir: str | os.PathLike | None = None,
                        max_len: int | None = None, shuffle: bool = True,
                        num_epochs: int | None = None, drop_remainder: bool = True,
                        process_index: int | None = None, process_count: int | None = None,
                        **build_options) -> loader.Loader:
  """A resumable loader of left-padded `batching.PromptBatch`es for generation.

  Preference or SFT data give their prompts (a prepared manifest or raw file with
  reader="preferences", "hh_rlhf", "comparisons" or "sft"). Arguments as
  `load_preference_batches`.
  """
  return _loader("prompt", path_or_manifest, tokenizer, batch_size=batch_size, seed=seed,
                 buckets=buckets, split=split, data_dir=data_dir, max_len=max_len,
                 shuffle=shuffle, num_epochs=num_epochs, drop_remainder=drop_remainder,
                 process_index=process_index, process_count=process_count, **build_options)
