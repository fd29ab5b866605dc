"""Jitted KV-cache sampling and logits processors."""
from rlhf_jax.sampling.processors import process_logits, top_k_filter, top_p_filter
from rlhf_jax.sampling.sampler import (DEFAULT_BUCKETS, SampleOutput, Sampler, SamplingConfig, bucket_length, left_pad,
                                       sample)
