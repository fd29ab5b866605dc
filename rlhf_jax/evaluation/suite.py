"""The evaluation suite: several policies against a reference on held-out lab prompts, as JSON + PNG.

`run_evaluation(config, workdir)` (configs/evaluate.py) loads the reference policy and every
policy by artifact id, samples each of them ("players"; the reference is player 0, every player
has its own PRNG stream, so a policy listed next to itself as reference is an independent
re-draw) on the same held-out review prompts, scores every response with each judge (the lab's
gold reward, plus a reward model or any reward source when given) and reports:

  win_rates         each policy vs the reference, per judge: (wins + ties / 2) / pairs with a
                    percentile-bootstrap interval (`win_rates.win_rate`); pairs share prompt and
                    sample index
  ratings           Elo (averaged over random game orders) and Bradley-Terry maximum likelihood
                    (Elo scale, reference = 0) from every pair of players on every shared prompt
  arithmetic        pass@k (unbiased estimator, Chen et al. 2021), majority@N (self-consistency)
                    and best@N (the sample ranked first by the policy's own log-prob, and by the
                    proxy judge when given) on the lab's arithmetic prompts, checked by the verifier
  hacking           response length, repetition and distinct-n, and their correlation with
                    each judge's reward (`hacking.hacking_signals`)
  kl_to_reference   KL(pi || pi_ref) per sequence on pi's own samples, k1 = sum(log pi - log
                    pi_ref) and k3 = sum(exp(r) - 1 - r), r = log pi_ref - log pi, teacher-forced
                    at temperature 1 (mean and standard error over samples)
  off_policy        each policy's expected gold reward estimated from the REFERENCE's samples by
                    ordinary and self-normalised importance sampling with Kish's effective sample
                    size, next to its on-policy mean (`off_policy.importance_sampling_estimate`)
  reward_model_agreement  with a proxy judge: its agreement with gold on the players' pairs and
                    with the lab's annotator and gold labels on held-out preference pairs, and its
                    rank correlation with gold over all responses

KL and importance weights need samples of the policies themselves (temperature 1, no top-k /
top-p) and one tokenizer shared with the reference; otherwise those sections say why they were
skipped. Outputs: `<workdir>/evaluation.json`, `samples.jsonl` and PNG plots (win_rates,
ratings, reward_vs_kl, pass_at_k, off_policy).

Shape letters: B prompts, K samples per prompt, R = B * K rows (prompt-major), N samples per
arithmetic problem, S response length, P prompt length.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rlhf_jax import lab, ops, sampling, sharding
from rlhf_jax.algorithms import best_of_n_run, lab_rewards, policy_loading, reward_source, run_setup
from rlhf_jax.data import chat
from rlhf_jax.sampling.sampler import left_pad
from rlhf_jax.evaluation import correlation, hacking, off_policy, ratings, sampled_accuracy, win_rates
from rlhf_jax.evaluation import suite_plots

logger = logging.getLogger(__name__)
REFERENCE = "reference"
GOLD = "gold"


@dataclasses.dataclass
class Player:
  """One sampled policy: its review responses with every judge's scores, and derived quantities."""
  name: str
  artifact_id: str
  prompts: list[str]  # [R]
  responses: list[str]  # [R]
  scores: dict[str, np.ndarray]  # judge -> [R] float64
  kl_k1_R: Optional[np.ndarray] = None  # per-sequence KL estimates on its own samples
  kl_k3_R: Optional[np.ndarray] = None
  log_w_R: Optional[np.ndarray] = None  # log pi(y) - log pi_ref(y) on the REFERENCE's samples
  arithmetic: Optional[dict[str, Any]] = None  # correct_BxN, answers_BxN, logprob_BxN, proxy_BxN


# ---------------------------------------------------------------------------------------------
# Analysis: pure NumPy over players.
# ---------------------------------------------------------------------------------------------


def win_rate_table(players: Sequence[Player], *, num_bootstrap: int, confidence: float, tie_tolerance: float,
                   seed: int) -> dict[str, dict[str, Any]]:
  """{judge: {player: win rate vs players[0] with CI and counts}} for players[1:]."""
  ref, out = players[0], {}
  for judge in ref.scores:
    out[judge] = {p.name: dataclasses.asdict(win_rates.win_rate(
        p.scores[judge], ref.scores[judge], tie_tolerance=tie_tolerance, num_bootstrap=num_bootstrap,
        confidence=confidence, seed=seed)) for p in players[1:]}
  return out


