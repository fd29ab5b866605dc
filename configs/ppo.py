"""PPO (Proximal Policy Optimization) with GAE and an adaptive KL penalty: the four-model RLHF loop.

  python experiments/train_ppo.py --config configs/ppo.py --workdir runs/ppo \
      --config.init.policy_artifact=sft_policy@<12 hex> --config.reward.source=reward_model:rm@<12 hex>
  python experiments/train_ppo.py --config configs/ppo.py:test --workdir /tmp/ppo    # seconds
  ... --config.kl.init_beta=0.05 --config.kl.controller=fixed --config.algo.dual_clip=3

Every implementation detail of ../shared/PPO_DETAILS.md is a field below, with its default and item
number. Acronyms: GAE = Generalized Advantage Estimation; KL = Kullback-Leibler; SFT = Supervised
Fine-Tuning; EOS = end-of-sequence; LHP = OpenAI lm-human-preferences (Ziegler et al. 2019).
Variants: "" (default: `tiny` SFT policy on lab review prompts), "test" (two iterations of a toy
model), and the TPU pod layouts of rlhf_jax.config.pods.
"""
import ml_collections

from rlhf_jax.algorithms.optimizer import optimizer_config_defaults
from rlhf_jax.config import checkpoint_section, lab_section, mesh_section, model_section, pods, tokenizer_section

