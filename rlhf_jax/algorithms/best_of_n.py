"""Best-of-N sampling: draw N responses per prompt, score them, keep the best (or all above a bar).

Best-of-N (BoN) is the simplest way to turn a reward into a better policy without training:
sample N responses from the base policy pi, score them with a reward source (reward model, gold
reward, verifier, any function; `reward_source.py`) and keep the highest-scoring one. It is also
the selection step of rejection-sampling fine-tuning (`rejection_sampling.py`), where the kept
responses become Supervised Fine-Tuning (SFT) data, and a reference point for RL: the KL
(Kullback-Leibler divergence) of best-of-N from pi is known in closed form (log N - (N-1)/N,
`rlhf_jax.evaluation.best_of_n`), so a plot of reward against KL can place BoN next to PPO.

All N samples of all prompts are drawn by ONE call of the compiled sampler (rows prompt-major:
the samples of prompt b are rows b*N .. b*N+N-1), decoded on the host and scored in one
`ScoringBatch`. Ties are broken deterministically: the lowest sample index wins.

Empirical KL. For a continuous reward without ties the best-of-N distribution is
pi_bon(y) = N F(r(y))^(N-1) pi(y), with F the CDF of the reward under pi, so
KL(pi_bon || pi) = E_bon[log N + (N-1) log F(r(y))]. With ties (discrete responses, equal
scores) the exact ratio for y with F_< = P(R < r(y)) and F_<= = P(R <= r(y)) is
(F_<=^N - F_<^N) / (F_<= - F_<) (within a tie group best-of-N keeps pi's proportions because the
first tied sample wins), which tends to N F^(N-1) as the group's mass goes to 0.
`empirical_best_of_n_kl` estimates F_< and F_<= from a pool of base samples that did not take part
in the selection (a held-out pool, drawn in the same sampler call with `num_heldout`) and averages
the log ratio over the selected responses. Bias: the log of a noisy CDF estimate is biased low
(Jensen); counting the selected sample in the pool (the default, which keeps F_<= > 0) partly
offsets it. For continuous rewards the net bias is about -(N-1) / (2 M) nats for a pool of M per
prompt (measured: N=4, M=128 gives -0.010; N=16, M=128 gives -0.065), so use M >= 10 N. Unlike the
closed form, the estimate drops below log N - (N-1)/N when responses or scores repeat, as they
do for short or low-entropy outputs. The pool must come from the same prompt: reward
distributions differ between prompts, so `leave_one_out_pool` (other prompts' samples as the
pool) is only valid when every row shares one distribution (e.g. one prompt repeated).

Shape letters: B prompts, N samples per prompt, M pool samples, P prompt length, S response length.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, NamedTuple, Optional, Sequence

import jax
import numpy as np
import numpy.typing as npt

from rlhf_jax.algorithms.reward_source import RewardSource, ScoringBatch, check_scores
from rlhf_jax.data import chat
from rlhf_jax.data.schemas import Prompt, PromptExample, SchemaError, prompt_text
from rlhf_jax.data.tokenizer import Tokenizer
from rlhf_jax.evaluation.best_of_n import best_of_n_kl
from rlhf_jax.sampling.sampler import Sampler, SamplingConfig


# Selection ------------------------------------------------------------------------------------


def _check_scores_2d(scores_BxN: npt.ArrayLike) -> np.ndarray:
  scores = np.asarray(scores_BxN)
  if scores.ndim != 2 or scores.shape[1] == 0:
    raise ValueError(f"scores_BxN must be 2-D with at least one sample per row, got shape {scores.shape}")
  bad = np.argwhere(~np.isfinite(scores))
  if bad.size:
    raise ValueError(f"scores_BxN has non-finite values at (row, sample) {bad[:5].tolist()}")
  return scores


def select_best(scores_BxN: npt.ArrayLike) -> np.ndarray:
  """Index of the best sample of each row [B]; among equal scores the lowest index wins.

  Example: select_best([[1., 3., 3.], [0., 0., 0.]]) -> [1, 0].
  """
  # np.argmax returns the first maximal position, which is the documented tie rule.
  return np.argmax(_check_scores_2d(scores_BxN), axis=1).astype(np.int32)


def select_threshold(scores_BxN: npt.ArrayLike, threshold: float) -> np.ndarray:
  """Boolean [B, N]: the samples whose score is >= `threshold` (threshold mode of rejection sampling)."""
  if not np.isfinite(threshold):
    raise ValueError(f"threshold must be finite, got {threshold}")
  return _check_scores_2d(scores_BxN) >= threshold


# Empirical KL -------------------------------------------------------------------------------


def best_of_n_log_ratio(cdf_below: npt.ArrayLike, cdf_at: npt.ArrayLike, n: int) -> np.ndarray:
  """log(pi_bon(y) / pi(y)) from the base reward CDF just below and at r(y), in nats (float64).

      ratio = (F_<=^N - F_<^N) / (F_<= - F_<) = sum_{k=0}^{N-1} F_<=^k F_<^(N-1-k)

  The sum form is exact for ties and equals the continuous N F^(N-1) when F_< = F_<=; it is -inf
  where F_<= = 0 (a response best-of-N never selects, for N > 1).

  Example: best_of_n_log_ratio(0.5, 0.5, 2) = log(2 * 0.5) = 0.
  """
  if isinstance(n, bool) or int(n) != n or n < 1:
    raise ValueError(f"n must be a positive integer, got {n}")
  below = np.asarray(cdf_below, np.float64)
  at = np.asarray(cdf_at, np.float64)
  if below.shape != at.shape:
    raise ValueError(f"cdf_below {below.shape} and cdf_at {at.shape} must have one shape")
  if np.any(below < 0) or np.any(at > 1) or np.any(below > at):
    raise ValueError("need 0 <= cdf_below <= cdf_at <= 1")
  if n == 1:
    return np.zeros(at.shape)
  # Factored as F_<=^(N-1) * sum_j rho^j with rho = F_< / F_<= in [0, 1]: every term is <= 1 and the
  # sum >= 1, so nothing underflows for large N or small F (0.0 ** 0 == 1 covers F_< = 0).
  with np.errstate(divide="ignore", invalid="ignore"):
    rho = np.where(at > 0, below / at, 0.0)
    geometric = np.sum(rho[..., None] ** np.arange(int(n), dtype=np.float64), axis=-1)
    return (n - 1) * np.log(at) + np.log(geometric)


class KLEstimate(NamedTuple):
  kl: float  # mean of log_ratio_B, nats
  stderr: float  # standard error of that mean over the B selected responses (0 when B = 1)
  log_ratio_B: np.ndarray  # per-selection estimate of log pi_bon(y) / pi(y)


def empirical_best_of_n_kl(selected_scores_B: npt.ArrayLike, pool_scores: npt.ArrayLike, n: int, *,
                           pool_mask_BxM: Optional[npt.ArrayLike] = None,
                           include_selected: bool = True) -> KLEstimate:
  """Monte-Carlo estimate of KL(best-of-N || base) from selected scores and a pool of base scores.

      KL ≈ mean_b log( sum_k F̂_<=(r_b)^k F̂_<(r_b)^(N-1-k) )

  F̂ counts pool scores below / at-or-below r_b (Stiennon et al. 2020 give the continuous
  density N F^(N-1) pi; this form also covers ties). See the module docstring for the bias.

  Args:
    selected_scores_B: rewards of the responses best-of-N selected, one per draw.
    pool_scores: base-policy rewards not used in the selection: [M] shared by all rows, or
      [B, M] per row (e.g. held-out samples of the same prompt).
    n: N of best-of-N.
    pool_mask_BxM: optional 0/1 mask of valid pool entries (with a [B, M] pool).
    include_selected: count the selected response in its own pool, so F̂_<= >= 1 / (M + 1) and the
      estimate stays finite; False is the plain empirical CDF (raises if some F̂_<= = 0).

  Returns:
    KLEstimate(kl, stderr, log_ratio_B).

  Example: empirical_best_of_n_kl([2.0], [1.0, 2.0, 3.0], n=2).kl == 0.0 (F_< = 1/4, F_<= = 3/4
  with the selected sample counted, ratio 3/4 + 1/4 = 1).
  """
  sel = np.asarray(selected_scores_B, np.float64)
  pool = np.asarray(pool_scores, np.float64)
  if sel.ndim != 1 or sel.size == 0:
    raise ValueError(f"selected_scores_B must be 1-D and non-empty, got shape {sel.shape}")
  if not np.all(np.isfinite(sel)) or not np.all(np.isfinite(pool)):
    raise ValueError("selected_scores_B and pool_scores must be finite")
  if pool.ndim == 1:
    if pool_mask_BxM is not None:
      raise ValueError("pool_mask_BxM needs a per-row [B, M] pool")
    if pool.size == 0:
      raise ValueError("pool_scores is empty")
    sorted_pool = np.sort(pool)
    below = np.searchsorted(sorted_pool, sel, side="left").astype(np.float64)
    at = np.searchsorted(sorted_pool, sel, side="right").astype(np.float64)
    size = np.full(sel.shape, float(pool.size))
  elif pool.ndim == 2 and pool.shape[0] == sel.shape[0]:
    mask = np.ones(pool.shape) if pool_mask_BxM is None else np.asarray(pool_mask_BxM, np.float64)
    if mask.shape != pool.shape:
      raise ValueError(f"pool_mask_BxM shape {mask.shape} != pool_scores shape {pool.shape}")
    below = np.sum((pool < sel[:, None]) * mask, axis=1)
    at = np.sum((pool <= sel[:, None]) * mask, axis=1)
    size = np.sum(mask, axis=1)
    if np.any(size == 0):
      raise ValueError(f"rows {np.flatnonzero(size == 0)[:5].tolist()} have an empty pool")
  else:
    raise ValueError(f"pool_scores must be [M] or [B={sel.shape[0]}, M], got shape {pool.shape}")
  if include_selected:
    at, size = at + 1.0, size + 1.0
  elif np.any(at == 0) and n > 1:
    raise ValueError(f"{int(np.sum(at == 0))} selected scores lie below every pool score (estimated "
                     "F = 0, log ratio -inf); enlarge the pool or use include_selected=True")
  log_ratio_B = best_of_n_log_ratio(below / size, at / size, n)
  stderr = float(np.std(log_ratio_B, ddof=1) / np.sqrt(sel.size)) if sel.size > 1 else 0.0
  return KLEstimate(kl=float(np.mean(log_ratio_B)), stderr=stderr, log_ratio_B=log_ratio_B)


def leave_one_out_pool(scores_BxN: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
  """Pools every row's samples for the OTHER rows: (pool [B, B*N], mask [B, B*N]).

  Valid for `empirical_best_of_n_kl` only when all rows draw rewards from one distribution (one
  prompt repeated); with prompt-dependent rewards the pooled CDF is wrong in either direction.
  """
  scores = _check_scores_2d(scores_BxN).astype(np.float64)
  b, n = scores.shape
  pool = np.broadcast_to(scores.reshape(1, b * n), (b, b * n)).copy()
  owner = np.repeat(np.arange(b), n)
  mask = (owner[None, :] != np.arange(b)[:, None]).astype(np.float64)
  return pool, mask


# Sampling + scoring ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BestOfNResult:
  """Everything best-of-N produced for B prompts (host NumPy arrays)."""

  prompts: tuple[Prompt, ...]  # [B] as given (text or conversation)
  prompt_ids: tuple[str, ...]  # [B] PromptExample ids, else "p-" + 12 hex of the prompt's sha256
  responses: tuple[tuple[str, ...], ...]  # [B][N] decoded response texts
  tokens_BxNxS: np.ndarray  # sampled ids, pad after EOS
  mask_BxNxS: np.ndarray  # 1 on response tokens up to and including EOS
  ended_with_eos_BxN: np.ndarray
  scores_BxN: np.ndarray  # float32 rewards
  logprobs_BxN: np.ndarray  # float64 sum over the response of the sampled log-probs (see below)
  best_index_B: np.ndarray  # int32 argmax of scores_BxN, lowest index on ties
  heldout_scores_BxM: Optional[np.ndarray]  # rewards of the held-out base samples (None if M = 0)
  sampling: SamplingConfig  # num_samples = N (held-out samples not counted)
  reward_name: str
  policy_id: Optional[str]  # checkpoint / artifact id of the sampled policy
  key_data: tuple[int, ...]  # raw bits of the PRNG key, for provenance
  metrics: dict[str, float]
  # logprobs are under the distribution actually sampled from (temperature, top-k, top-p applied),
  # which is the "base policy" the KL values refer to.

  @property
  def num_samples(self) -> int:
    return self.scores_BxN.shape[1]

  @property
  def best_scores_B(self) -> np.ndarray:
    return np.take_along_axis(self.scores_BxN, self.best_index_B[:, None], axis=1)[:, 0]

  @property
  def best_texts(self) -> list[str]:
    return [self.responses[b][int(i)] for b, i in enumerate(self.best_index_B)]

  def response_tokens(self, b: int, n: int) -> np.ndarray:
    """Ids of sample n of prompt b, EOS included, padding removed."""
    return self.tokens_BxNxS[b, n][self.mask_BxNxS[b, n] == 1]

  @property
  def best_tokens(self) -> list[np.ndarray]:
    return [self.response_tokens(b, int(i)) for b, i in enumerate(self.best_index_B)]

  def above_threshold(self, threshold: float) -> list[tuple[int, int]]:
    """(prompt, sample) indices of every sample scoring >= threshold, prompt-major order."""
    return [tuple(int(v) for v in ix) for ix in np.argwhere(select_threshold(self.scores_BxN, threshold))]


def _prompt_id(prompt: Prompt) -> str:
  return "p-" + hashlib.sha256(prompt_text(prompt).encode("utf-8")).hexdigest()[:12]


def _unpack(prompts: Sequence[Prompt | PromptExample]) -> tuple[tuple[Prompt, ...], tuple[str, ...]]:
  out, ids = [], []
  for i, p in enumerate(prompts):
    if isinstance(p, PromptExample):
      out.append(p.prompt)
      ids.append(p.id)
      continue
    try:
      prompt = PromptExample(prompt=p, id="unused").prompt  # validates and normalises conversations
    except SchemaError as e:
      raise SchemaError(f"prompts[{i}]", e.detail) from None
    out.append(prompt)
    ids.append(_prompt_id(prompt))
  return tuple(out), tuple(ids)


def best_of_n(sampler: Sampler, params: Any, prompts: Sequence[Prompt | PromptExample], key: jax.Array,
              cfg: SamplingConfig, *, tokenizer: Tokenizer, reward: RewardSource, num_heldout: int = 0,
              prompt_tokens: Optional[Sequence[Sequence[int]]] = None,
              template: chat.ChatTemplate = chat.DEFAULT_TEMPLATE, strip_template_space: Optional[bool] = None,
              policy_id: Optional[str] = None) -> BestOfNResult:
  """Samples `cfg.num_samples` = N responses per prompt, scores them and selects the best.

  Args:
    sampler: the policy's `Sampler` (sharded params work when its model was built with a mesh).
    params: policy parameters.
    prompts: texts, conversations or `PromptExample`s (whose ids are kept).
    key: PRNG key of the single sampler call.
    cfg: sampling settings; N = cfg.num_samples (temperature must be > 0 when N > 1).
    tokenizer: decodes the responses (decoding stops at EOS and skips PAD/BOS); its EOS/PAD ids
      must be the sampler's.
    reward: any reward source; gets all B * (N + num_heldout) rows in one `ScoringBatch`.
    num_heldout: M extra base samples per prompt, drawn in the same call and scored but never
      selected; they give `best_of_n/kl_empirical` (0: no empirical KL).
    prompt_tokens: ids to sample from; default renders each prompt with the chat template.
    template: chat template used when `prompt_tokens` is None.
    strip_template_space: remove one leading space from decoded responses. The template writes a
      response as " " + text, so by default (True when the template rendered the prompts) the
      texts given to the reward and to SFT examples follow the schema's convention.
    policy_id: checkpoint / artifact id of the policy, recorded for provenance.

  Returns:
    BestOfNResult with slash-named metrics under `best_of_n/`.
  """
  cfg.validate()
  if not prompts:
    raise ValueError("best_of_n needs at least one prompt")
  if isinstance(num_heldout, bool) or not isinstance(num_heldout, int) or num_heldout < 0:
    raise ValueError(f"num_heldout must be a non-negative int, got {num_heldout!r}")
  n, m = cfg.num_samples, num_heldout
  if cfg.temperature == 0 and n + m > 1:
    raise ValueError("best-of-N with sampling.temperature=0 (greedy) draws identical samples; use temperature > 0")
  if (sampler.eos_id, sampler.pad_id) != (tokenizer.eos_id, tokenizer.pad_id):
    raise ValueError(f"sampler (eos={sampler.eos_id}, pad={sampler.pad_id}) and tokenizer "
                     f"(eos={tokenizer.eos_id}, pad={tokenizer.pad_id}) disagree on special ids")
  prompt_list, prompt_ids = _unpack(prompts)
  if prompt_tokens is None:
    prompt_tokens = [chat.render_prompt(tokenizer, p, template=template) for p in prompt_list]
    strip = True if strip_template_space is None else strip_template_space
  else:
    if len(prompt_tokens) != len(prompt_list):
      raise ValueError(f"{len(prompt_list)} prompts but {len(prompt_tokens)} prompt_tokens")
    strip = bool(strip_template_space)

  rows = n + m
  out = jax.device_get(sampler.generate(params, prompt_tokens, key, dataclasses.replace(cfg, num_samples=rows)))
  b = len(prompt_list)
  texts = tokenizer.decode_batch(out.tokens_BxS)
  if strip:
    texts = [t[1:] if t.startswith(" ") else t for t in texts]
  batch = ScoringBatch(prompts=[prompt_text(p) for p in prompt_list for _ in range(rows)], responses=texts,
                       prompt_tokens_BxP=np.asarray(out.prompt_tokens_BxP),
                       prompt_mask_BxP=np.asarray(out.prompt_mask_BxP),
                       response_tokens_BxS=np.asarray(out.tokens_BxS), response_mask_BxS=np.asarray(out.mask_BxS))
  reward_name = getattr(reward, "name", type(reward).__name__)
  scores_BxR = check_scores(reward(batch), batch, reward_name).reshape(b, rows)

  s = out.tokens_BxS.shape[1]
  mask_BxRxS = np.asarray(out.mask_BxS).reshape(b, rows, s)
  # Padding already carries log-prob 0; the mask makes the per-sequence sum explicit anyway.
  logprobs_BxR = np.sum(np.asarray(out.logprobs_BxS, np.float64).reshape(b, rows, s) * mask_BxRxS, axis=2)
  scores_BxN = scores_BxR[:, :n]
  best_B = select_best(scores_BxN)
  heldout = scores_BxR[:, n:] if m else None
  result = BestOfNResult(
      prompts=prompt_list, prompt_ids=prompt_ids,
      responses=tuple(tuple(texts[i * rows:i * rows + n]) for i in range(b)),
      tokens_BxNxS=np.asarray(out.tokens_BxS).reshape(b, rows, s)[:, :n],
      mask_BxNxS=mask_BxRxS[:, :n], ended_with_eos_BxN=np.asarray(out.ended_with_eos_B).reshape(b, rows)[:, :n],
      scores_BxN=scores_BxN, logprobs_BxN=logprobs_BxR[:, :n], best_index_B=best_B, heldout_scores_BxM=heldout,
      sampling=cfg, reward_name=reward_name, policy_id=policy_id,
      key_data=tuple(int(v) for v in np.asarray(jax.random.key_data(key)).ravel()), metrics={})
  return dataclasses.replace(result, metrics=_metrics(result))


def _metrics(r: BestOfNResult) -> dict[str, float]:
  """Slash-named summary of a best-of-N run."""
  n = r.num_samples
  best = r.best_scores_B.astype(np.float64)
  scores = r.scores_BxN.astype(np.float64)
  lengths_BxN = np.sum(r.mask_BxNxS, axis=2)
  best_len = np.take_along_axis(lengths_BxN, r.best_index_B[:, None], axis=1)[:, 0]
  distinct = [len({tuple(r.response_tokens(b, i).tolist()) for i in range(n)}) / n for b in range(len(r.prompts))]
  top_ties = np.sum(scores == best[:, None], axis=1) > 1
  metrics = {
      "best_of_n/num_prompts": float(len(r.prompts)),
      "best_of_n/num_samples": float(n),
      "best_of_n/score_mean": float(np.mean(scores)),  # mean over all B * N samples
      "best_of_n/score_std": float(np.std(scores)),
      "best_of_n/best_score_mean": float(np.mean(best)),  # mean over the B prompts
      "best_of_n/best_minus_mean": float(np.mean(best - np.mean(scores, axis=1))),
      "best_of_n/top_tie_fraction": float(np.mean(top_ties)),  # prompts whose best score is shared
      "best_of_n/distinct_fraction": float(np.mean(distinct)),  # distinct responses / N, mean over prompts
      "best_of_n/response_length_mean": float(np.mean(lengths_BxN)),
      "best_of_n/best_response_length_mean": float(np.mean(best_len)),
      "best_of_n/eos_fraction": float(np.mean(r.ended_with_eos_BxN)),
      "best_of_n/logprob_mean": float(np.mean(r.logprobs_BxN)),  # per-sequence sums, mean over B * N
      "best_of_n/kl_analytic": float(best_of_n_kl(n)),
  }
  if r.heldout_scores_BxM is not None:
    est = empirical_best_of_n_kl(best, r.heldout_scores_BxM, n)
    metrics["best_of_n/kl_empirical"] = est.kl
    metrics["best_of_n/kl_empirical_stderr"] = est.stderr
    metrics["best_of_n/heldout_score_mean"] = float(np.mean(r.heldout_scores_BxM))
  return metrics
