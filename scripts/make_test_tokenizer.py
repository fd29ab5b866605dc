"""Regenerates tests/testdata/tokenizer_512.model, the tiny BPE tokenizer used by the tests.

The corpus is English-like text built from fixed word lists by a seeded generator: plain sentences,
questions, numbers, and HH-style dialogue lines ("\\n\\nHuman: ... \\n\\nAssistant: ..."), so the
pieces cover the chat template's role markers. Training uses one thread, so the output is
byte-identical on every run (tests/tokenizer_test.py checks this).

Usage: python scripts/make_test_tokenizer.py [--out PATH] [--vocab_size 512]
"""
from __future__ import annotations

import argparse
import pathlib
import random
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rlhf_jax.data.tokenizer import Tokenizer  # noqa: E402

DEFAULT_OUT = ROOT / "tests" / "testdata" / "tokenizer_512.model"
VOCAB_SIZE = 512
SEED = 0
# The committed model was trained with this sentencepiece version; other versions may merge
# differently, so the byte-for-byte regeneration test only runs under it.
GENERATED_WITH_SENTENCEPIECE = "0.2.3"
NUM_LINES = 3000

_SUBJECTS = ["the cat", "a dog", "my friend", "the teacher", "our team", "this model", "the city",
             "a small bird", "the old man", "every student", "the river", "your answer", "she", "he",
             "they", "we", "I", "you", "the assistant", "a person"]
_VERBS = ["likes", "wants", "needs", "finds", "makes", "takes", "sees", "knows", "helps", "reads",
          "writes", "builds", "opens", "moves", "learns", "gives", "keeps", "tells", "asks", "plays"]
_OBJECTS = ["the book", "a good idea", "some water", "the answer", "a long letter", "the red door",
            "an apple", "the best way", "a new house", "the problem", "this question", "the music",
            "a warm coat", "the old road", "some time", "a simple plan", "the garden", "the window",
            "a piece of bread", "the little boat"]
_ADVERBS = ["quickly", "slowly", "today", "again", "often", "never", "always", "together",
            "carefully", "happily", "at night", "in the morning", "after school", "before dinner"]
_QUESTIONS = ["What is", "How do I find", "Can you explain", "Why does", "Where can I buy",
              "Who wrote", "When should I use", "Is it safe to eat", "How many people like",
              "Could you help me with"]
_REPLIES = ["Sure, here is what I know.", "I am not sure, but I think so.", "That is a great question.",
            "Let me explain it step by step.", "No, that is not a good idea.",
            "Yes, you can do that safely.", "I don't know the answer to that.",
            "Here are a few options you could try:", "It depends on where you live.",
            "I’m sorry, I can’t help with that."]


def _sentence(rng: random.Random) -> str:
  s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_ADVERBS)}"
  return s[0].upper() + s[1:] + rng.choice([".", ".", ".", "!", "?"])


def _number_line(rng: random.Random) -> str:
  a, b = rng.randint(0, 999), rng.randint(0, 999)
  return rng.choice([f"What is {a} plus {b}? It is {a + b}.", f"{a} times {b} equals {a * b}.",
                     f"There are {a} apples and {b} pears.", f"The answer is {a - b}."])


def _dialogue(rng: random.Random) -> str:
  turns = []
  for _ in range(rng.randint(1, 3)):
    q = f"{rng.choice(_QUESTIONS)} {rng.choice(_OBJECTS)}?"
    r = " ".join([rng.choice(_REPLIES)] + [_sentence(rng) for _ in range(rng.randint(0, 2))])
    turns.append(f"\n\nHuman: {q}\n\nAssistant: {r}")
  return "".join(turns)


def corpus(seed: int = SEED, num_lines: int = NUM_LINES) -> list[str]:
  """The deterministic training corpus (a list of lines)."""
  rng = random.Random(seed)
  makers = [_sentence, _sentence, _number_line, _dialogue]
  return [rng.choice(makers)(rng) for _ in range(num_lines)]


def build(vocab_size: int = VOCAB_SIZE) -> Tokenizer:
  return Tokenizer.train(corpus(), vocab_size=vocab_size, model_type="bpe")


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=str(DEFAULT_OUT))
  parser.add_argument("--vocab_size", type=int, default=VOCAB_SIZE)
  args = parser.parse_args(argv)
  tok = build(args.vocab_size)
  tok.save(args.out)
  print(f"wrote {args.out}: {len(tok.to_bytes())} bytes, vocab {tok.vocab_size}, id {tok.id}")


if __name__ == "__main__":
  main()
