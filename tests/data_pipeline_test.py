"""End-to-end tests of rlhf_jax.data.pipeline: raw file -> prepared -> TFDS -> resumable batches.

Every input format goes through ingestion, tokenisation, the TFDS array_record builder and the
grain loader, and the token / mask invariants are checked on the batches themselves.
"""
import gzip
import json
import time
import types

import numpy as np
import pytest

from rlhf_jax.data import batching, loader, manifest, multi_annotator, packing, pipeline, prepare
from rlhf_jax.data import tfds_builders
from rlhf_jax.data.tokenizer import Tokenizer
from rlhf_jax.data.validation import IngestionReport

SYSTEM = {"role": "system", "content": "Be brief."}


@pytest.fixture(scope="module")
def tok(testdata_dir):
  return Tokenizer.load(testdata_dir / "tokenizer_512.model")


def _write_jsonl(path, rows, compress=False):
  text = "".join(json.dumps(r) + "\n" for r in rows)
  if compress:
    with gzip.open(path, "wt", encoding="utf-8") as f:
      f.write(text)
  else:
    path.write_text(text)
  return path


def _text(tok, ids):
  """Decoded ids with EOS tokens (which end assistant turns) removed, as chat.render_text."""
  return tok.decode([int(i) for i in ids if i != tok.eos_id])


def _all_batches(batches):
  return list(iter(batches))


def _leaves(batch):
  return [*batch.rows, batch.weight_B, batch.confidence_B, batch.tie_B, batch.margin_B]


def _check_row(tok, tokens, mask, positions, segments, last):
  """One right-padded row: returns (prompt_len, response ids) after checking its invariants."""
  length = last + 1
  assert tokens[0] == tok.bos_id
  np.testing.assert_array_equal(segments, (np.arange(len(tokens)) < length).astype(np.int32))
  np.testing.assert_array_equal(positions, np.where(np.arange(len(tokens)) < length,
                                                    np.arange(len(tokens)), 0))
  assert np.all(tokens[length:] == tok.pad_id) and np.all(mask[length:] == 0)
  assert tokens[last] == tok.eos_id  # EOS is the last real token
  prompt_len = int(np.argmax(mask))  # the response mask is one run ending at the last token
  assert mask[prompt_len] == 1 and np.all(mask[:prompt_len] == 0)
  assert np.all(mask[prompt_len:length] == 1)
  response = tokens[prompt_len:length]
  assert tok.eos_id not in response[:-1]
  return prompt_len, response


def _check_preference_batch(tok, batch, expected):
  """Checks a PreferenceBatch against `expected`: chosen text -> (prompt text, rejected, fields)."""
  rows = batch.rows
  num_pairs = rows.tokens_BxL.shape[0] // 2
  assert rows.tokens_BxL.shape[0] == 2 * num_pairs and batch.weight_B.shape == (num_pairs,)
  for b in range(num_pairs):
    c = _check_row(tok, rows.tokens_BxL[b], rows.loss_mask_BxL[b], rows.positions_BxL[b],
                   rows.segment_ids_BxL[b], rows.last_index_B[b])
    r = _check_row(tok, rows.tokens_BxL[num_pairs + b], rows.loss_mask_BxL[num_pairs + b],
                   rows.positions_BxL[num_pairs + b], rows.segment_ids_BxL[num_pairs + b],
                   rows.last_index_B[num_pairs + b])
    # Prefix invariant: both rows share the prompt ids, and responses start right after.
    assert c[0] == r[0]
    np.testing.assert_array_equal(rows.tokens_BxL[b, :c[0]], rows.tokens_BxL[num_pairs + b, :c[0]])
    chosen = tok.decode(c[1])[1:]  # the template writes " " + response
    prompt_text, rejected, fields = expected[chosen]
    assert _text(tok, rows.tokens_BxL[b, :c[0]]) == prompt_text
    assert tok.decode(r[1])[1:] == rejected
    got = {"weight": batch.weight_B[b], "confidence": batch.confidence_B[b],
           "margin": batch.margin_B[b], "tie": bool(batch.tie_B[b])}
    assert got == pytest.approx(fields), chosen


