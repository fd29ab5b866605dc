"""Training machinery and the algorithms built on it. Import submodules directly:

  train_state     TrainState (one per trained network), sharded creation, generic step
  optimizer       AdamW + schedules + decay masks, gradient accumulation, mixed precision
  batch_math      global / micro / per-device / per-host batch sizes, validated in one place
  host_loop       the loop every algorithm shares (async metrics, non-finite guard, checkpoints)
  metrics         JSONL / TensorBoard / logging writers
  run_setup       mesh, tokenizer, checkpoint manager and artifact export for a run
  reward_source   one interface for reward models, gold rewards, verifiers and remote services
  sft             supervised fine-tuning (SFT)
  reward_model    Bradley-Terry reward-model batch layout, loss and step; reward_model_train: the run
  ensemble        K reward models trained in one vmapped step;  rm_scoring: bucketed scoring API
  dpo             DPO-family step (DPO = Direct Preference Optimization); dpo_train: the run
  reference_logprobs / reference_kl   precomputed reference log-probs; sampled KL to the reference
  ppo/            PPO with GAE and KL control, GRPO and RLOO (rollout, rewards, advantages, update, run)
  policy_loading  registered policy artifact -> (model, params, tokenizer, record)
  lab_rewards     reward sources by name ("gold", "verifier", "reward_model:<id>", "remote:<url>")
  best_of_n_run   the best-of-N experiment;  rejection_sampling_loop: iterated RS fine-tuning
  best_of_n       best-of-N sampling with KL to the base policy
  rejection_sampling  best-of-N outputs -> SFT datasets with provenance
"""
