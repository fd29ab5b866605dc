"""Best-of-N sampling from a registered policy: reward vs N and vs KL, and the samples as SFT data.

  python experiments/best_of_n.py --config configs/best_of_n.py --workdir runs/best_of_n \
      --config.policy=sft_policy@3f2a9c01b2d4
  ... --config.reward.source=reward_model:reward_model@9c1e0b7d2a44   # select by a proxy RM
  ... --config.best_of_n.num_samples="(1, 4, 16, 64)" --config.prompts.task=arithmetic \
      --config.reward.source=verifier

Variants: "" (default: 128 held-out review prompts, N up to 16), "test" (a few prompts, N up to 4),
"pod_v4_32" / "pod_v5e_256" (TPU pod layouts, rlhf_jax.config.pods).
"""
import ml_collections

from rlhf_jax.config import mesh_section, pods

TRAINER = "rlhf_jax.algorithms.best_of_n_run:run_best_of_n"  # run(config, workdir); see rlhf_jax/config/__init__.py
VARIANTS = ("", "test") + pods.POD_VARIANTS
REQUIRES = {"policy": "sft"}  # fields filled with an upstream artifact id (rlhf_jax/config/__init__.py)


def sampling_section(test: bool) -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict()
  cfg.max_new_tokens = 48 if not test else 8  # response budget in tokens (EOS included)
  cfg.temperature = 1.0  # softmax temperature; 1 samples the policy itself (the KL values assume it)
  cfg.top_k = 0  # keep the k most likely tokens (0 = off)
  cfg.top_p = 1.0  # nucleus mass (1 = off)
  return cfg


def prompts_section(test: bool, split: str = "eval") -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict()
  cfg.task = "reviews"  # lab task: "reviews" (judged by the gold reward) | "arithmetic" (the verifier)
  cfg.split = split  # lab prompt split: "eval" prompts never occur in SFT training data
  cfg.num = 128 if not test else 4  # prompts (the first num of the split; texts may repeat, ids do not)
  cfg.batch_size = 16 if not test else 4  # prompts per compiled sampler call (num must be a multiple)
  cfg.lab_seed = 0  # lab corpus seed; must equal the policy's SFT lab.seed for "eval" to be held out
  return cfg


def reward_section() -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict()
  # Selection ("proxy") reward: "gold" | "verifier" | "reward_model:<artifact id>" | "remote:<url>".
  # The task's ground truth (gold / verifier) is always reported next to it.
  cfg.source = "gold"
  cfg.remote_model = "rm"  # model name on the reward service (remote:<url> only)
  cfg.remote_timeout_s = 30.0  # per-request timeout of the reward service client, seconds
  return cfg


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"unknown configs/best_of_n.py variant {variant!r}; use one of {VARIANTS}")
  test = variant == "test"
  config = ml_collections.ConfigDict()
  config.seed = 0  # seed of the sampler calls (chunk i uses fold_in(key(seed), i))
  config.registry_dir = ""  # artifact registry; "" = <workdir>/../artifacts (shared by sibling stages)
  config.policy = ""  # artifact id of the policy to sample (kind "policy"; required at run time)
  config.mesh = mesh_section()  # the policy's parameters are sharded over this mesh by logical axes

  config.prompts = prompts_section(test)
  config.sampling = sampling_section(test)

  config.best_of_n = ml_collections.ConfigDict()
  config.best_of_n.num_samples = (1, 2, 4, 8, 16) if not test else (1, 2, 4)  # the N values reported
  # Extra base samples per prompt, never selected, for the empirical KL (0 = analytic KL only);
  # the estimate's bias is about -(N-1)/(2M) nats, so keep M >= 10 N for the largest N.
  config.best_of_n.num_heldout = 160 if not test else 4

  config.reward = reward_section()

  config.export = ml_collections.ConfigDict()
  config.export.enabled = True  # write the best-of-N_max samples as an SFT dataset under <workdir>/dataset
  config.export.selection = "best"  # "best": each prompt's best sample | "threshold": every sample >= threshold
  config.export.threshold = ml_collections.config_dict.placeholder(float)  # reward floor (None = none)
  config.export.require_eos = True  # skip samples cut off at max_new_tokens

  config.plot = True  # write reward_vs_n.png, reward_vs_kl.png and gain_vs_kl.png
  if variant in pods.POD_VARIANTS:
    # One prompt per data-parallel device and call: rows = batch * (N_max + M) divide evenly.
    return pods.apply_pod(config, variant, batch={"prompts.batch_size": lambda t: t.data_parallel_size,
                                                  "prompts.num": lambda t: 8 * t.data_parallel_size})
  return config
