"""Evaluation suite: several policies against a reference on held-out lab prompts (JSON + PNG).

  python experiments/evaluate.py --config configs/evaluate.py --workdir runs/evaluate \
      --config.reference=sft_policy@3f2a9c01b2d4 \
      --config.policies=dpo_policy@9c1e0b7d2a44,rs_policy@0b7d2a449c1e \
      --config.judges.proxy=reward_model:reward_model@1d2e3f4a5b6c

Variants: "" (default: 256 held-out review prompts), "test" (a few prompts, short responses),
"pod_v4_32" / "pod_v5e_256" (TPU pod layouts, rlhf_jax.config.pods).
"""
import ml_collections

from rlhf_jax.config import mesh_section, pods
from rlhf_jax.config.sections import load_sibling

TRAINER = "rlhf_jax.evaluation.suite:run_evaluation"  # run(config, workdir); see rlhf_jax/config/__init__.py
VARIANTS = ("", "test") + pods.POD_VARIANTS
REQUIRES = {"reference": "sft", "policies": "sft"}  # fields filled with an upstream artifact id (rlhf_jax/config/__init__.py)


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"unknown configs/evaluate.py variant {variant!r}; use one of {VARIANTS}")
  test = variant == "test"
  best_of_n = load_sibling(__file__, "best_of_n")
  config = ml_collections.ConfigDict()
  config.seed = 0  # seeds every player's sampling stream (player i: fold_in(key(seed), i)) and the bootstrap
  config.registry_dir = ""  # artifact registry; "" = <workdir>/../artifacts (shared by sibling stages)
  config.reference = ""  # artifact id of the reference policy (player 0; required at run time)
  config.policies = ""  # comma-separated artifact ids of the policies to evaluate (required at run time)
  config.mesh = mesh_section()  # every policy's parameters are sharded over this mesh

  config.prompts = ml_collections.ConfigDict()
  config.prompts.num = 256 if not test else 8  # held-out ("eval" split) review prompts
  config.prompts.samples_per_prompt = 1  # K responses per prompt and player; pairs share prompt and index
  config.prompts.batch_size = 32 if not test else 8  # prompts per compiled sampler / scoring call
  config.prompts.lab_seed = 0  # lab corpus seed; must equal the policies' SFT lab.seed for held-out prompts
  # Temperature 1 without top-k / top-p samples the policies themselves, which KL and
  # importance sampling need (with other settings those sections are skipped).
  config.sampling = best_of_n.sampling_section(test)

  config.judges = ml_collections.ConfigDict()
  # Second judge next to gold, e.g. "reward_model:<artifact id>" or "remote:<url>" ("" = gold only).
  config.judges.proxy = ""
  config.judges.remote_model = "rm"  # model name on the reward service (remote:<url> only)
  config.judges.remote_timeout_s = 30.0  # per-request timeout of the reward service client, seconds

  config.win_rate = ml_collections.ConfigDict()
  config.win_rate.num_bootstrap = 10_000  # bootstrap resamples of the prompts
  config.win_rate.confidence = 0.95  # two-sided level of the percentile interval
  config.win_rate.tie_tolerance = 0.0  # |score difference| <= this counts as a tie (half a win)

  config.ratings = ml_collections.ConfigDict()
  config.ratings.elo_k_factor = 4.0  # Elo update step (rating points per unit surprise)
  config.ratings.elo_num_orderings = 20  # random game orders averaged (Elo is order-dependent)
  config.ratings.bt_prior_games = 0.5  # virtual tied games per pair: keeps the Bradley-Terry MLE finite

  config.arithmetic = ml_collections.ConfigDict()
  config.arithmetic.num_prompts = 64 if not test else 4  # held-out arithmetic problems (0 = skip the section)
  config.arithmetic.num_samples = 16 if not test else 4  # N samples per problem (pass@k needs k <= N)
  config.arithmetic.ks = (1, 4, 16) if not test else (1, 2, 4)  # k values of pass@k
  config.arithmetic.batch_size = 16 if not test else 4  # problems per compiled sampler call
  config.arithmetic.sampling = best_of_n.sampling_section(test)
  config.arithmetic.sampling.max_new_tokens = 8  # an answer is a few tokens

  config.hacking = ml_collections.ConfigDict()
  config.hacking.ngram_sizes = (1, 2)  # n of repetition-n and distinct-n (words)

  config.agreement = ml_collections.ConfigDict()
  config.agreement.num_pairs = 512 if not test else 16  # held-out lab preference pairs scored by the proxy

  config.plot = True  # write the PNG figures
  if variant in pods.POD_VARIANTS:
    return pods.apply_pod(config, variant, batch={"prompts.batch_size": lambda t: t.data_parallel_size,
                                                  "arithmetic.batch_size": lambda t: t.data_parallel_size})
  return config
