"""Preparing a dataset version: ingest, validate, dedup, prompt-level split, files + manifest.

`prepare_dataset` streams every source through its reader and writes `<split>.jsonl.gz` files and
`manifest.json` into `out_dir`. Outputs are written to temporary files and renamed only after the
last source was read without error, and the manifest is written last, so a failed run leaves the
folder as it was (no partial outputs; a previous version stays intact).

Example:
  manifest = prepare_dataset(
      "hh_helpful", ["../shared/data/hh-rlhf/helpful-base/test.jsonl.gz"], "/tmp/hh_helpful",
      reader="hh_rlhf", eval_fraction=0.1, seed=0)
  manifest["dataset_id"]   # 'hh_helpful@3f0c...'
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
from typing import Any, Callable, Iterator, Literal, Mapping, Sequence

from rlhf_jax.data import dedup, hh_rlhf, ingest, manifest, multi_annotator, records
from rlhf_jax.data.tokenizer import Tokenizer
from rlhf_jax.data.validation import IngestionReport, ValidationPolicy

READERS: Mapping[str, Callable[..., Iterator[Any]]] = {
    "preferences": ingest.iter_preferences,
    "hh_rlhf": hh_rlhf.iter_hh_rlhf,
    "sft": ingest.iter_sft,
    "prompts": ingest.iter_prompts,
    # Multi-annotator comparisons, aggregated into weighted preferences (Dawid-Skene by default).
    "comparisons": multi_annotator.iter_aggregated_preferences,
}


def prepare_dataset(name: str, sources: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                    reader: Literal["preferences", "hh_rlhf", "sft", "prompts",
                                    "comparisons"] = "preferences",
                    reader_options: Mapping[str, Any] | None = None,
                    policy: ValidationPolicy = ingest.DEFAULT_POLICY,
                    tokenizer: Tokenizer | None = None,
                    dedup_mode: Literal["exact", "normalized"] | None = "normalized",
                    eval_fraction: float = 0.0, seed: int = 0,
                    params: Mapping[str, Any] | None = None,
                    report: IngestionReport | None = None) -> dict[str, Any]:
  """Builds one dataset version in `out_dir` and returns its manifest.

  Args:
    name: dataset name; the id is "<name>@<hash>".
    sources: input files, read in order with `reader`.
    out_dir: output folder (created); gets train.jsonl.gz [, eval.jsonl.gz] and manifest.json.
    reader: record layout of the sources (see `READERS`).
    reader_options: extra keyword arguments of the reader, recorded in the manifest (e.g.
      {"method": "majority", "min_votes": 2} for "comparisons").
    policy: validation policy for empty / identical / over-long examples.
    tokenizer: enables token-length limits of the policy; its id goes into the manifest.
    dedup_mode: drop repeated examples (pairs for preference/SFT, prompts for prompt data) by
      exact or normalised text, or None to keep them.
    eval_fraction: expected fraction of distinct prompts put in the eval split (0: train only).
    seed: seed of the prompt-level split.
    params: extra creation parameters recorded in the manifest.
    report: if given, receives this run's merged counts and warnings (its `summary()` is the
      human-readable ingestion report; the manifest keeps only the counts).
  """
  if reader not in READERS:
    raise ValueError(f"reader must be one of {sorted(READERS)}, got {reader!r}")
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  split_names = ["train", "eval"] if eval_fraction > 0 else ["train"]
  outputs = {s: out_dir / f"{s}.jsonl.gz" for s in split_names}
  counts = dict.fromkeys(split_names, 0)
  reports = []
  seen: set[str] = set()
  key = ((lambda e: dedup.prompt_key(e.prompt, dedup_mode)) if reader == "prompts"
         else (lambda e: dedup.pair_key(e, dedup_mode)))
  with contextlib.ExitStack() as stack:
    writers = {s: stack.enter_context(records.jsonl_writer(p)) for s, p in outputs.items()}
    for src in sources:
      src_report = IngestionReport(source=str(src))
      reports.append(src_report)
      removed = 0
      for ex in READERS[reader](src, src_report, policy=policy, tokenizer=tokenizer,
                                **(reader_options or {})):
        if dedup_mode is not None:
          k = key(ex)
          if k in seen:
            removed += 1
            continue
          seen.add(k)
        split = ("eval" if eval_fraction > 0 and dedup.eval_score(ex.prompt, seed) < eval_fraction
                 else "train")
        writers[split](ex)
        counts[split] += 1
      src_report.remove_kept(
          f"duplicate_{'prompt_' if reader == 'prompts' else ''}{dedup_mode}", removed)
  total = IngestionReport.merge(reports, source=name)
  if report is not None:
    for field in dataclasses.fields(IngestionReport):
      setattr(report, field.name, getattr(total, field.name))
  run_params = {"reader": reader, "policy": dataclasses.asdict(policy), "dedup_mode": dedup_mode,
                "eval_fraction": eval_fraction, "seed": seed}
  if reader_options:  # only when given, so ids of datasets prepared without them do not change
    run_params["reader_options"] = dict(reader_options)
  m = manifest.build_manifest(
      name, root=out_dir, outputs=outputs, counts=counts, sources=sources, report=total,
      tokenizer_id=tokenizer.id if tokenizer is not None else None,
      params={**run_params, **(params or {})})
  manifest.write_manifest(out_dir / "manifest.json", m)
  return m
