"""The grammar of the lab's review language and a recogniser that decides grammaticality.

A review is a sequence of sentences, each ending with ".". Because every lexicon word has exactly
one class tag (`lexicon.WORD_TAG`), a sentence is grammatical iff

  1. every token is a lexicon word or "," / ".",
  2. casing is canonical: the first word of a sentence is capitalised, "I" is always upper case,
     every other word is lower case, and
  3. its tag string is in the regular language `SENTENCE` below.

Whitespace is not part of grammaticality ("kettle ." and "kettle." are the same tokens).

The grammar is a weighted regular grammar (weights are the sampling probabilities used by
`sampler.py`; the recogniser ignores them). Tags: D determiner, P product, F feature, B is/was,
E sense copula, N not, A adjective intensifier, J adjective, K and/but, S because/since/although,
T it, I "I", R verb intensifier, V liking verb, M modal, U purchase verb, W when, Z use,
Q frequency, G works/runs, Y manner adverb, X sentence adverb, "," and ".".

Example sentences: "The lid of the kettle is very sturdy." "I would not recommend it."
"Overall, the kettle works perfectly." "I bought it yesterday."
"""
from __future__ import annotations

import dataclasses
import re
from typing import Sequence, Union

from rlhf_jax.lab import lexicon


@dataclasses.dataclass(frozen=True)
class Seq:
  """Concatenation of grammar nodes."""
  items: tuple["Node", ...]


@dataclasses.dataclass(frozen=True)
class Alt:
  """Choice between nodes; `probs` (normalised weights) are used only when sampling."""
  options: tuple["Node", ...]
  probs: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class Opt:
  """Optional node, present with probability `p` when sampling."""
  item: "Node"
  p: float


Node = Union[str, Seq, Alt, Opt]  # a str is one class tag


def seq(*items: Node) -> Seq:
  return Seq(tuple(items))


def alt(*weighted: tuple[float, Node]) -> Alt:
  total = float(sum(w for w, _ in weighted))
  return Alt(tuple(n for _, n in weighted), tuple(w / total for w, _ in weighted))


def to_regex(node: Node) -> str:
  """Regular expression over tag strings equivalent to `node`."""
  if isinstance(node, str):
    if node not in _ALL_TAGS:
      raise ValueError(f"unknown tag {node!r} in grammar")
    return re.escape(node)
  if isinstance(node, Seq):
    return "".join(to_regex(n) for n in node.items)
  if isinstance(node, Alt):
    return "(?:" + "|".join(to_regex(n) for n in node.options) + ")"
  if isinstance(node, Opt):
    return "(?:" + to_regex(node.item) + ")?"
  raise TypeError(f"not a grammar node: {node!r}")


_ALL_TAGS = frozenset(lexicon.WORD_TAG.values())

_NP_SUBJECT = alt((3, seq("D", "P")), (3, seq("D", "F")), (1, seq("D", "F", "O", "D", "P")),
                  (2, "T"))
_NP_OBJECT = alt((3, seq("D", "P")), (2, seq("D", "F")), (3, "T"))
_ADJP = seq(Opt("A", 0.35), "J", Opt(seq("K", Opt("A", 0.35), "J"), 0.3))
_PREDICATE = alt((4, seq("B", Opt("N", 0.12), _ADJP)), (1, seq("E", _ADJP)))
_CLAUSE = seq(_NP_SUBJECT, _PREDICATE)
_OPENER = Opt(seq("X", ","), 0.15)

# One sentence of a review (the unit the recogniser checks).
SENTENCE: Alt = alt(
    (5, seq(_OPENER, _CLAUSE, Opt(seq("S", _CLAUSE), 0.15), ".")),  # description
    (2, seq(_OPENER, "I", Opt("R", 0.35), "V", _NP_OBJECT, ".")),  # liking
    (1, seq(_OPENER, "I", "M", Opt("N", 0.3), "V", _NP_OBJECT, ".")),  # recommendation
    (1, seq("I", "U", _NP_OBJECT, "W", ".")),  # purchase
    (1, seq("I", "Z", _NP_OBJECT, "Q", ".")),  # usage
    (2, seq(_NP_SUBJECT, "G", Opt("A", 0.3), "Y", ".")),  # function
)
SENTENCE_RE = re.compile(to_regex(SENTENCE))

_TOKEN_RE = re.compile(r"[A-Za-z]+|[^\sA-Za-z]")


def tokenize(text: str) -> list[str]:
  """Words (runs of ASCII letters) and single non-space symbols, in order, case kept."""
  return _TOKEN_RE.findall(text)


def split_sentences(tokens: Sequence[str]) -> list[list[str]]:
  """Splits tokens after each "."; a trailing fragment without "." is its own (bad) unit."""
  units, current = [], []
  for tok in tokens:
    current.append(tok)
    if tok == ".":
      units.append(current)
      current = []
  if current:
    units.append(current)
  return units


def surface_form(word: str, sentence_initial: bool) -> str:
  """Canonical spelling of a lower-case lexicon word at a position."""
  if word == "i":
    return "I"
  return word[:1].upper() + word[1:] if sentence_initial else word


def sentence_is_grammatical(tokens: Sequence[str]) -> bool:
  """Whether one sentence unit (tokens, case kept) is in the language."""
  tags = []
  for pos, tok in enumerate(tokens):
    word = tok.lower()
    tag = lexicon.WORD_TAG.get(word)
    if tag is None or tok != surface_form(word, pos == 0):
      return False
    tags.append(tag)
  return SENTENCE_RE.fullmatch("".join(tags)) is not None


def grammatical_units(text: str) -> tuple[int, int]:
  """(number of grammatical sentence units, number of units) of a response."""
  units = split_sentences(tokenize(text))
  return sum(sentence_is_grammatical(u) for u in units), len(units)


def is_grammatical(text: str) -> bool:
  """Whether a whole response is a non-empty sequence of grammatical sentences."""
  ok, total = grammatical_units(text)
  return total > 0 and ok == total


def word_count(text: str) -> int:
  """Number of words (letter runs); punctuation is not counted."""
  return sum(tok[0].isalpha() for tok in tokenize(text))


def render(sentences: Sequence[Sequence[str]]) -> str:
  """Text of sentences of lower-case lexicon tokens: canonical casing, "," and "." attached."""
  parts = []
  for sentence in sentences:
    for pos, word in enumerate(sentence):
      surface = surface_form(word, pos == 0)
      if word in (",", ".") and parts:
        parts[-1] += surface
      else:
        parts.append(surface)
  return " ".join(parts)
