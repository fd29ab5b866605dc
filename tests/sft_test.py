"""SFT: the step's loss against a NumPy reference, packing == no packing, and a short real run."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import models
from rlhf_jax.algorithms import host_loop, sft
from rlhf_jax.data import packing
from configs import sft as sft_config

CFG = models.get_model_config("test")
EXAMPLES = [([2, 10, 11, 12, 40, 41, 3], [0, 0, 0, 0, 1, 1, 1]),
            ([2, 20, 50, 51, 52, 3], [0, 0, 1, 1, 1, 1]),
            ([2, 30, 31, 60, 3], [0, 0, 0, 1, 1])]


@pytest.fixture(scope="module")
def lm_params(test_lm):
  return test_lm


def _unpacked_batch(L=8):
  rows, _ = sft.make_rows([e[0] for e in EXAMPLES], [e[1] for e in EXAMPLES], seq_len=L, pad_id=0, pack=False)
  return {k: jnp.asarray(np.stack([r[k] for r in rows])) for k in rows[0]}


def _packed_batch(L=24):
  result = packing.pack_sequences([e[0] for e in EXAMPLES], [e[1] for e in EXAMPLES], row_length=L, pad_id=0)
  r = result.rows
  assert r.tokens_BxL.shape[0] == 1  # all three examples share one row
  return {"tokens": jnp.asarray(r.tokens_BxL), "positions": jnp.asarray(r.positions_BxL),
          "segment_ids": jnp.asarray(r.segment_ids_BxL), "loss_mask": jnp.asarray(r.loss_mask_BxL)}


def test_loss_equals_numpy_reference(lm_params):
  lm, params = lm_params
  batch = _unpacked_batch()
  loss_sum, (count, metrics) = sft.sft_loss_fn(params, batch, model=lm)
  logits = np.asarray(lm.apply({"params": params}, batch["tokens"], batch["positions"],
                               batch["segment_ids"]).logits, np.float64)
  total, n = 0.0, 0
  for b, (ids, mask) in enumerate(EXAMPLES):
    for t in range(1, len(ids)):
      if mask[t]:  # response token t is predicted from position t - 1
        z = logits[b, t - 1]
        logp = z[ids[t]] - (np.log(np.sum(np.exp(z - z.max()))) + z.max())
        total -= logp
        n += 1
  assert int(count) == n == 9
  np.testing.assert_allclose(float(loss_sum), total, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["loss/nll"]), total / n, rtol=1e-5)


def test_packed_rows_give_same_loss_and_gradients(lm_params):
  lm, params = lm_params
  grad_fn = jax.grad(lambda p, b: sft.sft_loss_fn(p, b, model=lm)[0])
  unpacked, packed = _unpacked_batch(), _packed_batch()
  (s1, (c1, _)), (s2, (c2, _)) = sft.sft_loss_fn(params, unpacked, model=lm), sft.sft_loss_fn(params, packed, model=lm)
  assert int(c1) == int(c2)
  np.testing.assert_allclose(s1, s2, rtol=1e-5)
  g1, g2 = grad_fn(params, unpacked), grad_fn(params, packed)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), g1, g2)


def test_chunked_logprobs_give_same_loss(lm_params):
  lm, params = lm_params
  batch = _packed_batch()
  full = sft.sft_loss_fn(params, batch, model=lm)[0]
  chunked = sft.sft_loss_fn(params, batch, model=lm, chunk_size=100)[0]  # 512 = 5 chunks + a partial one
  np.testing.assert_allclose(full, chunked, rtol=1e-5)


def test_targets_never_cross_segments():
  tokens = jnp.array([[2, 5, 6, 2, 7, 0]])
  seg = jnp.array([[1, 1, 1, 2, 2, 0]])
  mask = jnp.array([[1, 1, 1, 1, 1, 0]])
  _, valid = sft.next_token_targets(tokens, seg, mask)
  np.testing.assert_array_equal(valid, [[True, True, False, True, False]])


def test_train_sft_runs_resumes_and_registers(tmp_path):
  config = sft_config.get_config("test")
  config.train.total_steps = config.optimizer.total_steps = 6
  summary = sft.train_sft(config, tmp_path / "sft")
  assert summary["last_loss"] < summary["first_loss"]
  record = json.loads((tmp_path / "artifacts" / f"{summary['artifact_id']}.json").read_text())
  assert record["kind"] == "policy" and record["tokenizer_id"] and record["dataset_ids"] == [summary["dataset_id"]]
  lines = (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(l)["step"] for l in lines if "loss/nll" in l] == [1, 2, 3, 4, 5, 6]
  # Running again on the same workdir resumes at the end: no step is trained twice, same artifact.
  again = sft.train_sft(config, tmp_path / "sft")
  assert again["artifact_id"] == summary["artifact_id"]


def test_non_finite_loss_stops_with_a_clear_error(tmp_path):
  config = sft_config.get_config("test")
  config.optimizer.lr = 1e30
  config.optimizer.warmup_steps = 0
  config.optimizer.grad_clip_norm = 0.0
  config.eval.num_sample_prompts = 0
  with pytest.raises(host_loop.NonFiniteLossError, match=r"step \d+: metric 'loss/"):
    sft.train_sft(config, tmp_path / "sft")


@pytest.mark.parametrize("field,value,match", [
    ("batch.global_batch_size", 7, "batch_size"), ("data.seq_len", 100_000, "seq_len"),
    ("optimizer.decay", "exp", "optimizer.decay"), ("model.num_kv_heads", 3, "num_kv_heads")])
def test_validate_and_derive_names_the_field(field, value, match):
  config = sft_config.get_config("test")
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ValueError, match=match):
    sft.validate_and_derive(config, num_devices=8)
