"""Objectives as pure functions of arrays returning (loss, metrics). No flax, no models, no configs."""
from rlhf_jax.losses import dpo, ppo, reward_model, sft
from rlhf_jax.losses.dpo import REFERENCE_FREE_LOSSES, get_preference_loss
from rlhf_jax.losses.ppo import clipped_surrogate_loss, entropy_bonus, tis_weights, value_loss
from rlhf_jax.losses.reward_model import bradley_terry_loss
from rlhf_jax.losses.sft import sft_loss
