"""An annotator panel measured against the truth: agreement, kappas, majority vote vs Dawid-Skene.

The lab knows every pair's gold reward, so each simulated annotator's labels can be scored
against the noise-free gold label (0: a preferred, 1: b preferred, 2: tie; `lab.gold_labels`).
Pairs whose gold rewards are exactly equal ("gold ties") have no right answer and are left out
of every agreement and accuracy below.

Per annotator r (over r's judgements of pairs with a gold winner):
  gold_agreement   share of labels equal to the gold label
  gold_kappa       Cohen's kappa between r's labels and the gold labels (chance-corrected)
  loo_agreement    agreement with the majority of the OTHER annotators of the same pairs
                   (`data.annotators.leave_one_out_agreement`; what can be measured without gold)
  ds_reliability   the accuracy Dawid-Skene (DS) infers for r from the labels alone
Panel: Fleiss' kappa over all judgements (NaN with one judgement per pair), the pairwise Cohen's
kappa matrix, and the accuracy against gold of the majority vote (ties between the top labels
count as a "tie" label, which is wrong on a pair with a winner) and of the DS posterior's most
likely label.

Shape letters (as in `rlhf_jax.data.annotators`): A annotation rows, I items (pairs), R annotators.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt

from rlhf_jax.data import annotators as agreement
from rlhf_jax.lab import annotators as lab_annotators

NUM_CLASSES = 3  # a, b, tie


@dataclasses.dataclass(frozen=True)
class PanelReport:
  """Output of `panel_report`; arrays are indexed by annotator ([R]) unless named otherwise."""
  annotator_ids: tuple[str, ...]
  num_labels_R: np.ndarray  # judgements of pairs with a gold winner
  gold_agreement_R: np.ndarray
  gold_kappa_R: np.ndarray
  loo_agreement_R: np.ndarray
  ds_reliability_R: np.ndarray
  kappa_RxR: np.ndarray  # pairwise Cohen's kappa on shared pairs (NaN diagonal)
  fleiss_kappa: float
  majority_gold_accuracy: float
  dawid_skene_gold_accuracy: float
  majority_ties: int  # pairs whose top vote was shared (labelled "tie" by the majority)
  num_items: int
  num_gold_ties: int

  def rows(self) -> list[dict[str, Any]]:
    """One table row per annotator."""
    return [{"annotator": a, "labels": int(n), "agreement with gold": g, "kappa vs gold": k,
             "agreement with others": loo, "Dawid-Skene reliability": ds}
            for a, n, g, k, loo, ds in zip(self.annotator_ids, self.num_labels_R, self.gold_agreement_R,
                                           self.gold_kappa_R, self.loo_agreement_R, self.ds_reliability_R)]

  def summary(self) -> dict[str, Any]:
    return {"pairs": self.num_items, "gold ties (left out)": self.num_gold_ties,
            "Fleiss kappa": self.fleiss_kappa, "majority vote accuracy": self.majority_gold_accuracy,
            "majority ties": self.majority_ties, "Dawid-Skene accuracy": self.dawid_skene_gold_accuracy}


def panel_report(labels: lab_annotators.PanelLabels, gold_a_I: npt.ArrayLike, gold_b_I: npt.ArrayLike,
                 annotator_ids: Sequence[str]) -> PanelReport:
  """Scores a panel's labels against the gold labels (module docstring for every quantity).

  Args:
    labels: annotation rows (`lab.label_pairs(...).labels`: item, annotator index, label).
    gold_a_I, gold_b_I: gold rewards of the two responses of every pair.
    annotator_ids: names of the panel members, indexed like `labels.annotator_A`.

  Example: a noiseless annotator gets gold_agreement 1 and gold_kappa 1; a random clicker about
  1/2 and 0.
  """
  gold_I = lab_annotators.gold_labels(gold_a_I, gold_b_I)
  ann = agreement.validate_annotations(labels.item_A, labels.annotator_A, labels.label_A,
                                       num_classes=NUM_CLASSES, num_items=gold_I.shape[0],
                                       num_annotators=len(annotator_ids))
  decided_I = gold_I != lab_annotators.LABEL_TIE
  scored_A = decided_I[ann.item_A]
  correct_A = ann.label_A == gold_I[ann.item_A]
  num_r = ann.num_annotators
  num_labels = np.zeros(num_r, np.int64)
  gold_agreement, gold_kappa = np.full(num_r, np.nan), np.full(num_r, np.nan)
  for r in range(num_r):
    rows = scored_A & (ann.annotator_A == r)
    num_labels[r] = int(rows.sum())
    if rows.any():
      gold_agreement[r] = float(correct_A[rows].mean())
      gold_kappa[r] = agreement.cohen_kappa(ann.label_A[rows], gold_I[ann.item_A[rows]], NUM_CLASSES)
  majority = agreement.majority_vote(ann, tie_label=lab_annotators.LABEL_TIE)
  ds = agreement.dawid_skene(ann)
  judged_I = decided_I & (majority.label_I >= 0)  # pairs with a gold winner and >= 1 judgement

  def accuracy(label_I: np.ndarray) -> float:
    return float(np.mean(label_I[judged_I] == gold_I[judged_I])) if judged_I.any() else float("nan")

  counts_IxY = agreement.vote_counts(ann)
  fleiss = agreement.fleiss_kappa(counts_IxY) if np.any(counts_IxY.sum(axis=1) >= 2) else float("nan")
  return PanelReport(
      annotator_ids=tuple(annotator_ids), num_labels_R=num_labels, gold_agreement_R=gold_agreement,
      gold_kappa_R=gold_kappa, loo_agreement_R=agreement.leave_one_out_agreement(ann).agreement_R,
      ds_reliability_R=ds.reliability_R, kappa_RxR=agreement.pairwise_cohen_kappa(ann),
      fleiss_kappa=fleiss,
      majority_gold_accuracy=accuracy(majority.label_I), dawid_skene_gold_accuracy=accuracy(ds.label_I),
      majority_ties=majority.num_tied, num_items=int(gold_I.shape[0]), num_gold_ties=int((~decided_I).sum()))
