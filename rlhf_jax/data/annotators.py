"""Annotator agreement and label aggregation for preference data (host-side NumPy).

Annotations are three parallel integer arrays, one row per judgement: `item_A` (which pair),
`annotator_A` (who judged it) and `label_A` (what they said). For pairwise preferences the label
alphabet is {0: response "a" preferred, 1: response "b" preferred, 2: tie}; every function works
for any number of classes Y (binary preferences use Y=2).

Shape letters, extending the house table for this module: A annotation rows, I items,
R raters (annotators), Y label classes.

Contents:
  * Cohen's kappa (two raters) and its pairwise matrix over a panel, Fleiss' kappa (any number of
    raters per item), agreement of each annotator with the leave-one-out (LOO) consensus.
  * Majority vote with deterministic, reported tie-breaking.
  * Dawid-Skene (DS) aggregation by expectation-maximisation (EM), Dawid & Skene 1979,
    "Maximum likelihood estimation of observer error-rates using the EM algorithm".
  * `preference_targets`: per-example labels and weights for a reward-model loss.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np
import numpy.typing as npt


class Annotations(NamedTuple):
  """Validated annotation rows with their inferred sizes."""
  item_A: np.ndarray
  annotator_A: np.ndarray
  label_A: np.ndarray
  num_items: int
  num_annotators: int
  num_classes: int


def _as_index_array(name: str, values: npt.ArrayLike) -> np.ndarray:
  arr = np.asarray(values)
  if arr.ndim != 1:
    raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
  if arr.size and not np.issubdtype(arr.dtype, np.integer):
    if not np.all(np.equal(np.mod(arr, 1), 0)):
      bad = int(np.flatnonzero(np.mod(arr, 1))[0])
      raise ValueError(f"{name} must hold integers; row {bad} is {arr[bad]!r}")
  arr = arr.astype(np.int64)
  if arr.size and arr.min() < 0:
    bad = int(np.flatnonzero(arr < 0)[0])
    raise ValueError(f"{name} must be non-negative; row {bad} is {arr[bad]}")
  return arr


def validate_annotations(item_A: npt.ArrayLike, annotator_A: npt.ArrayLike,
                         label_A: npt.ArrayLike, *, num_classes: int,
                         num_items: int | None = None,
                         num_annotators: int | None = None) -> Annotations:
  """Checks the three parallel arrays; sizes default to `max index + 1`.

  Raises:
    ValueError naming the field and the first offending row.
  """
  item = _as_index_array("item_A", item_A)
  annotator = _as_index_array("annotator_A", annotator_A)
  label = _as_index_array("label_A", label_A)
  if not item.size == annotator.size == label.size:
    raise ValueError(f"item_A, annotator_A and label_A must have equal lengths, got "
                     f"{item.size}, {annotator.size} and {label.size}")
  if num_classes < 2:
    raise ValueError(f"num_classes must be >= 2, got {num_classes}")
  num_items = int(item.max(initial=-1) + 1) if num_items is None else int(num_items)
  num_annotators = (int(annotator.max(initial=-1) + 1) if num_annotators is None
                    else int(num_annotators))
  for name, arr, bound in (("item_A", item, num_items), ("annotator_A", annotator, num_annotators),
                           ("label_A", label, num_classes)):
    if arr.size and arr.max() >= bound:
      bad = int(np.flatnonzero(arr >= bound)[0])
      raise ValueError(f"{name} row {bad} is {arr[bad]}, outside [0, {bound})")
  return Annotations(item, annotator, label, num_items, num_annotators, int(num_classes))


def vote_counts(ann: Annotations) -> np.ndarray:
  """Returns `counts_IxY[i, y]`: how many judgements gave item i the label y."""
  counts_IxY = np.zeros((ann.num_items, ann.num_classes), np.float64)
  np.add.at(counts_IxY, (ann.item_A, ann.label_A), 1.0)
  return counts_IxY


def cohen_kappa(labels_a_I: npt.ArrayLike, labels_b_I: npt.ArrayLike, num_classes: int) -> float:
  """Cohen's kappa between two raters who labelled the same I items (Cohen 1960).

    kappa = (p_o - p_e) / (1 - p_e),  p_o = mean(a == b),  p_e = sum_y P(a = y) P(b = y),

  with both marginals estimated from the I items. Example: raters agreeing on 35 of 50 items with
  "yes" rates 0.5 and 0.6 have p_o = 0.7, p_e = 0.5 and kappa = 0.4. Returns NaN when p_e = 1
  (both raters always use the same single label), where kappa is undefined.
  """
  a = _as_index_array("labels_a_I", labels_a_I)
  b = _as_index_array("labels_b_I", labels_b_I)
  if a.size != b.size or a.size == 0:
    raise ValueError(f"labels_a_I and labels_b_I need equal, non-zero lengths, got {a.size} and "
                     f"{b.size}")
  if max(a.max(), b.max()) >= num_classes:
    raise ValueError(f"labels must lie in [0, {num_classes})")
  p_o = float(np.mean(a == b))
  p_e = float(np.dot(np.bincount(a, minlength=num_classes) / a.size,
                     np.bincount(b, minlength=num_classes) / b.size))
  return float("nan") if p_e >= 1.0 else (p_o - p_e) / (1.0 - p_e)


def pairwise_cohen_kappa(ann: Annotations, min_shared_items: int = 2) -> np.ndarray:
  """Returns `kappa_RxR`: Cohen's kappa of every annotator pair on the items both judged.

  Entries with fewer than `min_shared_items` shared items are NaN, as is the diagonal. When an
  annotator judged an item more than once, their first judgement is used.
  """
  first = np.full((ann.num_annotators, ann.num_items), -1, np.int64)
  _, first_row = np.unique(ann.annotator_A * ann.num_items + ann.item_A, return_index=True)
  first[ann.annotator_A[first_row], ann.item_A[first_row]] = ann.label_A[first_row]
  kappa_RxR = np.full((ann.num_annotators, ann.num_annotators), np.nan)
  for r in range(ann.num_annotators):
    for s in range(r + 1, ann.num_annotators):
      shared = (first[r] >= 0) & (first[s] >= 0)
      if shared.sum() >= min_shared_items:
        kappa_RxR[r, s] = kappa_RxR[s, r] = cohen_kappa(first[r, shared], first[s, shared],
                                                        ann.num_classes)
  return kappa_RxR


def fleiss_kappa(counts_IxY: npt.ArrayLike) -> float:
  """Fleiss' kappa from a count table, allowing a variable number of raters per item (Fleiss 1971).

  With m_i = sum_y n_iy raters on item i (items with m_i < 2 are dropped):

    P_i = sum_y n_iy (n_iy - 1) / (m_i (m_i - 1))      observed agreement on item i,
    P_bar = mean_i P_i,    p_y = sum_i n_iy / sum_i m_i,    P_e = sum_y p_y^2,
    kappa = (P_bar - P_e) / (1 - P_e).

  For a fixed m this is exactly Fleiss' formula; with variable m_i, each item's agreement counts
  equally in P_bar while the chance term pools all judgements. Build the table with `vote_counts`.
  Example: Fleiss' 10-item, 14-rater, 5-category table (Wikipedia) gives kappa = 0.210.
  Returns NaN if P_e = 1 (every judgement has the same label).
  """
  counts = np.asarray(counts_IxY, np.float64)
  if counts.ndim != 2 or np.any(counts < 0):
    raise ValueError(f"counts_IxY must be a 2-D non-negative table, got shape {counts.shape}")
  m_I = counts.sum(axis=1)
  keep = m_I >= 2
  if not np.any(keep):
    raise ValueError("fleiss_kappa needs at least one item with two or more judgements")
  counts, m_I = counts[keep], m_I[keep]
  p_bar = float(np.mean((counts * (counts - 1.0)).sum(axis=1) / (m_I * (m_I - 1.0))))
  p_y = counts.sum(axis=0) / m_I.sum()
  p_e = float(np.sum(p_y**2))
  return float("nan") if p_e >= 1.0 else (p_bar - p_e) / (1.0 - p_e)


class MajorityVote(NamedTuple):
  """Majority labels; `label_I` is -1 for items nobody judged."""
  label_I: np.ndarray
  tied_I: np.ndarray  # bool: the top vote count was shared, so the tie-break decided
  num_tied: int


def majority_vote(ann: Annotations, tie_label: int | None = None) -> MajorityVote:
  """Most frequent label per item with deterministic tie-breaking.

  Ties between the top labels go to `tie_label` when given (for preferences, 2 = "tie" is the
  natural choice), otherwise to the lowest tied class index. Ties are reported in `tied_I`.
  """
  if tie_label is not None and not 0 <= tie_label < ann.num_classes:
    raise ValueError(f"tie_label must lie in [0, {ann.num_classes}), got {tie_label}")
  counts_IxY = vote_counts(ann)
  top_I = counts_IxY.max(axis=1)
  tied_I = ((counts_IxY == top_I[:, None]).sum(axis=1) > 1) & (top_I > 0)
  label_I = np.argmax(counts_IxY, axis=1)  # first maximum = lowest class index
  if tie_label is not None:
    label_I = np.where(tied_I, tie_label, label_I)
  label_I = np.where(top_I > 0, label_I, -1)
  return MajorityVote(label_I.astype(np.int64), tied_I, int(tied_I.sum()))


class ConsensusAgreement(NamedTuple):
  """Per-annotator agreement with the majority of the *other* annotators."""
  agreement_R: np.ndarray  # fraction of scored judgements matching the consensus; NaN if none
  num_scored_R: np.ndarray  # judgements with >= 1 other judgement and an untied majority of others
  num_tied_R: np.ndarray  # judgements skipped because the others' vote was tied


def leave_one_out_agreement(ann: Annotations) -> ConsensusAgreement:
  """Agreement of each annotator with the leave-one-out consensus.

  For each judgement (i, r, y), the consensus is the majority label of every *other* judgement of
  item i (all judgements by r on i are removed). Judgements whose item has no other judgement are
  not scored; those where the others' vote is tied are skipped and counted in `num_tied_R`.
  """
  counts_IxY = vote_counts(ann)
  # Remove all of annotator r's judgements of item i (they may repeat).
  key_A = ann.item_A * ann.num_annotators + ann.annotator_A
  _, inverse = np.unique(key_A, return_inverse=True)
  own_by_pair = np.zeros((inverse.max(initial=-1) + 1, ann.num_classes))
  np.add.at(own_by_pair, (inverse, ann.label_A), 1.0)
  own_AxY = own_by_pair[inverse]
  others_AxY = counts_IxY[ann.item_A] - own_AxY
  top_A = others_AxY.max(axis=1) if others_AxY.size else np.zeros(0)
  has_others_A = top_A > 0
  tied_A = has_others_A & ((others_AxY == top_A[:, None]).sum(axis=1) > 1)
  scored_A = has_others_A & ~tied_A
  match_A = scored_A & (np.argmax(others_AxY, axis=1) == ann.label_A)
  num_scored_R = np.bincount(ann.annotator_A, scored_A.astype(np.float64), ann.num_annotators)
  num_match_R = np.bincount(ann.annotator_A, match_A.astype(np.float64), ann.num_annotators)
  with np.errstate(invalid="ignore", divide="ignore"):
    agreement_R = np.where(num_scored_R > 0, num_match_R / num_scored_R, np.nan)
  return ConsensusAgreement(agreement_R, num_scored_R.astype(np.int64),
                            np.bincount(ann.annotator_A, tied_A.astype(np.float64),
                                        ann.num_annotators).astype(np.int64))


@dataclasses.dataclass(frozen=True)
class DawidSkeneResult:
  """Output of `dawid_skene`."""
  posterior_IxY: np.ndarray  # P(true label of item i = y | all judgements)
  confusion_RxYxY: np.ndarray  # [r, true, given]: P(r says `given` | `true`); rows sum to 1
  prior_Y: np.ndarray  # class priors P(true = y)
  reliability_R: np.ndarray  # implied accuracy sum_y prior_y * confusion[r, y, y]
  label_I: np.ndarray  # argmax of the posterior (lowest class on exact ties)
  log_likelihood: float  # final penalised log-likelihood (the EM objective)
  log_likelihood_history: np.ndarray  # one entry per E-step; non-decreasing up to rounding
  num_iters: int
  converged: bool


def _logsumexp_rows(x_IxY: np.ndarray) -> np.ndarray:
  m_I = x_IxY.max(axis=1)
  return m_I + np.log(np.exp(x_IxY - m_I[:, None]).sum(axis=1))


def dawid_skene(ann: Annotations, *, confusion_smoothing: float = 0.01,
                prior_smoothing: float = 0.01, max_iters: int = 500,
                tol: float = 1e-9) -> DawidSkeneResult:
  """Aggregates noisy labels with the Dawid-Skene model, fitted by EM (Dawid & Skene 1979).

  Model: item i has a latent true class t_i ~ Categorical(prior_Y); annotator r reports label y
  with probability confusion[r, t_i, y], independently across judgements. EM alternates

    E-step:  log T_iy = log prior_y + sum_{judgements (i, r, l)} log confusion[r, y, l] - log Z_i
    M-step:  confusion[r, y, l] ∝ s + sum_{judgements (i, r, l)} T_iy,
             prior_y ∝ s' + sum_i T_iy

  i.e. maximum a posteriori estimates under symmetric Dirichlet(1 + s) priors, with
  s = `confusion_smoothing` and s' = `prior_smoothing`; the smoothing keeps confusion entries
  positive so one unseen (true, given) pair cannot force a posterior to exactly 0. EM starts from
  the soft majority vote T_iy = n_iy / m_i (which fixes the label permutation) and stops when the
  penalised log-likelihood sum_i log Z_i + s sum log confusion + s' sum log prior improves by
  less than `tol * (1 + |value|)`. Items with no judgement get the prior as posterior.

  Reliability is the accuracy implied by the confusion matrix under the priors,
  sum_y prior_y confusion[r, y, y]. An adversarial annotator gets low reliability, and the model
  still uses their judgements through the off-diagonal entries of their confusion matrix.
  """
  if confusion_smoothing < 0 or prior_smoothing < 0:
    raise ValueError("confusion_smoothing and prior_smoothing must be non-negative")
  num_y = ann.num_classes
  counts_IxY = vote_counts(ann)
  m_I = counts_IxY.sum(axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    post_IxY = np.where(m_I[:, None] > 0, counts_IxY / m_I[:, None], 1.0 / num_y)

  history = []
  converged = False
  for it in range(1, max_iters + 1):
    # M-step.
    conf_RxYxY = np.full((ann.num_annotators, num_y, num_y), confusion_smoothing)
    np.add.at(conf_RxYxY, (ann.annotator_A, slice(None), ann.label_A), post_IxY[ann.item_A])
    row_RxY = conf_RxYxY.sum(axis=2)
    # An annotator with no judgements (and no smoothing) keeps a uniform matrix.
    conf_RxYxY = np.where(row_RxY[..., None] > 0,
                          conf_RxYxY / np.maximum(row_RxY, 1e-300)[..., None], 1.0 / num_y)
    prior_Y = post_IxY.sum(axis=0) + prior_smoothing
    prior_Y = prior_Y / prior_Y.sum()
    # E-step.
    with np.errstate(divide="ignore"):
      log_conf_RxYxY = np.log(conf_RxYxY)
      log_prior_Y = np.log(prior_Y)
    joint_IxY = np.broadcast_to(log_prior_Y[None, :], post_IxY.shape).copy()
    np.add.at(joint_IxY, ann.item_A, log_conf_RxYxY[ann.annotator_A, :, ann.label_A])
    log_z_I = _logsumexp_rows(joint_IxY)
    post_IxY = np.exp(joint_IxY - log_z_I[:, None])
    penalty = 0.0
    if confusion_smoothing > 0:
      penalty += confusion_smoothing * float(log_conf_RxYxY.sum())
    if prior_smoothing > 0:
      penalty += prior_smoothing * float(log_prior_Y.sum())
    history.append(float(log_z_I.sum()) + penalty)
    if it > 1 and abs(history[-1] - history[-2]) < tol * (1.0 + abs(history[-1])):
      converged = True
      break
  reliability_R = np.einsum("y,ryy->r", prior_Y, conf_RxYxY)
  return DawidSkeneResult(
      posterior_IxY=post_IxY, confusion_RxYxY=conf_RxYxY, prior_Y=prior_Y,
      reliability_R=reliability_R, label_I=np.argmax(post_IxY, axis=1).astype(np.int64),
      log_likelihood=history[-1], log_likelihood_history=np.asarray(history),
      num_iters=len(history), converged=converged)


class PreferenceTargets(NamedTuple):
  """Per-item targets for a reward-model loss."""
  label_I: np.ndarray  # hard label: argmax of the posterior
  confidence_I: np.ndarray  # posterior probability of the hard label; a per-example loss weight
  prob_a_preferred_I: np.ndarray  # soft Bradley-Terry target P(a) + P(tie) / 2


def preference_targets(posterior_IxY: npt.ArrayLike,
                       tie_label: int | None = 2) -> PreferenceTargets:
  """Turns aggregated posteriors over {0: a, 1: b, 2: tie} into reward-model targets.

  A Bradley-Terry loss can use the hard label weighted by `confidence_I`, or the soft target
  `prob_a_preferred_I` = P(a preferred) + P(tie) / 2 in a binary cross-entropy (a tie is half a
  win each way). Pass `tie_label=None` for binary posteriors.
  """
  post = np.asarray(posterior_IxY, np.float64)
  if post.ndim != 2 or post.shape[1] < 2:
    raise ValueError(f"posterior_IxY must be [items, classes >= 2], got shape {post.shape}")
  label_I = np.argmax(post, axis=1).astype(np.int64)
  prob_a = post[:, 0].copy()
  if tie_label is not None:
    if not 0 <= tie_label < post.shape[1]:
      raise ValueError(f"tie_label {tie_label} is not a column of posterior_IxY "
                       f"(shape {post.shape})")
    prob_a = prob_a + 0.5 * post[:, tie_label]
  return PreferenceTargets(label_I, post[np.arange(post.shape[0]), label_I], prob_a)
