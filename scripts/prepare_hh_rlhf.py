"""Prepares both HH-RLHF test splits end to end and prints their ingestion reports.

For harmless-base and helpful-base (../shared/data/hh-rlhf/<subset>/test.jsonl.gz) this runs
ingest -> dedup -> prepared JSONL + manifest (OUT/prepared/...), then tokenisation -> TFDS
array_record dataset + manifest (OUT/tfds/...), and prints each ingestion report, the dataset ids
and the tokenised row lengths. Running it again reuses every verified output.

Usage: python scripts/prepare_hh_rlhf.py --out DIR [--data ../shared/data] [--tokenizer PATH]
                                         [--max_len N]
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tensorflow_datasets as tfds  # noqa: E402

from rlhf_jax.data import manifest, pipeline  # noqa: E402
from rlhf_jax.data.tokenizer import Tokenizer  # noqa: E402
from rlhf_jax.data.validation import IngestionReport  # noqa: E402

SUBSETS = ("harmless-base", "helpful-base")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, type=pathlib.Path, help="output folder")
  parser.add_argument("--data", type=pathlib.Path, default=ROOT.parent / "shared" / "data",
                      help="folder holding hh-rlhf/<subset>/test.jsonl.gz")
  parser.add_argument("--tokenizer", type=pathlib.Path,
                      default=ROOT / "tests" / "testdata" / "tokenizer_512.model")
  parser.add_argument("--max_len", type=int, default=None,
                      help="most tokens per row (longer pairs are dropped and counted)")
  args = parser.parse_args()
  tfds.disable_progress_bar()
  tokenizer = Tokenizer.load(args.tokenizer)
  print(f"tokenizer {tokenizer.id} ({tokenizer.vocab_size} pieces) from {args.tokenizer}")
  for subset in SUBSETS:
    path = args.data / "hh-rlhf" / subset / "test.jsonl.gz"
    start = time.perf_counter()
    report = IngestionReport()
    manifest_path = pipeline.prepare_raw(path, args.out, reader="hh_rlhf", tokenizer=tokenizer,
                                         report=report)
    prepared = manifest.load_manifest(manifest_path)
    print(f"\n== {subset}")
    if report.records_read:
      print(report.summary())
    else:  # reused: the report of the run that made it lives on in the manifest's counts
      print(f"(reused {manifest_path.parent}) filters: {prepared['filters']}")
    print(f"prepared {prepared['dataset_id']}: {manifest_path}")
    tokenized = IngestionReport()
    tfds_dir, m = pipeline.build_tfds_from_prepared(manifest_path, tokenizer, args.out / "tfds",
                                                    max_len=args.max_len, report=tokenized)
    print(f"tfds     {m['dataset_id']}: {tfds_dir}")
    for split, entry in m["splits"].items():
      print(f"  {split}: {entry['count']} pairs, longest row "
            f"{m['params']['max_row_len'][split]} tokens, "
            f"{sum(f['bytes'] for f in entry['files']):,} bytes of array_record")
    if tokenized.records_read:
      print(f"  tokenisation: read {tokenized.records_read}, kept {tokenized.kept}, "
            f"dropped {dict(tokenized.dropped)}, truncated {dict(tokenized.truncated)}")
    print(f"  {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
  main()