def _expected_prefs(rows, prompt_text):
  return {r["chosen"]: (prompt_text(r), r["rejected"],
                        {"weight": r.get("weight", 1.0), "confidence": r.get("confidence", 1.0),
                         "margin": r.get("margin", 0.0), "tie": r.get("tie", False)})
          for r in rows}


def _plain_rows(n=12):
  rows = []
  for i in range(n):
    row = {"prompt": f"Question {i}: what is {i} plus {i}?", "chosen": f"It is {2 * i}.",
           "rejected": f"Maybe {i}{'!' * (i % 4)}"}
    if i % 3 == 0:
      row.update(weight=0.5 + i / 10, margin=i / 4, confidence=0.75)
    rows.append(row)
  return rows


def test_jsonl_plain_text_preferences(tmp_path, tok):
  rows = _plain_rows()
  path = _write_jsonl(tmp_path / "prefs.jsonl", rows)
  batches = pipeline.load_preference_batches(path, tok, batch_size=4, seed=3, shuffle=False,
                                             num_epochs=1, data_dir=tmp_path / "work")
  got = _all_batches(batches)
  assert len(got) == len(batches) == 3
  expected = _expected_prefs(rows, lambda r: f"\n\nHuman: {r['prompt']}\n\nAssistant:")
  for batch in got:
    assert isinstance(batch, batching.PreferenceBatch)
    _check_preference_batch(tok, batch, expected)
  # Unshuffled, the batches follow the file: weights and margins arrive in order.
  np.testing.assert_allclose(np.concatenate([b.weight_B for b in got]),
                             [r.get("weight", 1.0) for r in rows], rtol=1e-6)
  np.testing.assert_allclose(np.concatenate([b.margin_B for b in got]),
                             [r.get("margin", 0.0) for r in rows], rtol=1e-6)


def test_json_conversational_preferences(tmp_path, tok):
  rows = []
  for i in range(8):
    context = [SYSTEM, {"role": "user", "content": f"Hi, I am user {i}."},
               {"role": "assistant", "content": "Hello!"},
               {"role": "user", "content": f"Tell me joke number {i}"}][i % 2:]
    rows.append({"chosen": context + [{"role": "assistant", "content": f"Joke {i}: knock knock."}],
                 "rejected": context + [{"role": "assistant", "content": f"No {i}."}]})
  path = tmp_path / "conv.json"
  path.write_text(json.dumps(rows, indent=1))  # a JSON array, TRL implicit-prompt layout

  def prompt_text(row):
    roles = {"system": "System", "user": "Human", "assistant": "Assistant"}
    turns = row["chosen"][:-1]
    return "".join(f"\n\n{roles[m['role']]}: {m['content']}" for m in turns) + "\n\nAssistant:"

  expected = {r["chosen"][-1]["content"]: (prompt_text(r), r["rejected"][-1]["content"],
                                           {"weight": 1, "confidence": 1, "margin": 0,
                                            "tie": False}) for r in rows}
  batches = pipeline.load_preference_batches(path, tok, batch_size=3, seed=0, num_epochs=2,
                                             data_dir=tmp_path / "work")
  got = _all_batches(batches)
  assert len(got) == 16 // 3
  for batch in got:
    _check_preference_batch(tok, batch, expected)
  # The conversation's earlier assistant turn ends with EOS inside the prompt.
  rows_with_turn = [b.rows.tokens_BxL[0] for b in got
                    if tok.eos_id in b.rows.tokens_BxL[0][:np.argmax(b.rows.loss_mask_BxL[0])]]
  assert rows_with_turn


def _sft_rows(n=10):
  rows = []
  for i in range(n):
    if i % 2:
      rows.append({"messages": [SYSTEM, {"role": "user", "content": f"Say {i} words."},
                                {"role": "assistant", "content": " ".join(["word"] * i)}]})
    else:
      rows.append({"prompt": f"Count to {i}.", "completion": " ".join(map(str, range(i + 1)))})
  return rows


