"""Batched reward-model (RM) scoring with bucketed shapes, and the normalisation and calibration
stored with the model.

`RewardModelScorer` turns (prompt, response) texts, or token ids from a sampler, into rewards:

  raw         the scalar head at the last real token (for an ensemble: the mean over members)
  normalized  gain * raw + bias, with gain and bias fitted so that the raw scores of
              reference-policy samples have mean 0 and std 1 (`fit_normalisation`)
  score       `normalized` when the model has a normalisation, else `raw`: what trainers use
  std         ensembles only: the members' population std, in the units of `score`

Rows are rendered with the chat template (BOS, turns, assistant header, " " + response, EOS, as
in training), right-padded to the smallest (batch bucket, length bucket) that fits, and scored by
ONE jitted function, so at most len(batch_buckets) * len(length_buckets) programs are ever
compiled, whatever the request sizes. The token-id entry point `score_tokens` (left-padded
prompts, right-padded responses: the sampler's layout, used by PPO through
`reward_source.TokenRewardFn`) packs the real tokens the same way, so a text and its token ids
get bit-identical scores.

Calibration (Platt or isotonic, fitted with `evaluation.reward_model_eval.fit_pairwise_calibration`
on RAW margins of a calibration split) maps a margin r(a) - r(b) to P(a preferred);
`preference_probability` applies it. Normalisation and calibration live in a small JSON spec
next to the exported parameters, `<params_path>.json` (`save_spec` / `load_spec`), together with
the model config, chat template, buckets, tokenizer path and version (the artifact id); the
registry record of the artifact holds the same spec. `load_scorer` / `load_scorer_from_export`
rebuild a ready scorer from either.

The scorer satisfies the serving `Scorer` protocol (`name`, `version`, `max_batch_size`,
`max_seq_len`, `score_batch`, `validate`).

Shape letters: B rows, P prompt length, S response length, L padded row length, M members.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from typing import Any, Mapping, Optional, Sequence, Union

import flax.linen as nn
import jax
import numpy as np
import numpy.typing as npt

from rlhf_jax import models
from rlhf_jax.algorithms import ensemble
from rlhf_jax.algorithms import reward_model
from rlhf_jax.algorithms import reward_source
from rlhf_jax.algorithms import run_setup
from rlhf_jax.checkpointing import artifacts
from rlhf_jax.checkpointing import registry
from rlhf_jax.data import batching
from rlhf_jax.data import chat
from rlhf_jax.evaluation import reward_model_eval

CalibrationMap = reward_model_eval.CalibrationMap


@dataclasses.dataclass(frozen=True)
class Normalisation:
  """normalized = gain * raw + bias."""
  gain: float = 1.0
  bias: float = 0.0

  def __call__(self, raw: npt.ArrayLike) -> np.ndarray:
    return self.gain * np.asarray(raw, np.float64) + self.bias

  def to_dict(self) -> dict[str, float]:
    return {"gain": float(self.gain), "bias": float(self.bias)}

  @classmethod
  def from_dict(cls, state: Mapping[str, Any]) -> "Normalisation":
    if not isinstance(state, Mapping) or set(state) != {"gain", "bias"}:
      raise ValueError(f"normalisation state must be {{'gain': ..., 'bias': ...}}, got {state!r}")
    gain, bias = float(state["gain"]), float(state["bias"])
    if not (math.isfinite(gain) and math.isfinite(bias)) or gain == 0.0:
      raise ValueError(f"normalisation needs finite gain != 0 and finite bias, got {state!r}")
    return cls(gain, bias)


def fit_normalisation(raw_scores_N: npt.ArrayLike) -> Normalisation:
  """Gain and bias making the given raw scores (e.g. of reference-policy samples) mean 0, std 1.

    gain = 1 / std(raw),  bias = -mean(raw) / std(raw)   (population std, ddof 0)

  Raises:
    ValueError: with fewer than 2 finite scores or a constant sample.
  """
  raw = np.asarray(raw_scores_N, np.float64).reshape(-1)
  if raw.size < 2 or not np.all(np.isfinite(raw)):
    raise ValueError(f"fit_normalisation needs >= 2 finite scores, got {raw.size} "
                     f"({int(np.sum(~np.isfinite(raw)))} non-finite)")
  std = float(raw.std())
  if not std > 0.0:
    raise ValueError("fit_normalisation: the scores are constant (std 0); cannot scale them")
  return Normalisation(gain=1.0 / std, bias=-float(raw.mean()) / std)


@dataclasses.dataclass(frozen=True)
class Buckets:
  """Padded shapes the scorer compiles for: the largest batch and length are its limits."""
  batch_sizes: tuple[int, ...] = (1, 8, 32)
  lengths: tuple[int, ...] = (64, 128, 256)

  def __post_init__(self):
    for name in ("batch_sizes", "lengths"):
      values = tuple(int(v) for v in getattr(self, name))
      if not values or min(values) < 1:
        raise ValueError(f"Buckets.{name} must be non-empty positive ints, got {values}")
      object.__setattr__(self, name, tuple(sorted(set(values))))

  def to_dict(self) -> dict[str, list[int]]:
    return {"batch_sizes": list(self.batch_sizes), "lengths": list(self.lengths)}

  @classmethod
  def from_dict(cls, state: Mapping[str, Any]) -> "Buckets":
    return cls(tuple(state["batch_sizes"]), tuple(state["lengths"]))


def _template_to_dict(template: chat.ChatTemplate) -> dict[str, Any]:
  return {"role_names": dict(template.role_names), "separator": template.separator}


def _pack(rows: Sequence[Sequence[int]], buckets: Buckets, pad_id: int
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Right-pads rows into (tokens, positions, segment_ids, last_index) of bucketed shape.

  Padding rows (beyond len(rows)) hold one pad token so that their read index is valid; their
  scores are dropped.
  """
  num_rows = batching.pick_bucket(len(rows), buckets.batch_sizes)
  length = batching.pick_bucket(max(len(r) for r in rows), buckets.lengths)
  tokens_BxL = np.full((num_rows, length), pad_id, np.int32)
  segment_ids_BxL = np.zeros((num_rows, length), np.int32)
  segment_ids_BxL[len(rows):, 0] = 1
  for b, row in enumerate(rows):
    tokens_BxL[b, :len(row)] = row
    segment_ids_BxL[b, :len(row)] = 1
  last_index_B = segment_ids_BxL.sum(axis=1).astype(np.int32) - 1
  return tokens_BxL, batching.positions_from_mask(segment_ids_BxL), segment_ids_BxL, last_index_B