def pairwise_games(players: Sequence[Player], judge: str, tie_tolerance: float = 0.0):
  """(player_a_G, player_b_G, outcome_G): every pair of players on every shared row."""
  a, b, s = [], [], []
  for i in range(len(players)):
    for j in range(i + 1, len(players)):
      outcome = win_rates.pairwise_outcomes(players[i].scores[judge], players[j].scores[judge], tie_tolerance)
      a.append(np.full(outcome.size, i))
      b.append(np.full(outcome.size, j))
      s.append(outcome)
  return np.concatenate(a), np.concatenate(b), np.concatenate(s)


def rating_table(players: Sequence[Player], *, tie_tolerance: float, elo_k_factor: float, elo_num_orderings: int,
                 bt_prior_games: float, seed: int) -> dict[str, dict[str, Any]]:
  """{judge: {"elo": {player: rating}, "bradley_terry": {player: Elo-scale strength, players[0] = 0}}}."""
  out = {}
  for judge in players[0].scores:
    a, b, s = pairwise_games(players, judge, tie_tolerance)
    elo = ratings.elo_ratings(a, b, s, num_players=len(players), k_factor=elo_k_factor,
                              num_orderings=elo_num_orderings, seed=seed)
    bt = ratings.bradley_terry_ratings(a, b, s, num_players=len(players), prior_games=bt_prior_games)
    out[judge] = {"elo": {p.name: float(r) for p, r in zip(players, elo)},
                  "bradley_terry": {p.name: float(r) for p, r in zip(players, bt.elo_T)},
                  "bradley_terry_converged": bool(bt.converged), "num_games": int(s.size)}
  return out


def _mean_stderr(x: np.ndarray) -> dict[str, float]:
  x = np.asarray(x, np.float64)
  return {"mean": float(np.mean(x)), "stderr": float(np.std(x, ddof=1) / math.sqrt(x.size)) if x.size > 1 else 0.0}


def arithmetic_table(players: Sequence[Player], ks: Sequence[int]) -> dict[str, dict[str, Any]]:
  """pass@k, majority@N and best@N per player from its arithmetic samples."""
  out = {}
  for p in players:
    arith = p.arithmetic
    correct = np.asarray(arith["correct_BxN"], np.float64)
    b, n = correct.shape
    row = {"num_problems": b, "num_samples": n, "accuracy": float(correct.mean())}
    for k in ks:
      if k <= n:
        row[f"pass@{k}"] = float(np.mean(sampled_accuracy.pass_at_k(np.full(b, n), correct.sum(axis=1), k)))
    maj = sampled_accuracy.majority_at_n(arith["answers_BxN"], arith["references_B"])
    row[f"majority@{n}"] = maj.accuracy
    row["majority_ties"] = maj.num_tied
    row[f"best@{n}/logprob"] = sampled_accuracy.best_at_n(arith["logprob_BxN"], correct)
    if arith.get("proxy_BxN") is not None:
      row[f"best@{n}/proxy"] = sampled_accuracy.best_at_n(arith["proxy_BxN"], correct)
    out[p.name] = row
  return out


def kl_table(players: Sequence[Player]) -> dict[str, dict[str, float]]:
  """KL(pi || pi_ref) estimates per player (nats per sequence)."""
  return {p.name: {"k1": _mean_stderr(p.kl_k1_R)["mean"], "k1_stderr": _mean_stderr(p.kl_k1_R)["stderr"],
                   "k3": _mean_stderr(p.kl_k3_R)["mean"], "k3_stderr": _mean_stderr(p.kl_k3_R)["stderr"]}
          for p in players}


def off_policy_table(players: Sequence[Player], judge: str = GOLD) -> dict[str, dict[str, float]]:
  """IS / SNIS estimates of each player's mean `judge` reward from players[0]'s samples."""
  ref, out = players[0], {}
  for p in players:
    est = off_policy.importance_sampling_estimate(p.log_w_R, ref.scores[judge])
    on = _mean_stderr(p.scores[judge])
    out[p.name] = {**dataclasses.asdict(est), "on_policy": on["mean"], "on_policy_stderr": on["stderr"],
                   "num_samples": int(p.log_w_R.size)}
  return out