TRAINER = "rlhf_jax.algorithms.ppo.run:train_ppo"  # run(config, workdir) -> summary
VARIANTS = ("", "test") + pods.POD_VARIANTS
REQUIRES = {"init.policy_artifact": "sft"}  # the configs test fills it with the SFT "test" artifact


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  if variant not in VARIANTS:
    raise ValueError(f"unknown configs/ppo.py variant {variant!r}; use one of {VARIANTS}")
  test = variant == "test"
  config = ml_collections.ConfigDict()
  config.seed = 0  # seeds init, prompt order and every per-iteration PRNG stream
  config.registry_dir = ""  # artifact registry; "" = <workdir>/../artifacts (shared by sibling stages)

  config.init = ml_collections.ConfigDict()
  # The SFT policy artifact that initialises the policy AND the frozen reference (item 21); its model
  # config and tokenizer are used and `model` / `tokenizer` below are ignored.
  config.init.policy_artifact = ""
  config.init.allow_random_init = test  # without an artifact: random init (smoke tests only)

  config.model = model_section("test" if test else "tiny", vocab_size=-1)  # random init only
  config.mesh = mesh_section()
  config.tokenizer = tokenizer_section()  # random init only (an SFT artifact brings its tokenizer)
  if test:
    config.tokenizer.vocab_size = 384
  config.lab = lab_section("test" if test else "default")  # lab seed (prompt corpus) and tokenizer texts

  config.prompts = ml_collections.ConfigDict()
  config.prompts.task = "reviews"  # "reviews" (gold reward / reward model) | "arithmetic" (verifier)
  config.prompts.num = 2_000 if not test else 16  # training prompts drawn from the lab's train split

  config.reward = ml_collections.ConfigDict()
  # "gold" | "verifier" | "reward_model:<artifact id>" | "remote:<url>" (rlhf_jax.algorithms.lab_rewards).
  config.reward.source = "gold"
  config.reward.monitor_gold = True  # also log the lab's gold reward ("monitor/gold") when training on a proxy
  config.reward.penalize_missing_eos = True  # item 2: responses without EOS get a fixed score...
  config.reward.missing_eos_penalty = -1.0  # ... this one (LHP: -1), replacing their reward
  config.reward.normalize_samples = 256 if not test else 0  # item 7: reference samples for gain/bias (0: off)
  config.reward.running_norm = False  # item 12: normalise scores by running mean / std of all scores
  config.reward.running_norm_shift_mean = True  # subtract the running mean (False: only divide by the std)
  config.reward.clip = 0.0  # item 12: clip scores to [-clip, clip] (e.g. 10; 0: off)
  config.reward.whiten = False  # item 12: whiten token rewards per batch
  config.reward.whiten_shift_mean = True  # keep the mean removed (False adds it back, as TRL does)

  config.kl = ml_collections.ConfigDict()
  config.kl.mode = "reward"  # item 11: "reward" (per-token penalty, PPO) | "loss" (GRPO); never both
  config.kl.estimator = "k1"  # item 11: "k1" (log-ratio, in the reward) | "k2" | "k3" (GRPO's loss)
  config.kl.controller = "adaptive"  # item 10: "adaptive" (Ziegler et al. 2019) | "fixed"
  config.kl.init_beta = 0.15 if not test else 0.1  # item 10: initial KL coefficient (LHP 0.15)
  config.kl.target = 6.0  # item 10: target KL to the reference, nats per response (LHP 6)
  config.kl.horizon = 10_000.0  # item 10: controller horizon in responses (LHP 10k)
  config.kl.max_error = 0.2  # item 10: clip of the proportional error

  config.value = ml_collections.ConfigDict()
  # item 8: "auto" (reward model when the reward is one, else policy), "reward_model", "policy" (trunk
  # of the policy, zero head: initial values exactly 0). The value network is always separate.
  config.value.init = "auto"
  config.value.critic_warmup_iterations = 0  # item 8: iterations that train only the critic

  config.advantage = ml_collections.ConfigDict()
  config.advantage.estimator = "gae"  # "gae" (critic) | "grpo" | "dr_grpo" | "rloo" (critic-free)
  config.advantage.gamma = 1.0  # item 13: discount
  config.advantage.lam = 0.95  # item 13: GAE lambda

  config.rollout = ml_collections.ConfigDict()
  config.rollout.num_prompts = 16 if not test else 8  # prompts per iteration (divisible by data-parallel devices)
  config.rollout.num_samples = 1 if not test else 2  # responses per prompt (LHP: 1)
  config.rollout.max_new_tokens = 48 if not test else 8  # S: response budget (item 2: truncated after EOS)
  config.rollout.max_prompt_len = 48  # P: prompts are left-padded to this many tokens (item 3)
  config.rollout.temperature = 0.7  # item 4: also divides the logits of every training log-prob
  config.rollout.stop_at_eos = True  # stop decoding a row at EOS (the EOS trick makes this equivalent)

  config.algo = ml_collections.ConfigDict()  # the PPO update (rlhf_jax.algorithms.ppo.update.UpdateConfig)
  config.algo.num_epochs = 4 if not test else 2  # item 17: passes over each rollout batch (LHP 4)
  config.algo.num_minibatches = 2  # item 17: minibatches per epoch (LHP 1)
  config.algo.shuffle = True  # new row permutation every epoch
  config.algo.clip_eps = 0.2  # item 15: surrogate clip epsilon
  config.algo.clip_eps_high = 0.0  # item 15: asymmetric upper clip (0: = clip_eps)
  config.algo.dual_clip = 0.0  # item 15: dual-clip constant c > 1 (e.g. 3; 0: off)
  config.algo.value_clip_eps = 0.2  # item 16: value clipping epsilon (0: off)
  config.algo.vf_coef = 0.1  # item 16: value-loss coefficient
  config.algo.entropy_coef = 0.0  # entropy bonus
  config.algo.whiten_advantages = True  # item 14: per minibatch
  config.algo.aggregation = "token_mean"  # item 19: "token_mean" | "sequence_mean" | "fixed_length"
  config.algo.fixed_length = 0  # "fixed_length" denominator per row (0: rollout.max_new_tokens)
  config.algo.tis_cap = 0.0  # item 22: truncated importance sampling cap (0: off)

  config.ptx = ml_collections.ConfigDict()
  config.ptx.coef = 0.0  # item 20: PPO-ptx weight of the SFT loss (0: off)
  config.ptx.batch_size = 0  # SFT rows per iteration when ptx.coef > 0 (a multiple of algo.num_minibatches)
  config.ptx.seq_len = 128  # tokens per SFT row (lab demonstrations, one per row)

  config.optimizer = optimizer_config_defaults()  # the policy's optimiser (item 18)
  config.optimizer.lr = 3e-5 if not test else 1e-4
  config.optimizer.warmup_steps = 0
  config.optimizer.decay = "constant"
  config.optimizer.eps = 1e-5  # item 18: Adam epsilon (LHP 1e-5)
  config.optimizer.adam_form = "pytorch"  # item 18: "pytorch" (optax) | "tensorflow" (LHP's TF1 Adam)
  config.optimizer.weight_decay = 0.0  # the KL penalty anchors the policy
  config.optimizer.grad_clip_norm = 1.0  # item 18: global gradient-norm clipping
  config.value_optimizer = optimizer_config_defaults()  # the critic's optimiser
  config.value_optimizer.lr = 1e-4 if not test else 1e-3
  config.value_optimizer.warmup_steps = 0
  config.value_optimizer.decay = "constant"
  config.value_optimizer.eps = 1e-5
  config.value_optimizer.adam_form = "pytorch"  # "pytorch" | "tensorflow"
  config.value_optimizer.weight_decay = 0.0
  config.value_optimizer.grad_clip_norm = 1.0

  config.train = ml_collections.ConfigDict()
  config.train.total_steps = 200 if not test else 2  # PPO iterations (rollout + update)
  config.train.log_every = 5  # metrics line in the log every N iterations (JSONL/TensorBoard get all)
  config.train.logprob_chunk_size = 0  # > 0: vocabulary-chunked log-probs (never materialise [B, L, V])
  config.train.sample_every = 10 if not test else 1  # write completions with score and KL (0: never)
  config.train.num_logged_samples = 4  # completions written each time (<workdir>/samples.jsonl)
  config.train.ema_decay = 0.0  # item 20: EMA of policy weights, exported instead when > 0

  config.guard = ml_collections.ConfigDict()
  config.guard.max_kl = 0.0  # bound on KL to the reference (nats per response); 0: no guard
  config.guard.action = "rollback"  # "stop" | "rollback" (to the last good checkpoint)
  config.guard.max_rollbacks = 3  # then stop anyway
  config.guard.rollback_beta_factor = 2.0  # beta is multiplied by this after a rollback

  config.checkpoint = checkpoint_section()
  config.checkpoint.every = 50 if not test else 1  # iterations between (KL-verified) checkpoints
  if variant in pods.POD_VARIANTS:
    return pods.apply_pod(config, variant, batch={
        "rollout.num_prompts": lambda t: t.global_batch_size,
        "algo.num_minibatches": lambda t: t.global_batch_size // t.micro_batch_size})
  return config
