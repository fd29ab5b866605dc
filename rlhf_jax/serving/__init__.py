"""Reward model as a service: an HTTP scoring server and the client trainers use as reward source.

Server: `build_app` / `serve` / `ServerThread` over a `ModelRegistry` of `Scorer`s, with dynamic
batching (`Batcher`), an LRU cache (`ScoreCache`), canary routing, Prometheus metrics and
structured logs. Client: `RewardClient(...).as_reward_fn()`, which raises `RewardServiceError`
instead of ever returning a made-up reward. See README.md in this directory.
"""
from rlhf_jax.serving.batcher import Batcher
from rlhf_jax.serving.bucketing import bucketed_score_fn
from rlhf_jax.serving.bucketing import pad_token_batch
from rlhf_jax.serving.cache import ScoreCache
from rlhf_jax.serving.client import RewardClient
from rlhf_jax.serving.client import RewardServiceError
from rlhf_jax.serving.client import ScoreResult
from rlhf_jax.serving.config import Batching
from rlhf_jax.serving.config import Limits
from rlhf_jax.serving.config import ModelSpec
from rlhf_jax.serving.config import ServingConfig
from rlhf_jax.serving.loading import build_registry
from rlhf_jax.serving.loading import load_scorer
from rlhf_jax.serving.metrics import ServingMetrics
from rlhf_jax.serving.registry import ks_statistic
from rlhf_jax.serving.registry import ModelRegistry
from rlhf_jax.serving.scorer import content_version
from rlhf_jax.serving.scorer import directory_version
from rlhf_jax.serving.scorer import HashScorer
from rlhf_jax.serving.scorer import InputTooLongError
from rlhf_jax.serving.scorer import ModelScorer
from rlhf_jax.serving.scorer import Scorer
from rlhf_jax.serving.server import build_app
from rlhf_jax.serving.server import serve
from rlhf_jax.serving.server import ServerThread
from rlhf_jax.serving.service import RewardService