def agreement_on_players(players: Sequence[Player], proxy: str, gold: str = GOLD) -> dict[str, float]:
  """How often the proxy orders two players' responses like gold (gold ties left out), and the
  rank correlation of proxy and gold over every response."""
  _, _, gold_s = pairwise_games(players, gold)
  _, _, proxy_s = pairwise_games(players, proxy)
  decided = gold_s != 0.5
  agree = float(np.mean(proxy_s[decided] == gold_s[decided])) if decided.any() else float("nan")
  proxy_all = np.concatenate([p.scores[proxy] for p in players])
  gold_all = np.concatenate([p.scores[gold] for p in players])
  return {"pairwise_agreement": agree, "num_pairs": int(decided.sum()),
          "spearman": correlation.spearman(proxy_all, gold_all), "pearson": correlation.pearson(proxy_all, gold_all)}


def label_agreement(proxy_chosen_I: np.ndarray, proxy_rejected_I: np.ndarray, tie_I: np.ndarray) -> dict[str, Any]:
  """Fraction of non-tie labelled pairs where the proxy scores `chosen` higher (a proxy tie counts 1/2)."""
  keep = ~np.asarray(tie_I, bool)
  outcome = win_rates.pairwise_outcomes(proxy_chosen_I[keep], proxy_rejected_I[keep])
  return {"accuracy": float(outcome.mean()) if outcome.size else float("nan"), "num_pairs": int(outcome.size)}


# ---------------------------------------------------------------------------------------------
# Sampling and teacher-forced log-probs.
# ---------------------------------------------------------------------------------------------


def response_logprobs(params: Any, prompt_tokens_BxP: jax.Array, prompt_mask_BxP: jax.Array, tokens_BxS: jax.Array,
                      mask_BxS: jax.Array, *, model: Any) -> jax.Array:
  """Teacher-forced log pi(y_s | x, y_<s) at temperature 1 [B, S] (float32, 0 where mask is 0)."""
  tokens_BxL = jnp.concatenate([prompt_tokens_BxP, tokens_BxS], axis=1)
  segment_BxL = jnp.concatenate([prompt_mask_BxP, mask_BxS], axis=1).astype(jnp.int32)
  positions_BxL = (jnp.cumsum(segment_BxL, axis=1) - segment_BxL) * segment_BxL
  logits_BxLxV = model.apply({"params": params}, tokens_BxL, positions_BxL, segment_BxL).logits
  p, s = prompt_tokens_BxP.shape[1], tokens_BxS.shape[1]
  logp_BxS = ops.token_logprobs(logits_BxLxV[:, p - 1:p - 1 + s], tokens_BxS)  # output t predicts token t + 1
  return jnp.where(mask_BxS.astype(bool), logp_BxS, 0.0)


class Scorer:
  """Teacher-forced log-probs of one policy over host rows, in fixed-shape chunks (one compile)."""

  def __init__(self, policy: policy_loading.LoadedPolicy, batch_size: int):
    self.policy, self.batch_size = policy, batch_size
    self._fn = jax.jit(functools.partial(response_logprobs, model=policy.model))

  def __call__(self, prompts: Sequence[Any], tokens_RxS: np.ndarray, mask_RxS: np.ndarray) -> np.ndarray:
    ids = [chat.render_prompt(self.policy.tokenizer, p) for p in prompts]
    length = max(len(i) for i in ids)
    out = []
    for start in range(0, len(ids), self.batch_size):
      stop = min(start + self.batch_size, len(ids))
      rows = list(range(start, stop)) + [stop - 1] * (self.batch_size - (stop - start))  # pad the last chunk
      tok, mask = left_pad([ids[r] for r in rows], length, self.policy.tokenizer.pad_id)
      logp = self._fn(self.policy.params, tok, mask, tokens_RxS[rows], mask_RxS[rows])
      out.append(np.asarray(run_setup.to_host(logp), np.float64)[:stop - start])
    return np.concatenate(out)


def _flat(x_BxNx: np.ndarray) -> np.ndarray:
  return x_BxNx.reshape((-1,) + x_BxNx.shape[2:])