def test_gzip_sft_padded_and_packed(tmp_path, tok):
  path = _write_jsonl(tmp_path / "sft.jsonl.gz", _sft_rows(), compress=True)
  work = tmp_path / "work"
  padded = _all_batches(pipeline.load_sft_batches(path, tok, batch_size=5, seed=1, num_epochs=1,
                                                  data_dir=work))
  assert len(padded) == 2
  seen = set()
  for batch in padded:
    assert isinstance(batch, batching.SequenceBatch)
    for b in range(batch.tokens_BxL.shape[0]):
      _, response = _check_row(tok, batch.tokens_BxL[b], batch.loss_mask_BxL[b],
                               batch.positions_BxL[b], batch.segment_ids_BxL[b],
                               batch.last_index_B[b])
      seen.add(tok.decode(response)[1:])
  responses = {r["messages"][-1]["content"] if "messages" in r else r["completion"]
               for r in _sft_rows()}
  assert seen == responses

  # Packed: each batch's 5 examples go first-fit into rows of 96; segments are whole examples.
  tfds_dir = pipeline.materialize(path, tok, kind="sft", data_dir=work)
  splits, _ = pipeline.open_tfds_dataset(tfds_dir)
  by_tokens = {tuple(splits["train"][i]["token_ids"]): splits["train"][i]
               for i in range(len(splits["train"]))}
  packed = pipeline.load_sft_batches(path, tok, batch_size=5, seed=1, num_epochs=1,
                                     data_dir=work, pack=True, row_length=96)
  unpacked = []
  for batch in _all_batches(packed):
    assert isinstance(batch, packing.PackedRows) and batch.tokens_BxL.shape[1] == 96
    assert batch.tokens_BxL.shape[0] in (1, 2, 4, 5)  # row buckets: powers of two, then 5
    for row in range(batch.tokens_BxL.shape[0]):
      segments = batch.segment_ids_BxL[row]
      for segment in np.unique(segments[segments > 0]):
        cols = np.flatnonzero(segments == segment)
        assert np.all(np.diff(cols) == 1)  # contiguous
        np.testing.assert_array_equal(batch.positions_BxL[row, cols], np.arange(len(cols)))
        tokens = tuple(batch.tokens_BxL[row, cols])
        record = by_tokens[tokens]  # a whole example, unchanged
        assert tokens[0] == tok.bos_id and tokens[-1] == tok.eos_id
        want_mask = np.asarray(record["loss_mask"]).copy()
        want_mask[0] = 0
        np.testing.assert_array_equal(batch.loss_mask_BxL[row, cols], want_mask)
        unpacked.append(tokens)
      assert np.all(batch.tokens_BxL[row, segments == 0] == tok.pad_id)
  assert sorted(unpacked) == sorted(by_tokens)  # every example exactly once in one epoch


HH_CONTEXT = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Tell me joke {i}"


def _hh_rows(n=9):
  rows = []
  for i in range(n):
    context = HH_CONTEXT.format(i=i)
    rows.append({"chosen": context + f"\n\nAssistant: Knock knock {i}.\n\nHuman: Who is there?",
                 "rejected": context + f"\n\nAssistant: No {i}."})
  rows.append({"chosen": "\n\nHuman: x\n\nAssistant: same", "rejected":
               "\n\nHuman: x\n\nAssistant: same"})  # identical: dropped and counted
  context = HH_CONTEXT.format(i=0)  # a second pair for the first prompt
  rows.append({"chosen": context + "\n\nAssistant: Knock knock again.",
               "rejected": context + "\n\nAssistant: Nope."})
  return rows


