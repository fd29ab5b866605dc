"""Pure array operations (no flax): log-probs, masked reductions, KL estimators, returns, advantages."""
from rlhf_jax.ops import advantages, kl, kl_control, logprobs, masked, returns, reward_processing
from rlhf_jax.ops.advantages import get_advantage_estimator, grpo_advantages, rloo_advantages
from rlhf_jax.ops.kl import full_kl, kl_estimator, kl_k1, kl_k2, kl_k3
from rlhf_jax.ops.kl_control import KLControllerState, get_kl_controller
from rlhf_jax.ops.logprobs import (chunked_token_logprobs, entropy, shift_for_next_token, token_logprobs,
                                   token_logprobs_and_entropy)
from rlhf_jax.ops.masked import aggregate_loss, masked_mean, masked_sum, masked_var, masked_whiten
from rlhf_jax.ops.returns import discounted_returns, gae, kl_shaped_rewards