def sequence_kl(logp_RxS: np.ndarray, ref_logp_RxS: np.ndarray, mask_RxS: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-sequence (k1_R, k3_R) in float64: sums over response tokens of `ops.kl_k1` / `ops.kl_k3`."""
  mask = np.asarray(mask_RxS, bool)
  r = np.where(mask, ref_logp_RxS - logp_RxS, 0.0)
  return np.sum(-r, axis=1), np.sum(np.where(mask, np.expm1(r) - r, 0.0), axis=1)


def _same_distribution(cfg: sampling.SamplingConfig) -> bool:
  return cfg.temperature == 1.0 and cfg.top_k == 0 and cfg.top_p == 1.0


def sample_players(config: ml_collections.ConfigDict, loaded: Sequence[policy_loading.LoadedPolicy],
                   names: Sequence[str], judges: Mapping[str, reward_source.RewardSource]
                   ) -> tuple[list[Player], Optional[str]]:
  """Samples every player on the review (and arithmetic) prompts; returns players and the reason
  KL / importance weights were skipped (None when computed)."""
  base_key = jax.random.key(config.seed)
  cfg = best_of_n_run.sampling_config(config.sampling, config.prompts.samples_per_prompt)
  prompts = lab_rewards.lab_prompts("reviews", "eval", config.prompts.num, seed=config.prompts.lab_seed)
  gold = lab_rewards.gold_source("reviews")
  ref_tok = loaded[0].tokenizer.id
  skip = None
  if not _same_distribution(cfg):
    skip = "sampling is not the policies' own distribution (needs temperature 1, top_k 0, top_p 1)"
  elif any(p.tokenizer.id != ref_tok for p in loaded):
    skip = "a policy's tokenizer differs from the reference's (log-prob ratios need one vocabulary)"
  players, results = [], []
  for i, (policy, name) in enumerate(zip(loaded, names)):
    result = best_of_n_run.chunked_best_of_n(policy, prompts, jax.random.fold_in(base_key, i), cfg, reward=gold,
                                             num_heldout=0, batch_size=config.prompts.batch_size)
    texts = best_of_n_run.response_texts(result)
    row_prompts = [p.prompt for p in prompts for _ in range(cfg.num_samples)]
    scores = {GOLD: _flat(result.scores_BxN).astype(np.float64)}
    for judge_name, judge in judges.items():
      scores[judge_name] = lab_rewards.score_texts(judge, row_prompts, texts).astype(np.float64)
    players.append(Player(name=name, artifact_id=policy.artifact_id, prompts=row_prompts, responses=texts,
                          scores=scores))
    results.append(result)
  if skip is None:
    row_prompts = players[0].prompts
    by_artifact = {p.artifact_id: Scorer(p, config.prompts.batch_size) for p in loaded}  # one compile each
    scorers = [by_artifact[p.artifact_id] for p in loaded]
    ref_tokens, ref_mask = _flat(results[0].tokens_BxNxS), _flat(results[0].mask_BxNxS)
    ref_on_ref = scorers[0](row_prompts, ref_tokens, ref_mask)
    for i, player in enumerate(players):
      tokens, mask = _flat(results[i].tokens_BxNxS), _flat(results[i].mask_BxNxS)
      own = scorers[i](row_prompts, tokens, mask)
      ref = scorers[0](row_prompts, tokens, mask)
      player.kl_k1_R, player.kl_k3_R = sequence_kl(own, ref, mask)
      player.log_w_R = np.sum(scorers[i](row_prompts, ref_tokens, ref_mask) - ref_on_ref, axis=1)
  if config.arithmetic.num_prompts > 0:
    sample_arithmetic(config, loaded, players, judges)
  return players, skip


def sample_arithmetic(config: ml_collections.ConfigDict, loaded: Sequence[policy_loading.LoadedPolicy],
                      players: Sequence[Player], judges: Mapping[str, reward_source.RewardSource]) -> None:
  """N samples per arithmetic problem per player: verifier correctness, answers, log-probs, proxy."""
  base_key = jax.random.fold_in(jax.random.key(config.seed), 10_000)
  cfg = best_of_n_run.sampling_config(config.arithmetic.sampling, config.arithmetic.num_samples)
  problems = lab_rewards.lab_prompts("arithmetic", "eval", config.arithmetic.num_prompts, seed=config.prompts.lab_seed)
  references = [p.metadata["answer"] for p in problems]
  proxy = judges.get("proxy")
  for i, (policy, player) in enumerate(zip(loaded, players)):
    result = best_of_n_run.chunked_best_of_n(policy, problems, jax.random.fold_in(base_key, i), cfg,
                                             reward=lab_rewards.gold_source("arithmetic"), num_heldout=0,
                                             batch_size=config.arithmetic.batch_size)
    answers = [[lab.extract_answer(t) for t in row] for row in result.responses]
    player.arithmetic = {"correct_BxN": result.scores_BxN.astype(np.float64), "references_B": references,
                         "answers_BxN": answers, "logprob_BxN": result.logprobs_BxN, "proxy_BxN": None}
    if proxy is not None:
      prompts = [p.prompt for p in problems for _ in range(cfg.num_samples)]
      player.arithmetic["proxy_BxN"] = lab_rewards.score_texts(
          proxy, prompts, best_of_n_run.response_texts(result)).reshape(result.scores_BxN.shape).astype(np.float64)


# ---------------------------------------------------------------------------------------------
# The run.
# ---------------------------------------------------------------------------------------------


def parse_policy_ids(value: str, field: str = "policies") -> list[str]:
  ids = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)
  if not ids:
    raise ValueError(f"{field} is empty: give comma-separated policy artifact ids")
  repeated = sorted({i for i in ids if ids.count(i) > 1})
  if repeated:
    raise ValueError(f"{field} lists {repeated} more than once")
  return ids


def validate_and_derive(config: ml_collections.ConfigDict, num_devices: Optional[int] = None,
                        num_processes: Optional[int] = None) -> dict[str, int]:
  """Checks the config without devices; returns the mesh shape."""
  del num_processes  # every process samples all rows
  num_devices = jax.device_count() if num_devices is None else num_devices
  shape = sharding.resolve_mesh_shape({"data": config.mesh.data, "fsdp": config.mesh.fsdp,
                                       "tensor": config.mesh.tensor}, num_devices)
  for field in ("prompts.num", "prompts.batch_size", "prompts.samples_per_prompt", "arithmetic.batch_size",
                "arithmetic.num_samples", "win_rate.num_bootstrap"):
    section, name = field.split(".")
    if config[section][name] <= 0:
      raise ValueError(f"{field} must be positive, got {config[section][name]}")
  if config.arithmetic.num_prompts < 0:
    raise ValueError(f"arithmetic.num_prompts must be >= 0, got {config.arithmetic.num_prompts}")
  if not 0 < config.win_rate.confidence < 1:
    raise ValueError(f"win_rate.confidence must lie in (0, 1), got {config.win_rate.confidence}")
  if any(k < 1 for k in config.arithmetic.ks):
    raise ValueError(f"arithmetic.ks must be positive, got {tuple(config.arithmetic.ks)}")
  best_of_n_run.sampling_config(config.sampling, config.prompts.samples_per_prompt)
  best_of_n_run.sampling_config(config.arithmetic.sampling, config.arithmetic.num_samples)
  if config.judges.proxy:
    best_of_n_run.check_reward_name(config.judges.proxy, "reviews", field="judges.proxy")
    if config.judges.proxy == GOLD:
      raise ValueError("judges.proxy='gold' duplicates the gold judge; leave it empty")
  return dict(zip(sharding.MESH_AXES, shape))


def run_evaluation(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                   judges: Optional[Mapping[str, reward_source.RewardSource]] = None) -> dict[str, Any]:
  """Runs the suite (module docstring) and returns what it writes to `<workdir>/evaluation.json`.

  Args:
    config: configs/evaluate.py.
    workdir: output folder.
    judges: extra reward sources by name (e.g. from a colab), scored next to gold and the proxy.
  """
  workdir = run_setup.workdir_path(workdir)
  validate_and_derive(config)
  policy_ids = parse_policy_ids(config.policies)
  if not config.reference:
    raise ValueError("reference is empty: give the reference policy's artifact id")
  workdir.mkdir(parents=True, exist_ok=True)
  registry_path = run_setup.registry_dir(workdir, config.registry_dir)
  mesh, rules = run_setup.mesh_from_config(config.mesh), run_setup.rules_from_config(config.mesh)
  cache: dict[str, policy_loading.LoadedPolicy] = {}
  for artifact_id in [config.reference] + policy_ids:
    if artifact_id not in cache:
      cache[artifact_id] = policy_loading.load_policy(registry_path, artifact_id, mesh=mesh, rules=rules)
  loaded = [cache[config.reference]] + [cache[i] for i in policy_ids]
  names = [REFERENCE] + policy_ids
  all_judges = dict(judges or {})
  for reserved in (GOLD, REFERENCE, "proxy"):
    if reserved in all_judges:
      raise ValueError(f"judge name {reserved!r} is reserved")
  if config.judges.proxy:
    all_judges["proxy"] = lab_rewards.make_reward_source(config.judges.proxy, registry_dir=registry_path,
                                                         remote_model=config.judges.remote_model,
                                                         remote_timeout_s=config.judges.remote_timeout_s,
                                                         field="judges.proxy")
  players, skip = sample_players(config, loaded, names, all_judges)

  wr, rt = config.win_rate, config.ratings
  report: dict[str, Any] = {
      "reference": config.reference, "players": [{"name": p.name, "artifact_id": p.artifact_id} for p in players],
      "judges": list(players[0].scores), "proxy_judge": config.judges.proxy or None,
      "num_prompts": config.prompts.num, "samples_per_prompt": config.prompts.samples_per_prompt,
      "sampling": config.sampling.to_dict(), "seed": config.seed,
      "on_policy": {p.name: {j: _mean_stderr(v) for j, v in p.scores.items()} for p in players},
      "win_rates": win_rate_table(players, num_bootstrap=wr.num_bootstrap, confidence=wr.confidence,
                                  tie_tolerance=wr.tie_tolerance, seed=config.seed),
      "ratings": rating_table(players, tie_tolerance=wr.tie_tolerance, elo_k_factor=rt.elo_k_factor,
                              elo_num_orderings=rt.elo_num_orderings, bt_prior_games=rt.bt_prior_games,
                              seed=config.seed),
      "hacking": {p.name: {j: hacking.hacking_signals(p.responses, v, tuple(config.hacking.ngram_sizes))
                           for j, v in p.scores.items()} for p in players},
      "arithmetic": (arithmetic_table(players, tuple(config.arithmetic.ks))
                     if config.arithmetic.num_prompts > 0 else None),
      "kl_to_reference": kl_table(players) if skip is None else {"skipped": skip},
      "off_policy": off_policy_table(players) if skip is None else {"skipped": skip},
      "reward_model_agreement": None,
  }
  if "proxy" in all_judges:
    report["reward_model_agreement"] = {"on_players": agreement_on_players(players, "proxy"),
                                        **lab_label_agreement(all_judges["proxy"], config)}
  if run_setup.is_main_process():
    _write_samples(workdir / "samples.jsonl", players)
    if config.plot:
      report["plots"] = suite_plots.plot_report(report, workdir)
  report = best_of_n_run.jsonable(report)
  run_setup.write_json_side_file(workdir / "evaluation.json", json.dumps(report, indent=2))
  return report


def lab_label_agreement(proxy: reward_source.RewardSource, config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Proxy accuracy on the lab's held-out preference pairs against annotator and gold labels."""
  if config.agreement.num_pairs <= 0:
    return {}
  sizes = {f.name: 0 for f in dataclasses.fields(lab.LabConfig) if f.name.startswith("num_")}
  lab_cfg = lab.LabConfig(seed=config.prompts.lab_seed, **{**sizes, "num_preferences_eval": config.agreement.num_pairs})
  pairs = lab.review_pairs(lab_cfg, "eval")
  out = {}
  for label_kind, gold_labels in (("annotator_labels", False), ("gold_labels", True)):
    records = lab.review_preferences(lab_cfg, "eval", gold_labels=gold_labels, pairs=pairs).records
    prompts = [r["prompt"] for r in records]
    chosen = lab_rewards.score_texts(proxy, prompts, [r["chosen"] for r in records]).astype(np.float64)
    rejected = lab_rewards.score_texts(proxy, prompts, [r["rejected"] for r in records]).astype(np.float64)
    out[label_kind] = label_agreement(chosen, rejected, np.array([r["tie"] for r in records]))
  return out


def _write_samples(path: Any, players: Sequence[Player]) -> None:
  lines = [json.dumps({"player": p.name, "prompt": p.prompts[r], "response": p.responses[r],
                       **{f"score/{j}": float(v[r]) for j, v in p.scores.items()}})
           for p in players for r in range(len(p.responses))]
  run_setup.write_json_side_file(path, "\n".join(lines) + "\n")