def test_hh_rlhf_transcripts_preferences_and_prompts(tmp_path, tok):
  path = _write_jsonl(tmp_path / "hh.jsonl", _hh_rows())
  work = tmp_path / "work"
  manifest_path = pipeline.prepare_raw(path, work, reader="hh_rlhf", tokenizer=tok)
  assert manifest.load_manifest(manifest_path)["filters"]["dropped"] == {"identical_responses": 1}
  expected = {}
  for i in range(9):
    prompt = HH_CONTEXT.format(i=i) + "\n\nAssistant:"
    expected[f"Knock knock {i}.\n\nHuman: Who is there?"] = (
        prompt, f"No {i}.", {"weight": 1, "confidence": 1, "margin": 0, "tie": False})
  expected["Knock knock again."] = (expected["Knock knock 0.\n\nHuman: Who is there?"][0],
                                    "Nope.", expected["Knock knock 0.\n\nHuman: Who is there?"][2])
  got = _all_batches(pipeline.load_preference_batches(manifest_path, tok, batch_size=5, seed=5,
                                                      num_epochs=1, data_dir=work))
  assert len(got) == 2
  for batch in got:
    _check_preference_batch(tok, batch, expected)

  # The same transcripts as prompts for generation: left-padded, ending at the assistant header.
  header = tok.encode("\n\nAssistant:")
  prompts = _all_batches(pipeline.load_prompt_batches(path, tok, batch_size=3, seed=0,
                                                      num_epochs=1, reader="hh_rlhf",
                                                      data_dir=work))
  texts = []
  for batch in prompts:
    assert isinstance(batch, batching.PromptBatch)
    for b in range(batch.tokens_BxP.shape[0]):
      mask = batch.mask_BxP[b]
      first = int(np.argmax(mask))
      assert np.all(mask[first:] == 1) and np.all(batch.tokens_BxP[b, :first] == tok.pad_id)
      assert batch.tokens_BxP[b, first] == tok.bos_id
      assert list(batch.tokens_BxP[b, -len(header):]) == header
      np.testing.assert_array_equal(batch.positions_BxP[b, first:], np.arange(len(mask) - first))
      texts.append(_text(tok, batch.tokens_BxP[b]))
  # One record per distinct prompt: the repeated prompt is counted, not duplicated.
  assert sorted(texts) == sorted({prompt for prompt, _, _ in expected.values()})
  _, prompt_manifest = pipeline.open_tfds_dataset(
      pipeline.materialize(path, tok, kind="prompt", reader="hh_rlhf", data_dir=work))
  assert prompt_manifest["filters"]["dropped"] == {"duplicate_prompt_normalized": 1}


def test_multi_annotator_comparisons_reach_the_batch_as_confidences(tmp_path, tok):
  rows = []
  truth = {}
  for i in range(16):
    item = {"item_id": f"item{i}", "prompt": f"Which reply to question {i}?",
            "response_a": f"Reply A{i}", "response_b": f"Reply B{i}"}
    right, wrong = ("a", "b") if i % 2 else ("b", "a")
    truth[f"Reply {right.upper()}{i}"] = i
    # Three careful raters and a label flipper; item 3 gets a split vote.
    labels = [right, right if i != 3 else wrong, right, wrong]
    rows.append({**item, "labels": [{"annotator_id": f"w{k}", "label": lab}
                                    for k, lab in enumerate(labels)]})
  path = _write_jsonl(tmp_path / "comparisons.jsonl", rows)
  # Independent expectation: the aggregation run directly on the file.
  comparisons, _ = multi_annotator.read_comparisons(path)
  prefs = multi_annotator.aggregate_comparisons(comparisons, method="dawid_skene")
  expected = {p.chosen: (f"\n\nHuman: {p.prompt}\n\nAssistant:", p.rejected,
                         {"weight": 1.0, "confidence": p.confidence, "margin": 0.0,
                          "tie": p.tie}) for p in prefs}
  assert set(expected) == set(truth)  # Dawid-Skene picks the right reply everywhere
  posteriors = sorted(p.confidence for p in prefs)
  assert posteriors[0] < posteriors[-1] < 1.0  # the split vote is less certain

  batches = pipeline.load_preference_batches(path, tok, batch_size=4, seed=2, num_epochs=1,
                                             reader="comparisons", data_dir=tmp_path / "work")
  got = _all_batches(batches)
  for batch in got:
    _check_preference_batch(tok, batch, expected)
  # The Dawid-Skene posteriors arrive as confidence_B (the reward-model step's pair weights
  # with use_confidence=True), every one of them.
  assert sorted(np.concatenate([b.confidence_B for b in got]).tolist()) == pytest.approx(
      posteriors)


