"""Sharded (8 fake CPU devices, mesh data 2 x fsdp 2 x tensor 2) equals single-device."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from rlhf_jax import models, sampling, sharding

CFG = models.get_model_config("test")


@pytest.fixture(scope="module")
def sharded():
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  lm = models.CausalLM(CFG, mesh=mesh, rules=sharding.DEFAULT_RULES)
  init = lambda key: models.init_params(lm, key)  # noqa: E731
  params, shardings = sharding.init_sharded(init, mesh, sharding.DEFAULT_RULES, jax.random.key(0))
  return mesh, lm, params, shardings


def test_mesh_shape_resolution():
  assert sharding.resolve_mesh_shape({"data": 2, "tensor": -1}, 8) == (2, 1, 4)
  with pytest.raises(ValueError, match="needs 6 devices"):
    sharding.resolve_mesh_shape({"data": 3, "tensor": 2}, 8)
  with pytest.raises(ValueError, match="at most one"):
    sharding.resolve_mesh_shape({"data": -1, "tensor": -1}, 8)
  with pytest.raises(ValueError, match="unknown"):
    sharding.resolve_mesh_shape({"model": 2}, 8)


def test_parameters_are_sharded_as_the_rules_say(sharded):
  _, _, params, shardings = sharded
  layer = params["decoder"]["layer_0"]
  assert layer["attn"]["query"]["kernel"].sharding.spec == P("fsdp", "tensor", None)
  assert layer["attn"]["key"]["kernel"].sharding.spec == P("fsdp", "tensor", None)
  assert layer["attn"]["out"]["kernel"].sharding.spec == P("tensor", None, "fsdp")
  assert layer["mlp"]["wi_gate"]["kernel"].sharding.spec == P("fsdp", "tensor")
  assert layer["mlp"]["wo"]["kernel"].sharding.spec == P("tensor", "fsdp")
  assert params["decoder"]["embed"]["embedding"].sharding.spec == P("tensor", "fsdp")
  assert params["lm_head"]["kernel"].sharding.spec == P("fsdp", "tensor")
  assert layer["attn_norm"]["scale"].sharding.spec == P(None)
  # Each device holds a quarter of a (fsdp x tensor)-sharded matrix.
  q = layer["attn"]["query"]["kernel"]
  assert q.addressable_shards[0].data.shape == (CFG.d_model // 2, CFG.num_heads // 2, CFG.head_dim)
  assert jax.tree.structure(params) == jax.tree.structure(shardings)


def test_indivisible_sharding_is_a_clear_error():
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 8})
  lm = models.CausalLM(CFG)
  with pytest.raises(ValueError, match="not divisible by mesh axes"):
    sharding.init_sharded(lambda k: models.init_params(lm, k), mesh, sharding.DEFAULT_RULES, jax.random.key(0))


def test_sharded_forward_and_sampler_equal_single_device(sharded):
  mesh, lm_sharded, params, _ = sharded
  single = jax.device_get(params)
  lm = models.CausalLM(CFG)
  toks = jax.random.randint(jax.random.key(1), (4, 12), 4, CFG.vocab_size)
  seg = jnp.ones_like(toks).at[0, :3].set(0)
  ref = lm.apply({"params": single}, toks, None, seg)
  out = jax.jit(lambda p, t, s: lm_sharded.apply({"params": p}, t, None, s))(
      params, jax.device_put(toks, sharding.batch_sharding(mesh, 2)), seg)
  np.testing.assert_allclose(out.logits, ref.logits, atol=1e-5)

  prompts = [[2, 17, 99, 45], [2, 301], [2, 7, 8], [2, 9, 9, 9, 9]]
  cfg = sampling.SamplingConfig(max_new_tokens=6, temperature=0.7, stop_at_eos=False)
  ref_s = sampling.Sampler(lm, eos_id=3, pad_id=0).generate(single, prompts, jax.random.key(5), cfg)
  out_s = sampling.Sampler(lm_sharded, eos_id=3, pad_id=0).generate(params, prompts, jax.random.key(5), cfg)
  np.testing.assert_array_equal(out_s.tokens_BxS, ref_s.tokens_BxS)
  np.testing.assert_allclose(out_s.logprobs_BxS, ref_s.logprobs_BxS, atol=1e-5)
