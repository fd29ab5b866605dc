"""A registered policy artifact back as (model, params, tokenizer, record), ready to sample from.

Trainers (SFT = Supervised Fine-Tuning, DPO = Direct Preference Optimization, PPO = Proximal
Policy Optimization, rejection-sampling fine-tuning) export their final parameters and register a
record of kind "policy" naming the model config, the parameter folder and the tokenizer
(`run_setup.export_and_register`). Every consumer (best-of-N, evaluation, the next training
stage) loads a policy through `load_policy`, so the checks live in one place:

  policy = load_policy(registry_dir, "sft_policy@3f2a9c01b2d4")          # one device
  policy = load_policy(registry_dir, artifact_id, mesh=mesh)              # sharded by logical axes
  sampler = make_sampler(policy)
  out = sampler.generate(policy.params, prompt_ids, key, SamplingConfig(num_samples=4))
"""
from __future__ import annotations

import functools
from typing import Any, Mapping, NamedTuple, Optional

import flax.linen as nn
import jax

from rlhf_jax import models, sampling, sharding
from rlhf_jax.algorithms import run_setup
from rlhf_jax.checkpointing import registry
from rlhf_jax.data.tokenizer import Tokenizer

POLICY_KIND = "policy"
REQUIRED_FIELDS = ("params_path", "model_config", "tokenizer_path")


class LoadedPolicy(NamedTuple):
  """A loaded policy; unpacks as `model, params, tokenizer, record = load_policy(...)`."""
  model: models.CausalLM
  params: Any  # plain (unboxed) pytree, on one device or sharded over the mesh
  tokenizer: Tokenizer
  record: dict[str, Any]  # the registry record (artifact_id, kind, model_config, provenance...)

  @property
  def artifact_id(self) -> str:
    return self.record["artifact_id"]


def check_policy_record(record: Mapping[str, Any], artifact_id: str) -> None:
  """Raises ValueError naming the artifact when `record` is not a loadable policy record."""
  if record.get("kind") != POLICY_KIND:
    raise ValueError(f"artifact {artifact_id!r} is of kind {record.get('kind')!r}, not {POLICY_KIND!r}; "
                     "pass the id of a policy (written by train_sft, DPO, PPO or rejection sampling)")
  missing = [k for k in REQUIRED_FIELDS if not record.get(k)]
  if missing:
    raise ValueError(f"artifact {artifact_id!r}: its record lacks {missing}")


def abstract_params(model: models.CausalLM, mesh: Optional[jax.sharding.Mesh],
                    rules: Optional[sharding.LogicalRules] = None) -> Any:
  """Restore target: ShapeDtypeStructs of the model's params, sharded by logical axes over `mesh`
  (or all on the first device when `mesh` is None)."""
  boxed = jax.eval_shape(functools.partial(models.init_params, model), jax.random.key(0))
  unboxed = nn.unbox(boxed)
  if mesh is None:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), unboxed)
  shardings = sharding.logical_shardings(boxed, mesh, rules if rules is not None else sharding.DEFAULT_RULES)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), unboxed, shardings)


def load_policy(registry_dir: Any, artifact_id: str, mesh: Optional[jax.sharding.Mesh] = None, *,
                rules: Optional[sharding.LogicalRules] = None,
                compute_dtype: Optional[str] = None) -> LoadedPolicy:
  """Loads a registered policy artifact.

  Args:
    registry_dir: the artifact registry folder (local or `gs://...`).
    artifact_id: e.g. "sft_policy@3f2a9c01b2d4" (a path to a record `.json` works too).
    mesh: shard the parameters over this mesh by their logical axes (and build the model with
      the mesh's activation constraints); None puts everything on the first device.
    rules: logical-axis rules with `mesh`; default `sharding.DEFAULT_RULES`.
    compute_dtype: override the record's compute dtype (e.g. "float32" to sample a bfloat16-
      trained policy in full precision); None keeps it.

  Returns:
    LoadedPolicy(model, params, tokenizer, record).

  Raises:
    FileNotFoundError: the id is not registered (the message lists the known ids) or files are gone.
    ValueError: the artifact is not a policy, its tokenizer is not the one it was trained with,
      or the tokenizer's vocabulary does not fit the model.
  """
  record = registry.resolve(registry_dir, artifact_id)
  check_policy_record(record, artifact_id)
  cfg = models.ModelConfig.from_dict(record["model_config"])
  if compute_dtype is not None:
    cfg = cfg.replace(compute_dtype=compute_dtype)
  cfg = cfg.validate()
  tokenizer = run_setup.load_tokenizer(record["tokenizer_path"])
  expected = record.get("tokenizer_id")
  if expected and tokenizer.id != expected:
    raise ValueError(f"artifact {artifact_id!r}: the tokenizer at {record['tokenizer_path']} has id "
                     f"{tokenizer.id!r} but the policy was trained with {expected!r}")
  if tokenizer.vocab_size > cfg.vocab_size:
    raise ValueError(f"artifact {artifact_id!r}: tokenizer has {tokenizer.vocab_size} pieces, more than the "
                     f"model's vocab_size {cfg.vocab_size}")
  model = models.CausalLM(cfg) if mesh is None else models.CausalLM(
      cfg, mesh=mesh, rules=rules if rules is not None else sharding.DEFAULT_RULES)
  params = registry.load_params(record["params_path"], abstract_params(model, mesh, rules))
  return LoadedPolicy(model=model, params=params, tokenizer=tokenizer, record=dict(record))


def make_sampler(policy: LoadedPolicy, **kwargs: Any) -> sampling.Sampler:
  """A `sampling.Sampler` for the policy with its tokenizer's EOS and PAD ids (kwargs: buckets)."""
  return sampling.Sampler(policy.model, eos_id=policy.tokenizer.eos_id, pad_id=policy.tokenizer.pad_id, **kwargs)