def test_loader_state_resume_gives_identical_batches(tmp_path, tok):
  path = _write_jsonl(tmp_path / "prefs.jsonl", _plain_rows(11))
  kwargs = dict(batch_size=2, seed=7, data_dir=tmp_path / "work")  # shuffled, endless
  it = iter(pipeline.load_preference_batches(path, tok, **kwargs))
  for _ in range(4):  # into the second epoch
    next(it)
  state = it.get_state()
  after = [next(it) for _ in range(5)]
  fresh = iter(pipeline.load_preference_batches(path, tok, **kwargs))
  assert not np.array_equal(next(fresh).rows.tokens_BxL, after[0].rows.tokens_BxL)
  resumed = iter(pipeline.load_preference_batches(path, tok, **kwargs))
  resumed.set_state(state)
  for want in after:
    got = next(resumed)
    for x, y in zip(_leaves(want), _leaves(got)):
      np.testing.assert_array_equal(x, y)
  # A state from another dataset of the same size is refused.
  other = _write_jsonl(tmp_path / "other.jsonl",
                       [{**r, "chosen": r["chosen"] + " (v2)"} for r in _plain_rows(11)])
  other_it = iter(pipeline.load_preference_batches(other, tok, **kwargs))
  with pytest.raises(ValueError, match="different pipeline.*dataset_id"):
    other_it.set_state(state)


