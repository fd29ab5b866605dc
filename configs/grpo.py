"""GRPO (Group Relative Policy Optimization, Shao et al. 2024) on the lab's verifiable arithmetic task.

  python experiments/train_ppo.py --config configs/grpo.py --workdir runs/grpo \
      --config.init.policy_artifact=sft_policy@<12 hex>
  python experiments/train_ppo.py --config configs/grpo.py:test --workdir /tmp/grpo     # seconds
  ... --config.advantage.estimator=rloo          # RLOO (REINFORCE Leave-One-Out, Ahmadian et al. 2024)
  ... --config.advantage.estimator=dr_grpo --config.algo.aggregation=fixed_length    # Dr. GRPO

The PPO config (configs/ppo.py, every field documented there) with the critic-free changes:
N samples per prompt and a group baseline instead of a value network; the KL to the reference as a
k3 loss term with a fixed coefficient instead of a per-token reward penalty (KL in the loss, never
also in the reward: PPO_DETAILS item 11); one epoch per rollout; advantages already normalised per
group, so no further whitening; the verifier (1 for an exactly right answer, else 0) as reward.
"""
import ml_collections

from rlhf_jax.config import load_sibling, pods

TRAINER = "rlhf_jax.algorithms.ppo.run:train_ppo"
VARIANTS = ("", "test") + pods.POD_VARIANTS
REQUIRES = {"init.policy_artifact": "sft"}


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"unknown configs/grpo.py variant {variant!r}; use one of {VARIANTS}")
  test = variant == "test"
  config = load_sibling(__file__, "ppo").get_config("test" if test else "")
  config.prompts.task = "arithmetic"  # the verifiable task
  config.reward.source = "verifier"  # exact-answer checker: 1 or 0
  config.reward.monitor_gold = False  # the verifier is the gold reward here
  config.reward.penalize_missing_eos = False  # an unfinished answer already scores 0
  config.reward.normalize_samples = 0  # the group baseline normalises instead
  config.advantage.estimator = "grpo"  # "grpo" | "dr_grpo" | "rloo"
  config.rollout.num_samples = 8 if not test else 2  # group size N
  config.rollout.num_prompts = 8
  config.rollout.max_new_tokens = 16 if not test else 8  # answers are short
  config.rollout.temperature = 1.0
  config.kl.mode = "loss"  # k3 estimate of KL(pi || pi_ref) added to the loss
  config.kl.estimator = "k3"
  config.kl.controller = "fixed"
  config.kl.init_beta = 0.04  # DeepSeekMath's beta
  config.algo.num_epochs = 1  # one policy update per rollout (GRPO's mu = 1)
  config.algo.num_minibatches = 2
  config.algo.whiten_advantages = False  # group advantages are already normalised
  config.algo.aggregation = "sequence_mean"  # GRPO: mean over tokens, then over responses
  config.algo.vf_coef = 0.0  # no critic
  config.optimizer.lr = 1e-5 if not test else 1e-4
  if variant in pods.POD_VARIANTS:
    n = config.rollout.num_samples
    prompts = lambda t: max(t.global_batch_size // n, t.data_parallel_size)  # noqa: E731  (>= 1 per shard)
    return pods.apply_pod(config, variant, batch={
        "rollout.num_prompts": prompts,
        "algo.num_minibatches": lambda t: prompts(t) * n // t.micro_batch_size})
  return config
