"""Tests of rlhf_jax.data.tokenizer."""
import importlib.util
import pathlib

import numpy as np
import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from rlhf_jax.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer, TokenizerError

ROOT = pathlib.Path(__file__).resolve().parent.parent

TEXTS = [
    "The cat likes the book quickly.",
    "\n\nHuman: What is 12 plus 7?\n\nAssistant: It is 19.",
    "  leading and trailing spaces  ",
    "tabs\tand\r\nwindows newlines",
    "Ünïcode “curly quotes” and 中文 and emoji 🙂",
    "",
]


@pytest.fixture(scope="module")
def tok(testdata_dir):
  return Tokenizer.load(testdata_dir / "tokenizer_512.model")


def _edited_model(testdata_dir, **trainer_spec) -> bytes:
  m = sentencepiece_model_pb2.ModelProto()
  m.ParseFromString((testdata_dir / "tokenizer_512.model").read_bytes())
  for k, v in trainer_spec.items():
    setattr(m.trainer_spec, k, v)
  return m.SerializeToString()


def test_test_model_properties(tok, testdata_dir):
  assert tok.vocab_size == 512
  assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (PAD_ID, UNK_ID, BOS_ID, EOS_ID)
  assert (testdata_dir / "tokenizer_512.model").stat().st_size < 100_000
  assert len(tok.id) == 16 and int(tok.id, 16) >= 0
  assert Tokenizer.from_bytes(tok.to_bytes()).id == tok.id


@pytest.mark.parametrize("text", TEXTS)
def test_roundtrip_is_exact(tok, text):
  ids = tok.encode(text)
  assert all(0 <= i < tok.vocab_size for i in ids)
  assert tok.decode(ids) == text
  assert tok.unk_id not in ids  # byte fallback: nothing is unknown


def test_separately_encoded_pieces_concatenate(tok):
  a, b = "\n\nHuman:", " Where is the river?"
  assert tok.decode(tok.encode(a) + tok.encode(b)) == a + b


def test_bos_eos_flags(tok):
  ids = tok.encode("hello world")
  assert tok.encode("hello world", add_bos=True) == [tok.bos_id] + ids
  assert tok.encode("hello world", add_eos=True) == ids + [tok.eos_id]
  assert tok.encode("hello world", add_bos=True, add_eos=True) == [tok.bos_id] + ids + [tok.eos_id]


def test_special_strings_never_become_control_ids(tok):
  ids = tok.encode("<s> </s> <pad> <unk>")
  assert not {tok.bos_id, tok.eos_id, tok.pad_id, tok.unk_id} & set(ids)


def test_decode_stops_at_eos_and_strips_pad_and_bos(tok):
  ids = tok.encode("hello there")
  row = [tok.bos_id] + ids + [tok.eos_id] + tok.encode(" garbage after eos") + [tok.pad_id] * 3
  assert tok.decode(row) == "hello there"
  assert tok.decode(np.asarray(ids + [tok.pad_id, tok.pad_id], np.int32)) == "hello there"
  assert tok.decode([tok.eos_id] + ids) == ""


def test_batch_apis_match_single(tok):
  texts = TEXTS[:4]
  batch = tok.encode_batch(texts, add_eos=True)
  assert batch == [tok.encode(t, add_eos=True) for t in texts]
  assert tok.decode_batch(batch) == texts
  assert tok.encode_batch([]) == []


def test_bad_inputs(tok):
  with pytest.raises(TokenizerError, match="out of range"):
    tok.decode([5, 512])
  with pytest.raises(TokenizerError, match="out of range"):
    tok.decode([-1])
  with pytest.raises(TypeError, match="index 1"):
    tok.encode_batch(["ok", 3])
  with pytest.raises(TypeError, match="str"):
    tok.encode(b"bytes")


def test_save_load_roundtrip(tok, tmp_path):
  path = tmp_path / "sub.model"
  tok.save(path)
  again = Tokenizer.load(path)
  assert again.id == tok.id and again.encode("abc def") == tok.encode("abc def")
  assert [p.name for p in tmp_path.iterdir()] == ["sub.model"]  # no temp file left behind


def test_load_errors_name_the_file(tmp_path, testdata_dir):
  missing = tmp_path / "missing.model"
  with pytest.raises(TokenizerError, match="missing.model"):
    Tokenizer.load(missing)
  garbage = tmp_path / "garbage.model"
  garbage.write_bytes(b"not a model at all")
  with pytest.raises(TokenizerError, match="garbage.model.*not a SentencePiece model"):
    Tokenizer.load(garbage)


@pytest.mark.parametrize("edit, message", [
    (dict(pad_piece="<nope>"), "no pad id"),
    (dict(bos_piece="<nope>"), "no bos id"),
    (dict(eos_piece="<nope>"), "no eos id"),
    (dict(pad_piece="</s>"), "pad id equals eos id"),
    (dict(bos_piece="</s>"), "bos id equals eos id"),
])
def test_special_ids_are_checked_at_load(testdata_dir, tmp_path, edit, message):
  path = tmp_path / "edited.model"
  path.write_bytes(_edited_model(testdata_dir, **edit))
  with pytest.raises(TokenizerError, match=f"edited.model.*{message}"):
    Tokenizer.load(path)


def test_committed_model_regenerates_byte_for_byte(testdata_dir):
  spec = importlib.util.spec_from_file_location("make_test_tokenizer",
                                                ROOT / "scripts" / "make_test_tokenizer.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if spm.__version__ != module.GENERATED_WITH_SENTENCEPIECE:
    pytest.skip(f"model generated with sentencepiece {module.GENERATED_WITH_SENTENCEPIECE}, "
                f"running {spm.__version__}")
  assert module.build().to_bytes() == (testdata_dir / "tokenizer_512.model").read_bytes()


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_training_is_deterministic_and_keeps_conventions(model_type):
  corpus = [f"sample {i} of the corpus: the {w} jumps over {i % 7} fences.\nnew line"
            for i, w in zip(range(300), ["fox", "dog", "cat"] * 100)]
  a = Tokenizer.train(corpus, vocab_size=300, model_type=model_type)
  b = Tokenizer.train(iter(corpus), vocab_size=300, model_type=model_type)
  assert a.to_bytes() == b.to_bytes() and a.id == b.id
  assert a.vocab_size == 300
  assert (a.pad_id, a.unk_id, a.bos_id, a.eos_id) == (0, 1, 2, 3)
  text = "the  fox\n\njumps “over” 123 fences "
  assert a.decode(a.encode(text)) == text


def test_train_rejects_bad_arguments():
  with pytest.raises(TokenizerError, match="model_type"):
    Tokenizer.train(["a b c"], vocab_size=300, model_type="wordpiece")
  with pytest.raises(TokenizerError, match="training failed"):
    Tokenizer.train(["a b c"] * 10, vocab_size=100_000)
