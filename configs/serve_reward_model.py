"""Reward model as a service, served by experiments/serve_reward_model.py.

  python experiments/serve_reward_model.py --config=configs/serve_reward_model.py

Serves reward-model versions over HTTP (rlhf_jax/serving). Override fields on the command line,
e.g. `--config.port=8080 --config.demo=True --config.models.main.path=/ckpt/rm`.
`rlhf_jax.serving.ServingConfig.from_config_dict` validates the result and names a bad field.
"""
import ml_collections


def _model(**fields) -> ml_collections.ConfigDict:
  """One model version to load at start-up (fields as in rlhf_jax.serving.config.ModelSpec)."""
  m = ml_collections.ConfigDict()
  m.name = "reward"  # model name clients ask for ("model" in a /v1/score request)
  m.kind = "checkpoint"  # "checkpoint" (a trained reward model) | "hash" (deterministic toy scorer)
  m.path = ""  # checkpoint directory (kind="checkpoint")
  m.version = ""  # content-hash id; empty: computed from the checkpoint files / toy parameters
  m.role = "stable"  # "stable" | "canary" (gets canary_fraction of traffic) | "standby" (pinned)
  m.tokenizer_path = ""  # SentencePiece .model used for the length check (kind="checkpoint")
  m.max_seq_len = 1024  # longest prompt + response in tokens (UTF-8 bytes for kind="hash")
  m.max_batch_size = 32  # largest batch the model is run on
  m.salt = "0"  # kind="hash" / demo: seed of the toy scores
  m.offset = 0.0  # kind="hash" / demo: mean of the toy scores
  m.ensemble_size = 4  # kind="hash" / demo: ensemble members (> 1 also returns "std")
  m.batch_delay_ms = 0.0  # kind="hash" / demo: simulated model compute per batch, milliseconds
  m.update(fields)
  return m


TRAINER = None  # not a single training family (see rlhf_jax/config/__init__.py)


def get_config() -> ml_collections.ConfigDict:
  """The documented serving config."""
  config = ml_collections.ConfigDict()
  config.host = "127.0.0.1"  # bind address; loopback by default (set 0.0.0.0 only behind a proxy)
  config.port = 8000  # TCP port; 0 picks a free port (see --port_file)
  config.log_level = "info"  # "debug" | "info" | "warning" | "error"; logs are JSON lines
  config.demo = False  # serve the deterministic toy scorer under every model name (no checkpoint)
  config.admin_enabled = True  # routes that load / canary / promote / roll back / remove versions
  config.cache_max_entries = 100_000  # LRU cache of (version, prompt, response) scores; 0: off
  config.stats_window = 10_000  # recent scores kept per version to compare distributions
  config.canary_fraction = 0.0  # share of unpinned traffic for a role="canary" version, in [0, 1]
  config.routing_seed = 0  # seed of the deterministic canary routing hash

  config.limits = ml_collections.ConfigDict()
  config.limits.max_request_bytes = 1 << 20  # request body size, bytes (413 request_too_large)
  config.limits.max_items_per_request = 256  # pairs per request (413 batch_too_large)
  config.limits.max_text_chars = 65_536  # characters per prompt or response (422 input_too_long)

  config.batching = ml_collections.ConfigDict()
  config.batching.max_batch_size = 32  # items per model call (also capped by the model's own)
  config.batching.max_wait_ms = 5.0  # how long a batch's first item waits for others, ms
  config.batching.max_queue_items = 4096  # items waiting per version before 429 queue_full
  config.batching.default_timeout_ms = 10_000.0  # request deadline when none is sent (504), ms
  config.batching.max_timeout_ms = 60_000.0  # cap on a request's own timeout_ms, ms

  # Model versions to load at start-up, keyed by an arbitrary label (override with
  # --config.models.main.path=...). A second entry with the same name and role="canary" starts
  # a canary; load more versions at run time with POST /v1/models/{name}/versions.
  config.models = ml_collections.ConfigDict()
  config.models.main = _model()
  return config
