"""Precomputed reference log-probs: values, storage with ids and hash, and the same training run."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rlhf_jax import models
from rlhf_jax.algorithms import dpo, reference_logprobs as rl, train_state
from rlhf_jax.data import loader as loader_lib

CFG = models.get_model_config("test")
BUCKETS = (24,)


def _records(num: int, seed: int = 0) -> list[dict]:
  rng = np.random.default_rng(seed)
  ids = lambda lo, hi: rng.integers(4, CFG.vocab_size, size=rng.integers(lo, hi)).tolist()  # noqa: E731
  return [{"id": f"pair-{i:03d}", "prompt_ids": [2] + ids(2, 8), "chosen_ids": ids(1, 8) + [3],
           "rejected_ids": ids(1, 8) + [3], "tie": False, "weight": 1.0} for i in range(num)]


@pytest.fixture(scope="module")
def setup():
  lm = models.CausalLM(CFG)
  init = jax.jit(lambda key: nn.unbox(models.init_params(lm, key)))
  logp_fn = dpo.make_lm_logp_fn(lm)
  return {"lm": lm, "params": init(jax.random.key(0)), "ref_params": init(jax.random.key(1)),
          "logp_fn": logp_fn, "ref_fn": rl.make_reference_fn(logp_fn), "records": _records(10)}


@pytest.fixture(scope="module")
def table(setup):
  # Batches of 3 over 10 records: the last batch has a filler row, and the compositions differ
  # from the training batches below.
  return rl.compute_reference_logprobs(setup["ref_params"], setup["records"],
                                       ref_fn=setup["ref_fn"], batch_size=3, buckets=BUCKETS,
                                       pad_id=0, dataset_id="toy@1", reference_id="ref-a")


def test_values_equal_a_direct_forward_pass_per_record(setup, table):
  assert len(table) == 10 and table.example_ids[3] == "pair-003"
  records = [setup["records"][i] for i in (7, 2, 9, 0)]
  batch = dpo.collate_dpo(records, buckets=BUCKETS, pad_id=0)
  chosen_B, rejected_B = setup["ref_fn"](setup["ref_params"], batch)
  want_c, want_r = table.lookup([r["id"] for r in records])
  np.testing.assert_allclose(want_c, chosen_B, rtol=1e-6)
  np.testing.assert_allclose(want_r, rejected_B, rtol=1e-6)
  assert np.all(want_c < 0) and not np.allclose(want_c, want_r)


def test_save_load_roundtrip_and_manifest(tmp_path, table):
  folder = rl.cache_directory(tmp_path, "toy@1", "ref/a b")
  assert folder.name == "toy_1__ref_a_b"
  manifest = rl.save(folder, table, {"tokenizer_id": "tok-1"})
  on_disk = json.loads((folder / rl.MANIFEST_FILE).read_text())
  assert on_disk == manifest
  assert on_disk["dataset_id"] == "toy@1" and on_disk["reference_id"] == "ref-a"
  assert on_disk["num_examples"] == 10 and on_disk["content_hash"].startswith("sha256:")
  assert on_disk["extra"] == {"tokenizer_id": "tok-1"}
  loaded = rl.load(folder, dataset_id="toy@1", reference_id="ref-a")
  np.testing.assert_array_equal(loaded.example_ids, table.example_ids)
  np.testing.assert_array_equal(loaded.chosen_logp_N, table.chosen_logp_N)
  np.testing.assert_array_equal(loaded.rejected_logp_N, table.rejected_logp_N)
  assert not list(tmp_path.glob(".*tmp*"))  # the temporary folder was renamed into place


def test_load_refuses_other_ids_edits_and_missing_files(tmp_path, table):
  folder = tmp_path / "ref"
  rl.save(folder, table)
  with pytest.raises(rl.ReferenceLogProbsError, match="computed for dataset 'toy@1'.*'toy@2'"):
    rl.load(folder, dataset_id="toy@2")
  with pytest.raises(rl.ReferenceLogProbsError, match="reference 'ref-a'.*'ref-b'"):
    rl.load(folder, dataset_id="toy@1", reference_id="ref-b")
  edited = table.chosen_logp_N.copy()
  edited[4] += 1e-3
  np.savez(folder / rl.ARRAYS_FILE, example_ids=table.example_ids, ref_chosen_logp_N=edited,
           ref_rejected_logp_N=table.rejected_logp_N)
  with pytest.raises(rl.ReferenceLogProbsError, match="content hash .* does not match"):
    rl.load(folder, dataset_id="toy@1")
  (folder / rl.ARRAYS_FILE).unlink()
  with pytest.raises(rl.ReferenceLogProbsError, match="reference_logprobs.npz: missing"):
    rl.load(folder, dataset_id="toy@1")
  (folder / rl.MANIFEST_FILE).write_text("{not json")
  with pytest.raises(rl.ReferenceLogProbsError, match=r"manifest.json:1: not valid JSON"):
    rl.load(folder, dataset_id="toy@1")
  with pytest.raises(rl.ReferenceLogProbsError, match="no reference log-prob manifest"):
    rl.load(tmp_path / "absent", dataset_id="toy@1")


def test_lookup_and_duplicate_ids_are_clear_errors(table):
  with pytest.raises(KeyError, match="'pair-999' has no precomputed reference log-probs"):
    table.lookup(["pair-001", "pair-999"])
  with pytest.raises(rl.ReferenceLogProbsError, match="'a' appears twice"):
    rl.ReferenceLogProbs(["a", "b", "a"], [0.0] * 3, [0.0] * 3, dataset_id="d", reference_id="r")


def test_load_or_compute_computes_once(tmp_path, table):
  calls = []

  def compute():
    calls.append(1)
    return table

  first = rl.load_or_compute(tmp_path, dataset_id="toy@1", reference_id="ref-a", compute=compute)
  second = rl.load_or_compute(tmp_path, dataset_id="toy@1", reference_id="ref-a", compute=compute)
  assert first[2] is True and second[2] is False and len(calls) == 1
  np.testing.assert_array_equal(second[0].chosen_logp_N, table.chosen_logp_N)
  with pytest.raises(ValueError, match="expected"):
    rl.load_or_compute(tmp_path, dataset_id="toy@1", reference_id="ref-b", compute=compute)


def test_precomputed_and_in_step_reference_give_the_same_training_run(setup, table):
  tx = optax.adamw(1e-3, weight_decay=0.01)
  step = jax.jit(dpo.make_dpo_step(setup["logp_fn"], "dpo", {"beta": 0.2}, tx))

  def run(reference):
    state = train_state.TrainState(step=jnp.zeros((), jnp.int32), params=setup["params"],
                                   opt_state=tx.init(setup["params"]))
    batch_fn = lambda ex: dpo.collate_dpo(ex, buckets=BUCKETS, pad_id=0, reference=reference)  # noqa: E731
    loader = loader_lib.make_loader(setup["records"], batch_size=4, seed=3, batch_fn=batch_fn)
    ref_params = None if reference is not None else setup["ref_params"]
    losses = []
    for i, batch in zip(range(3), loader):
      state, metrics = step(state, batch, jax.random.key(i), ref_params)
      losses.append(float(metrics["loss/total"]))
    return state, losses

  in_step, in_step_losses = run(None)
  precomputed, precomputed_losses = run(table)
  np.testing.assert_allclose(precomputed_losses, in_step_losses, rtol=1e-6)
  assert in_step_losses[0] != pytest.approx(np.log(2.0), abs=1e-3)  # policy != reference
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), in_step.params, setup["params"])
  assert max(jax.tree.leaves(moved)) > 1e-4  # the runs went somewhere
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), precomputed.params,
               in_step.params)