def test_tfds_manifest_reuse_and_tampering(tmp_path, tok, monkeypatch):
  (tmp_path / "src").mkdir()
  src = _write_jsonl(tmp_path / "src" / "prefs.jsonl", _plain_rows())
  prepared = tmp_path / "prepared"
  parent = prepare.prepare_dataset("toy_prefs", [src], prepared, eval_fraction=0.3, seed=0)
  report = IngestionReport()
  tfds_dir, m = pipeline.build_tfds_from_prepared(prepared / "manifest.json", tok,
                                                  tmp_path / "tfds", max_len=36, report=report)
  params = m["params"]
  assert params["parent_dataset_id"] == parent["dataset_id"] and m["tokenizer_id"] == tok.id
  assert params["kind"] == "preference" and params["settings"]["max_len"] == 36
  assert set(m["splits"]) == {"train", "eval"}
  assert sum(s["count"] for s in m["splits"].values()) == report.kept == 12 - report.num_dropped
  assert report.dropped == {"too_long_tokens": 2}  # the default policy drops long rows
  assert m["filters"]["dropped"] == report.dropped
  assert all(f["path"].split(".")[-1].startswith("array_record")
             for s in m["splits"].values() for f in s["files"])
  assert m["dataset_id"] == manifest.dataset_id(m)  # the id is the content hash
  splits, opened = pipeline.open_tfds_dataset(tfds_dir)
  assert opened == m and len(splits["train"]) == m["splits"]["train"]["count"]

  # Idempotent: the verified target is reused without rebuilding.
  def fail(*args, **kwargs):
    raise AssertionError("rebuilt")
  monkeypatch.setattr(tfds_builders, "build_dataset", fail)
  assert pipeline.build_tfds_from_prepared(prepared / "manifest.json", tok, tmp_path / "tfds",
                                           max_len=36) == (tfds_dir, m)
  monkeypatch.undo()
  # Same inputs elsewhere: the same dataset id (byte-identical shards).
  _, again = pipeline.build_tfds_from_prepared(prepared / "manifest.json", tok,
                                               tmp_path / "tfds2", max_len=36)
  assert again["dataset_id"] == m["dataset_id"]

  shard = tfds_dir + "/" + m["splits"]["train"]["files"][0]["path"]
  original = open(shard, "rb").read()
  tampered = bytearray(original)
  tampered[len(tampered) // 2] ^= 0xFF
  open(shard, "wb").write(bytes(tampered))
  with pytest.raises(manifest.ManifestError, match=f"{shard}: sha256 .* does not match"):
    pipeline.open_tfds_dataset(tfds_dir)
  with pytest.raises(manifest.ManifestError, match="was modified"):
    pipeline.load_preference_batches(tfds_dir, tok, batch_size=2, seed=0)
  open(shard, "wb").write(original[:-10])
  with pytest.raises(manifest.ManifestError, match=f"{shard}: size .*says .*truncated"):
    pipeline.open_tfds_dataset(tfds_dir)
  features = f"{tfds_dir}/features.json"
  open(shard, "wb").write(original)
  open(features, "a").write(" ")
  with pytest.raises(manifest.ManifestError, match="features.json: missing or modified"):
    pipeline.open_tfds_dataset(tfds_dir)
  # Building again replaces the damaged target.
  _, rebuilt = pipeline.build_tfds_from_prepared(prepared / "manifest.json", tok,
                                                 tmp_path / "tfds", max_len=36)
  assert rebuilt["dataset_id"] == m["dataset_id"]
  assert pipeline.open_tfds_dataset(tfds_dir)[1] == rebuilt

  # A tampered prepared dataset is refused before anything is built.
  train_file = prepared / "train.jsonl.gz"
  train_file.write_bytes(train_file.read_bytes()[:-5])
  with pytest.raises(manifest.ManifestError, match="train.jsonl.gz: size"):
    pipeline.build_tfds_from_prepared(prepared / "manifest.json", tok, tmp_path / "tfds3")


def test_clear_errors(tmp_path, tok):
  path = _write_jsonl(tmp_path / "prefs.jsonl", _plain_rows(4))
  with pytest.raises(ValueError, match="data_dir is needed"):
    pipeline.load_preference_batches(path, tok, batch_size=2, seed=0)
  tfds_dir = pipeline.materialize(path, tok, kind="preference", data_dir=tmp_path / "work")
  with pytest.raises(ValueError, match="holds 'preference' records, not 'sft'"):
    pipeline.load_sft_batches(tfds_dir, tok, batch_size=2, seed=0)
  other_tok = types.SimpleNamespace(id="0123456789abcdef")  # only its id is looked at
  with pytest.raises(ValueError, match="tokenised with tokenizer"):
    pipeline.load_preference_batches(tfds_dir, other_tok, batch_size=2, seed=0)
  with pytest.raises(KeyError, match="split 'eval' not in"):
    pipeline.load_preference_batches(tfds_dir, tok, batch_size=2, seed=0, split="eval")
  batches = pipeline.load_preference_batches(tfds_dir, tok, batch_size=2, seed=0, num_epochs=1,
                                             split="train[:50%]")
  assert len(batches) == 1 and isinstance(batches, loader.Loader)


HH_COUNTS = {"harmless-base": dict(records=2312, dropped={"empty_chosen": 4}),
             "helpful-base": dict(records=2354, dropped={"empty_rejected": 4,
                                                          "identical_responses": 2})}


def test_hh_rlhf_test_splits_end_to_end(shared_data_dir, tmp_path, tok):
  """Both real test splits: ingestion counts over the full files, then TFDS with manifests.

  To stay fast on a shared 2-core machine the TFDS part builds only the deterministic
  prompt-hash "eval" split (about 10% of the pairs); `scripts/prepare_hh_rlhf.py` builds it all.
  """
  start = time.perf_counter()
  for subset, want in HH_COUNTS.items():
    path = shared_data_dir / "hh-rlhf" / subset / "test.jsonl.gz"
    report = IngestionReport()
    manifest_path = pipeline.prepare_raw(path, tmp_path, reader="hh_rlhf", tokenizer=tok,
                                         eval_fraction=0.1, report=report)
    print(f"\n{report.summary()}")
    # No duplicate pairs in either file, so dedup removes nothing.
    assert report.records_read == want["records"] and report.dropped == want["dropped"]
    assert report.kept == want["records"] - sum(want["dropped"].values())
    prepared = manifest.load_manifest(manifest_path)
    counts = {split: entry["count"] for split, entry in prepared["splits"].items()}
    assert sum(counts.values()) == report.kept and 0 < counts["eval"] < 0.2 * report.kept

    tokenized = IngestionReport()
    tfds_dir, m = pipeline.build_tfds_from_prepared(manifest_path, tok, tmp_path / "tfds",
                                                    splits=["eval"], report=tokenized)
    print(f"{m['dataset_id']}: {m['splits']['eval']['count']} eval pairs, longest row "
          f"{m['params']['max_row_len']['eval']} tokens, parent {m['params']['parent_dataset_id']}")
    assert list(m["splits"]) == ["eval"]
    assert m["splits"]["eval"]["count"] == counts["eval"] == tokenized.kept
    splits, _ = pipeline.open_tfds_dataset(tfds_dir)
    for i in (0, len(splits["eval"]) - 1):
      ex = splits["eval"][i]
      ids = list(ex["prompt_ids"]) + list(ex["chosen_ids"])
      assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
      # The ids decode to the original transcript (prompt text + " " + response).
      assert _text(tok, ids) == ex["prompt"] + " " + ex["chosen"]
  print(f"both splits end to end in {time.perf_counter() - start:.1f} s")