class RewardModelScorer:
  """Scores (prompt, response) pairs with a trained RM or RM ensemble (module docstring).

  Example:
    scorer = RewardModelScorer(params, model_config, tokenizer, normalisation=norm)
    out = scorer.score(["Review of the lamp:"], ["A bright and sturdy lamp."])
    out["score"], out["raw"], out["normalized"]       # each [1]
    ppo_reward = scorer.token_reward_fn()              # a reward_source.TokenRewardFn
  """

  def __init__(self, params: Any, model_config: models.ModelConfig, tokenizer: Any,
               template: chat.ChatTemplate = chat.DEFAULT_TEMPLATE,
               buckets: Buckets = Buckets(),
               normalisation: Optional[Normalisation] = None,
               calibration: Optional[CalibrationMap] = None, *,
               name: str = "reward_model", version: Optional[str] = None):
    """Builds the scorer.

    Args:
      params: ScalarModel parameters; for an ensemble stacked on a leading members axis (the
        scorer detects it from the shapes).
      model_config: the RM's model config.
      tokenizer: `data.Tokenizer` (encode, pad/bos/eos ids).
      template: the chat template the RM was trained with.
      buckets: padded batch sizes and lengths; the largest are `max_batch_size`/`max_seq_len`.
      normalisation: optional gain and bias (`fit_normalisation`).
      calibration: optional margin -> P(a preferred) map.
      name: model name (serving).
      version: checkpoint content-hash id; default `artifacts.artifact_id(name, hash of params)`.
    """
    if max(buckets.lengths) > model_config.max_len:
      raise ValueError(f"largest length bucket {max(buckets.lengths)} exceeds the model's "
                       f"max_len {model_config.max_len}")
    self.params = params
    self.model_config = model_config
    self.tokenizer = tokenizer
    self.template = template
    self.buckets = buckets
    self.normalisation = normalisation
    self.calibration = calibration
    self.name = name
    self.num_members = _ensemble_size(params, model_config)
    if version is None:
      version = artifacts.artifact_id(name, artifacts.content_hash(params))
    self.version = version
    self.max_batch_size = max(buckets.batch_sizes)
    self.max_seq_len = max(buckets.lengths)
    score_fn = reward_model.make_score_fn(models.ScalarModel(model_config))
    if self.num_members is None:
      forward = lambda p, *rows: (score_fn(p, *rows), None)  # noqa: E731
    else:
      forward = lambda p, *rows: ensemble.mean_and_std(  # noqa: E731
          ensemble.ensemble_score_fn(score_fn)(p, *rows))
    self._forward = jax.jit(forward)

  # Token-level scoring ---------------------------------------------------------------------

  def score_ids(self, rows: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
    """Outputs for rendered token rows (BOS ... EOS), in chunks of at most max_batch_size rows."""
    raws, stds = [], []
    pending = []
    for start in range(0, len(rows), self.max_batch_size):
      chunk = rows[start:start + self.max_batch_size]
      for i, row in enumerate(chunk):
        if len(row) > self.max_seq_len:
          raise ValueError(f"row {start + i} has {len(row)} tokens, over max_seq_len "
                           f"{self.max_seq_len} (the largest length bucket)")
      packed = _pack(chunk, self.buckets, self.tokenizer.pad_id)
      pending.append((self._forward(self.params, *packed), len(chunk)))  # dispatch all first
    for (raw_N, std_N), n in pending:
      raws.append(np.asarray(raw_N, np.float64)[:n])
      if std_N is not None:
        stds.append(np.asarray(std_N, np.float64)[:n])
    raw = np.concatenate(raws) if raws else np.zeros(0)
    norm = self.normalisation
    out = {"raw": raw, "normalized": norm(raw) if norm is not None else raw.copy()}
    out["score"] = out["normalized"].copy()
    if self.num_members is not None:
      scale = abs(norm.gain) if norm is not None else 1.0
      out["std"] = scale * (np.concatenate(stds) if stds else np.zeros(0))
    return {k: v.astype(np.float32) for k, v in out.items()}

  def score_token_outputs(self, prompt_tokens_BxP: npt.ArrayLike, prompt_mask_BxP: npt.ArrayLike,
                          response_tokens_BxS: npt.ArrayLike, response_mask_BxS: npt.ArrayLike
                          ) -> dict[str, np.ndarray]:
    """All outputs for sampler-layout token ids: the real tokens of each prompt row (mask 1),
    then those of its response row, are scored as one sequence."""
    p_tok, p_mask = np.asarray(prompt_tokens_BxP), np.asarray(prompt_mask_BxP).astype(bool)
    r_tok, r_mask = np.asarray(response_tokens_BxS), np.asarray(response_mask_BxS).astype(bool)
    if p_tok.shape != p_mask.shape or r_tok.shape != r_mask.shape or p_tok.ndim != 2 or \
        r_tok.ndim != 2 or p_tok.shape[0] != r_tok.shape[0]:
      raise ValueError(f"token/mask shapes disagree: prompt {p_tok.shape}/{p_mask.shape}, "
                       f"response {r_tok.shape}/{r_mask.shape}")
    rows = [np.concatenate([p_tok[b][p_mask[b]], r_tok[b][r_mask[b]]]).astype(np.int32)
            for b in range(p_tok.shape[0])]
    empty = [b for b, row in enumerate(rows) if row.size == 0]
    if empty:
      raise ValueError(f"rows {empty[:10]} have no real tokens")
    return self.score_ids(rows)

  def score_tokens(self, prompt_tokens_BxP: npt.ArrayLike, prompt_mask_BxP: npt.ArrayLike,
                   response_tokens_BxS: npt.ArrayLike, response_mask_BxS: npt.ArrayLike
                   ) -> np.ndarray:
    """Scores [B] (float32) for token ids; the `TokenRewardFn` signature."""
    return self.score_token_outputs(prompt_tokens_BxP, prompt_mask_BxP, response_tokens_BxS,
                                    response_mask_BxS)["score"]

  def token_reward_fn(self) -> reward_source.TokenRewardFn:
    """This scorer as a `reward_source.TokenRewardFn` (PPO, best-of-N)."""
    return reward_source.TokenRewardFn(self.score_tokens, name=self.name)

  # Text-level scoring ----------------------------------------------------------------------

  def render(self, prompt: Any, response: str) -> list[int]:
    """Token ids of one pair exactly as in training: BOS, prompt turns, header, response, EOS."""
    return chat.render(self.tokenizer, prompt, response, template=self.template).ids

  def score(self, prompts: Sequence[Any], responses: Sequence[str]) -> dict[str, np.ndarray]:
    """Outputs ("score", "raw", "normalized", and "std" for ensembles), each [B] float32.

    Prompts are plain text or conversations (`data.schemas.Message` tuples).
    """
    if len(prompts) != len(responses):
      raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
    return self.score_ids([self.render(p, r) for p, r in zip(prompts, responses)])

  def preference_probability(self, prompts: Sequence[Any], responses_a: Sequence[str],
                             responses_b: Sequence[str]) -> np.ndarray:
    """P(a preferred over b) [B] float64: the calibration map of the raw margin, or its sigmoid."""
    if not len(prompts) == len(responses_a) == len(responses_b):
      raise ValueError("prompts, responses_a and responses_b must have equal lengths")
    raw = self.score(list(prompts) * 2, list(responses_a) + list(responses_b))["raw"]
    n = len(prompts)
    margin = raw[:n].astype(np.float64) - raw[n:].astype(np.float64)
    return reward_model_eval.pairwise_probability(margin, self.calibration)

  # Serving protocol ------------------------------------------------------------------------

  def score_batch(self, prompts: list[str], responses: list[str]) -> dict[str, np.ndarray]:
    if len(prompts) > self.max_batch_size:
      raise ValueError(f"batch of {len(prompts)} exceeds max_batch_size {self.max_batch_size}")
    return self.score(prompts, responses)

  def validate(self, prompt: str, response: str) -> None:
    """Raises ValueError (serving's InputTooLongError for length) naming the problem."""
    for field, value in (("prompt", prompt), ("response", response)):
      if not isinstance(value, str):
        raise ValueError(f"{field} must be a string, got {type(value).__name__}")
    n = len(self.render(prompt, response))
    if n > self.max_seq_len:
      # Imported here: the serving package pulls in the HTTP stack, which scoring does not need.
      from rlhf_jax.serving.scorer import InputTooLongError  # pylint: disable=g-import-not-at-top
      raise InputTooLongError(f"prompt + response is {n} tokens with the chat template, over the "
                              f"model's max_seq_len of {self.max_seq_len}")

  def compiled_programs(self) -> int:
    """Number of programs compiled so far (at most len(batch buckets) * len(length buckets))."""
    return self._forward._cache_size()  # pylint: disable=protected-access

  # Persistence -----------------------------------------------------------------------------

  def spec(self) -> dict[str, Any]:
    """JSON-ready description of everything but the parameters and tokenizer."""
    return make_spec(self.model_config, template=self.template, buckets=self.buckets,
                     normalisation=self.normalisation, calibration=self.calibration,
                     name=self.name, version=self.version, ensemble_size=self.num_members)

  def __repr__(self) -> str:
    return (f"RewardModelScorer(name={self.name!r}, version={self.version!r}, "
            f"members={self.num_members}, max_batch_size={self.max_batch_size}, "
            f"max_seq_len={self.max_seq_len})")


def _ensemble_size(params: Any, model_config: models.ModelConfig) -> Optional[int]:
  """None for one model, M when every parameter has an extra leading axis of size M."""
  abstract = jax.eval_shape(lambda k: nn.unbox(models.init_params(models.ScalarModel(model_config),
                                                                  k)), jax.random.key(0))
  got, want = jax.tree.leaves(params), jax.tree.leaves(abstract)
  if jax.tree.structure(params) != jax.tree.structure(abstract):
    raise ValueError("params do not match the ScalarModel of model_config (different trees)")
  if all(g.shape == w.shape for g, w in zip(got, want)):
    return None
  leading = {g.shape[0] for g in got}
  if len(leading) == 1 and all(g.shape[1:] == w.shape for g, w in zip(got, want)):
    return int(leading.pop())
  bad = next(g.shape for g, w in zip(got, want) if g.shape != w.shape)
  raise ValueError(f"params do not match model_config: found a leaf of shape {bad}")


def make_spec(model_config: models.ModelConfig, *, template: chat.ChatTemplate = chat.DEFAULT_TEMPLATE,
              buckets: Buckets = Buckets(), normalisation: Optional[Normalisation] = None,
              calibration: Optional[CalibrationMap] = None, name: str = "reward_model",
              version: Optional[str] = None, ensemble_size: Optional[int] = None,
              extra: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
  """The JSON stored next to an exported RM (see `save_spec`)."""
  spec = {"name": name, "version": version, "model_config": model_config.to_dict(),
          "template": _template_to_dict(template), "buckets": buckets.to_dict(),
          "normalisation": None if normalisation is None else normalisation.to_dict(),
          "calibration": None if calibration is None else calibration.to_dict(),
          "ensemble_size": ensemble_size}
  if extra:
    spec.update(artifacts.to_jsonable(dict(extra), field="spec"))
  return spec


def spec_path(params_path: Union[str, os.PathLike]) -> pathlib.Path:
  """Where the spec of exported parameters lives: `<params_path>.json`, next to them."""
  return pathlib.Path(str(params_path).rstrip("/") + ".json")


def save_spec(spec: Mapping[str, Any], path: Union[str, os.PathLike]) -> pathlib.Path:
  """Writes the spec JSON atomically to `path`."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(artifacts.to_jsonable(dict(spec), field="spec"), indent=2,
                            sort_keys=True))
  os.replace(tmp, path)
  return path


def load_spec(path: Union[str, os.PathLike]) -> dict[str, Any]:
  """Reads a spec JSON, raising errors that name the file."""
  path = pathlib.Path(path)
  try:
    spec = json.loads(path.read_text())
  except FileNotFoundError:
    raise FileNotFoundError(f"no reward-model spec at {path}") from None
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
  for key in ("model_config", "template", "buckets"):
    if key not in spec:
      raise ValueError(f"{path}: reward-model spec lacks {key!r}")
  return spec


def scorer_from_spec(spec: Mapping[str, Any], params: Any, tokenizer: Any) -> RewardModelScorer:
  """A scorer from a spec dict (`load_spec`), parameters and the tokenizer."""
  template = spec["template"]
  return RewardModelScorer(
      params, models.ModelConfig.from_dict(spec["model_config"]), tokenizer,
      template=chat.ChatTemplate(role_names=dict(template["role_names"]),
                                 separator=template["separator"]),
      buckets=Buckets.from_dict(spec["buckets"]),
      normalisation=(None if spec.get("normalisation") is None
                     else Normalisation.from_dict(spec["normalisation"])),
      calibration=(None if spec.get("calibration") is None
                   else reward_model_eval.calibration_from_dict(spec["calibration"])),
      name=spec.get("name") or "reward_model", version=spec.get("version"))


def _abstract_params(model_config: models.ModelConfig, ensemble_size: Optional[int]) -> Any:
  """Restore target on one device: ScalarModel parameter shapes, stacked for an ensemble."""
  abstract = jax.eval_shape(lambda k: nn.unbox(models.init_params(models.ScalarModel(model_config),
                                                                  k)), jax.random.key(0))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  lead = () if not ensemble_size else (int(ensemble_size),)
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(lead + a.shape, a.dtype, sharding=device),
                      abstract)


def load_scorer_from_export(params_path: Union[str, os.PathLike], tokenizer: Any = None,
                            **overrides: Any) -> RewardModelScorer:
  """A scorer from exported RM parameters and their spec `<params_path>.json`.

  Args:
    params_path: the exported parameters (`<workdir>/export/<name>` of `train_reward_model`).
    tokenizer: default: loaded from the spec's "tokenizer_path".
    **overrides: spec entries to replace (e.g. buckets=Buckets(...), name="rm").

  This is what a serving loader, PPO or best-of-N calls to get a ready scorer.
  """
  spec = load_spec(spec_path(params_path))
  if tokenizer is None:
    if not spec.get("tokenizer_path"):
      raise ValueError(f"{spec_path(params_path)}: no tokenizer_path; pass the tokenizer")
    tokenizer = run_setup.load_tokenizer(spec["tokenizer_path"])
  params = registry.load_params(params_path, _abstract_params(
      models.ModelConfig.from_dict(spec["model_config"]), spec.get("ensemble_size")))
  buckets = overrides.pop("buckets", None)
  if buckets is not None:
    spec["buckets"] = buckets.to_dict()
  spec.update(overrides)
  return scorer_from_spec(spec, params, tokenizer)


def load_scorer(artifact_id: str, registry_dir: Union[str, os.PathLike], **overrides: Any
                ) -> RewardModelScorer:
  """A scorer for a registered `reward_model` artifact (id or record path)."""
  record = registry.resolve(registry_dir, artifact_id)
  if record.get("kind") != "reward_model":
    raise ValueError(f"artifact {artifact_id!r} is a {record.get('kind')!r}, not a reward_model")
  return load_scorer_from_export(record["params_path"], **overrides)
