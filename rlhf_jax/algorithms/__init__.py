"""Training machinery and the algorithms built on it. Import submodules directly:

  train_state     TrainState (one per trained network), sharded creation, generic step
  optimizer       AdamW + schedules + decay masks, gradient accumulation, mixed precision
  batch_math      global / micro / per-device / per-host batch sizes, validated in one place
  host_loop       the loop every algorithm shares (async metrics, non-finite guard, checkpoints)
  metrics         JSONL / TensorBoard / logging writers
  run_setup       mesh, tokenizer, checkpoint manager and artifact export for a run
  reward_source   one interface for reward models, gold rewards, verifiers and remote services
  sft             supervised fine-tuning (SFT)
  best_of_n       best-of-N sampling with KL to the base policy
  rejection_sampling  best-of-N outputs -> SFT datasets with provenance
"""
