"""Dawid-Skene versus majority vote on the lab's simulated annotator panel, scored against gold.

Builds the lab's multi-annotator review pairs (`--pairs` pairs, `--per_pair` distinct panel
members each) through `prepare_lab_datasets` (corpora "reviews/preferences_majority" and
"reviews/preferences_dawid_skene": Comparison rows -> the "comparisons" reader ->
`aggregate_comparisons`), reads the aggregated train split back and prints

  * the accuracy of each aggregation against the gold labels (pairs whose gold rewards are
    exactly equal are left out), computed from the prepared records with `gold_reward`;
  * per annotator: the Dawid-Skene (DS) reliability recovered from the comparison rows
    (`annotators.dawid_skene`, implied accuracy sum_y prior_y confusion[r, y, y]) next to the
    true agreement rate with gold (empirical, and expected under the annotator's model), and
    the number of labels.

Usage: python scripts/lab_annotator_recovery.py [--out DIR] [--pairs 2000] [--per_pair 3]
                                                [--seed 0] [--panel default|noisy]
"""
from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rlhf_jax.data import annotators as agreement  # noqa: E402
from rlhf_jax.data import manifest, multi_annotator, records  # noqa: E402
from rlhf_jax.data.schemas import LABELS  # noqa: E402
from rlhf_jax.lab import annotators, corpora, datasets, gold  # noqa: E402

# Two experts-ish and three random clickers: majority of three is often outvoted by noise.
NOISY_PANEL = (annotators.SimulatedAnnotator("expert", temperature=0.1),
               annotators.SimulatedAnnotator("careful", temperature=0.5),
               *(annotators.SimulatedAnnotator(f"random_{k}", kind="random") for k in (1, 2, 3)))
AGGREGATED = {"majority": "reviews/preferences_majority",
              "dawid_skene": "reviews/preferences_dawid_skene"}


def split_file(manifest_path: pathlib.Path, split: str) -> pathlib.Path:
  m = manifest.verify_manifest(manifest_path)
  return manifest_path.parent / m["splits"][split]["files"][0]["path"]


def gold_accuracy(rows: list[dict]) -> tuple[float, int, int]:
  """(share of decided pairs whose chosen response has the higher gold reward, gold ties, ties)."""
  prompts = [r["prompt"] for r in rows]
  g_chosen = gold.gold_reward(prompts, [r["chosen"] for r in rows]).total
  g_rejected = gold.gold_reward(prompts, [r["rejected"] for r in rows]).total
  tie = np.array([r["tie"] for r in rows])
  scored = g_chosen != g_rejected
  correct = (g_chosen > g_rejected) & ~tie  # an aggregated tie on a pair with a winner is wrong
  return float(correct[scored].mean()), int((~scored).sum()), int(tie.sum())


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", type=pathlib.Path, default=None,
                      help="folder for the prepared datasets (default: a temporary folder)")
  parser.add_argument("--pairs", type=int, default=2000)
  parser.add_argument("--per_pair", type=int, default=3)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--panel", choices=("default", "noisy"), default="default")
  args = parser.parse_args()
  panel = annotators.DEFAULT_PANEL if args.panel == "default" else NOISY_PANEL
  config = dataclasses.replace(corpora.LabConfig(seed=args.seed), panel=panel,
                               num_preferences_train=args.pairs, num_preferences_eval=0,
                               annotators_per_pair=args.per_pair)
  out = args.out or pathlib.Path(tempfile.mkdtemp(prefix="lab_annotators_"))
  paths = datasets.prepare_lab_datasets(config, out, corpora=tuple(AGGREGATED.values()))
  print(f"{args.pairs} pairs x {args.per_pair} annotators from the {args.panel} panel "
        f"(seed {args.seed}); datasets in {out}")

  print("\naccuracy against gold (gold-tied pairs left out):")
  for method, corpus in AGGREGATED.items():
    rows = records.read_jsonl_dicts(split_file(paths[corpus], "train"))
    accuracy, gold_ties, ties = gold_accuracy(rows)
    print(f"  {method:12s} {accuracy:.4f}   ({len(rows)} pairs, {gold_ties} gold ties, "
          f"{ties} aggregated ties)  {manifest.load_manifest(paths[corpus])['dataset_id']}")

  # The comparison rows the aggregations were made from (a source of the prepared dataset).
  raw = next(pathlib.Path(s["path"]) for s in manifest.load_manifest(
      paths[AGGREGATED["dawid_skene"]])["sources"] if "_train" in s["name"])
  comparisons, _ = multi_annotator.read_comparisons(raw)
  items = {item: i for i, item in enumerate(dict.fromkeys(c.item_id for c in comparisons))}
  ids = [a.annotator_id for a in panel]
  ann = agreement.validate_annotations(
      [items[c.item_id] for c in comparisons], [ids.index(c.annotator_id) for c in comparisons],
      [LABELS.index(c.label) for c in comparisons], num_classes=len(LABELS),
      num_items=len(items), num_annotators=len(ids))
  ds = agreement.dawid_skene(ann)

  # True agreement with gold, from the lab's own arrays (same pairs, same labels).
  labelled = datasets.LabRecords(config).labelled("train")
  gold_I = annotators.gold_labels(labelled.gold_a_I, labelled.gold_b_I)
  lab = labelled.labels
  scored_A = gold_I[lab.item_A] != annotators.LABEL_TIE
  agree_A = lab.label_A == gold_I[lab.item_A]
  expected_A = np.where(gold_I[lab.item_A] == annotators.LABEL_A, lab.prob_a_A, 1 - lab.prob_a_A)
  print("\nper annotator: DS reliability vs true agreement with gold")
  print(f"  {'annotator':16s} {'DS':>7s} {'true':>7s} {'model':>7s} {'labels':>7s}")
  for r, annotator_id in enumerate(ids):
    rows = (lab.annotator_A == r) & scored_A
    print(f"  {annotator_id:16s} {ds.reliability_R[r]:7.4f} {agree_A[rows].mean():7.4f} "
          f"{expected_A[rows].mean():7.4f} {int((lab.annotator_A == r).sum()):7d}")
  print(f"\nDS: {ds.num_iters} EM iterations, converged={ds.converged}, prior (a, b, tie) = "
        f"{np.round(ds.prior_Y, 4).tolist()}")


if __name__ == "__main__":
  main()
