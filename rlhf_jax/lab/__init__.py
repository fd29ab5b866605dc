"""The ground-truth RLHF lab: synthetic tasks whose true reward is known.

RLHF = Reinforcement Learning from Human Feedback; SFT = Supervised Fine-Tuning.

  lexicon     products, features and valenced words of the review language.
  grammar     the review grammar and a recogniser of grammatical responses.
  sampler     the base (pre-RL) review distribution, with exact log-probabilities.
  gold        the gold reward of a review and its documented components.
  arithmetic  the verifiable task: integer arithmetic with an exact checker.
  annotators  simulated annotator panels (Bradley-Terry on gold, with biases) and their records.
  corpora     deterministic SFT / prompt / preference corpora with held-out splits.
  datasets    the corpora as prepared datasets with manifests (prepare_dataset, like real data)
              and the trainers' loaders over them; imported on first use (it pulls in the
              data layer: grain, TFDS).
"""
from rlhf_jax.lab.annotators import DEFAULT_PANEL, GOLD_ANNOTATOR, LabelledPairs, PanelLabels
from rlhf_jax.lab.annotators import SimulatedAnnotator, annotate, comparison_records, gold_labels
from rlhf_jax.lab.annotators import label_pairs, prob_a_preferred
from rlhf_jax.lab.arithmetic import Problem, check_answer, extract_answer, sample_problem, solve
from rlhf_jax.lab.arithmetic import verifier_reward
from rlhf_jax.lab.corpora import LabConfig, arithmetic_prompts, arithmetic_sft, as_examples
from rlhf_jax.lab.corpora import build_corpora, learnability, review_pairs, review_preferences
from rlhf_jax.lab.corpora import review_prompts, review_sft
from rlhf_jax.lab.gold import COMPONENTS, GoldConfig, GoldResult, gold_reward, parse_prompt
from rlhf_jax.lab.grammar import is_grammatical, word_count
from rlhf_jax.lab.sampler import BaseDistribution, ReviewSampler, SampledReview

# rlhf_jax.lab.datasets imports the whole data layer (about 2 s: grain, TFDS), which the rest of
# the lab does not need, so its public names are resolved on first access.
_DATASETS_API = ("CORPORA", "lab_preference_loader", "lab_prompt_loader", "lab_sft_loader",
                 "prepare_lab_datasets")


def __getattr__(name: str):
  if name in _DATASETS_API:
    from rlhf_jax.lab import datasets  # pylint: disable=g-import-not-at-top
    return getattr(datasets, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
