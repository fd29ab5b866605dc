"""The lexicon of the lab's review language: products, their features, and valenced words.

Every word belongs to exactly ONE word class, so a sentence maps to a unique sequence of class
tags; `grammar.py` decides grammaticality on those tags and `gold.py` reads the valences here.

Valences lie in [-1, 1] (positive = praise). Intensifier multipliers scale the valence of the
valenced word that immediately follows them ("very good" = 1.5 * 0.6).
"""
from __future__ import annotations

import types
from typing import Mapping

# Each product has five features; no feature name is shared between products, so a mentioned
# feature identifies the product it belongs to (used by the relevance component of the gold reward).
PRODUCTS: Mapping[str, tuple[str, ...]] = types.MappingProxyType({
    "kettle": ("lid", "handle", "spout", "switch", "base"),
    "blender": ("blade", "jug", "motor", "dial", "seal"),
    "toaster": ("slot", "lever", "timer", "tray", "cord"),
    "lamp": ("bulb", "shade", "dimmer", "stand", "brightness"),
    "backpack": ("strap", "zipper", "pocket", "fabric", "buckle"),
    "jacket": ("hood", "sleeve", "lining", "collar", "button"),
    "laptop": ("screen", "keyboard", "battery", "trackpad", "hinge"),
    "phone": ("display", "charger", "case", "antenna", "ringtone"),
    "camera": ("lens", "shutter", "flash", "sensor", "viewfinder"),
    "speaker": ("bass", "volume", "treble", "remote", "grille"),
    "headset": ("microphone", "earcup", "headband", "cable", "cushion"),
    "monitor": ("panel", "resolution", "bezel", "pixel", "bracket"),
    "chair": ("seat", "backrest", "armrest", "wheel", "frame"),
    "desk": ("drawer", "surface", "leg", "shelf", "finish"),
    "tent": ("pole", "rainfly", "peg", "groundsheet", "door"),
    "bicycle": ("saddle", "brake", "gear", "chain", "tyre"),
    "watch": ("band", "clasp", "face", "crown", "alarm"),
    "umbrella": ("canopy", "rib", "shaft", "grip", "spring"),
    "mattress": ("foam", "cover", "firmness", "edge", "coil"),
    "vacuum": ("suction", "filter", "nozzle", "bin", "hose"),
})

# Valenced words, split into pools by sign so the sampler can draw a review's mood.
POSITIVE_ADJECTIVES = {
    "excellent": 1.0, "amazing": 1.0, "fantastic": 1.0, "wonderful": 1.0, "perfect": 1.0,
    "superb": 1.0, "great": 0.9, "brilliant": 0.9, "lovely": 0.8, "reliable": 0.7, "good": 0.6,
    "nice": 0.6, "solid": 0.6, "sturdy": 0.6, "comfortable": 0.6, "elegant": 0.6, "handy": 0.5,
    "pleasant": 0.5, "decent": 0.3, "fine": 0.2,
}
NEUTRAL_ADJECTIVES = {
    "okay": 0.0, "average": 0.0, "ordinary": 0.0, "standard": 0.0, "plain": 0.0, "simple": 0.0,
    "small": 0.0, "large": 0.0, "compact": 0.0, "black": 0.0, "white": 0.0, "silver": 0.0,
    "adequate": 0.1, "acceptable": 0.1, "heavy": -0.1,
}
NEGATIVE_ADJECTIVES = {
    "terrible": -1.0, "awful": -1.0, "horrible": -1.0, "useless": -1.0, "broken": -0.9,
    "disappointing": -0.8, "poor": -0.7, "bad": -0.7, "unreliable": -0.7, "flimsy": -0.6,
    "uncomfortable": -0.6, "annoying": -0.6, "fragile": -0.5, "noisy": -0.5, "weak": -0.5,
    "mediocre": -0.4, "clumsy": -0.4, "slow": -0.4, "cheap": -0.3,
}
POSITIVE_VERBS = {"love": 1.0, "adore": 1.0, "recommend": 0.8, "enjoy": 0.7, "like": 0.6,
                  "appreciate": 0.6}
NEUTRAL_VERBS = {"own": 0.0, "need": 0.0, "tolerate": -0.2}
NEGATIVE_VERBS = {"hate": -1.0, "regret": -0.8, "dislike": -0.6}
POSITIVE_MANNER = {"perfectly": 1.0, "flawlessly": 1.0, "beautifully": 0.9, "reliably": 0.7,
                   "well": 0.6, "smoothly": 0.6, "quietly": 0.4}
NEUTRAL_MANNER = {"normally": 0.0, "predictably": 0.0, "adequately": 0.1}
NEGATIVE_MANNER = {"terribly": -1.0, "badly": -0.8, "poorly": -0.7, "erratically": -0.7,
                   "noisily": -0.5, "slowly": -0.4}

# Intensifiers multiply the valence of the next word: "A" ones precede adjectives and manner
# adverbs, "R" ones precede verbs ("I really love it"; "I very love it" is ungrammatical).
ADJECTIVE_INTENSIFIERS = {"very": 1.5, "extremely": 2.0, "incredibly": 2.0, "so": 1.5,
                          "quite": 1.2, "rather": 1.1, "fairly": 0.8, "somewhat": 0.6,
                          "slightly": 0.5}
VERB_INTENSIFIERS = {"really": 1.5, "truly": 1.5, "absolutely": 2.0, "genuinely": 1.3,
                     "actually": 1.0}

# Word class tags (one character each; the recogniser matches a regex over the tag string).
FUNCTION_CLASSES: Mapping[str, tuple[str, ...]] = types.MappingProxyType({
    "D": ("the", "this", "my"),  # determiner
    "B": ("is", "was"),  # copula that takes negation
    "E": ("seems", "feels", "looks"),  # sense copula (no negation)
    "N": ("not",),  # negation
    "K": ("and", "but"),  # coordinating conjunction
    "S": ("because", "since", "although"),  # subordinating conjunction
    "T": ("it",),  # pronoun object/subject
    "I": ("i",),  # first person (always written "I")
    "M": ("would", "will", "could"),  # modal
    "O": ("of",),  # "the lid of the kettle"
    "U": ("bought", "ordered", "received", "got"),  # purchase verb
    "W": ("yesterday", "recently", "today", "online", "again"),  # when / where bought
    "Z": ("use",),  # usage verb
    "Q": ("daily", "often", "sometimes", "rarely", "weekly"),  # frequency
    "G": ("works", "performs", "runs", "operates"),  # intransitive function verb
    "X": ("overall", "honestly", "frankly", "basically", "personally"),  # sentence adverb
    ",": (",",),
    ".": (".",),
})

FEATURE_TO_PRODUCT: Mapping[str, str] = types.MappingProxyType(
    {f: p for p, feats in PRODUCTS.items() for f in feats})

VALENCE: Mapping[str, float] = types.MappingProxyType({
    **POSITIVE_ADJECTIVES, **NEUTRAL_ADJECTIVES, **NEGATIVE_ADJECTIVES,
    **POSITIVE_VERBS, **NEUTRAL_VERBS, **NEGATIVE_VERBS,
    **POSITIVE_MANNER, **NEUTRAL_MANNER, **NEGATIVE_MANNER})
INTENSIFIER: Mapping[str, float] = types.MappingProxyType(
    {**ADJECTIVE_INTENSIFIERS, **VERB_INTENSIFIERS})


def _build_word_tags() -> dict[str, str]:
  classes: dict[str, tuple[str, ...]] = {
      "P": tuple(PRODUCTS),
      "F": tuple(FEATURE_TO_PRODUCT),
      "J": (*POSITIVE_ADJECTIVES, *NEUTRAL_ADJECTIVES, *NEGATIVE_ADJECTIVES),
      "V": (*POSITIVE_VERBS, *NEUTRAL_VERBS, *NEGATIVE_VERBS),
      "Y": (*POSITIVE_MANNER, *NEUTRAL_MANNER, *NEGATIVE_MANNER),
      "A": tuple(ADJECTIVE_INTENSIFIERS),
      "R": tuple(VERB_INTENSIFIERS),
      **FUNCTION_CLASSES,
  }
  tags: dict[str, str] = {}
  for tag, words in classes.items():
    for w in words:
      if w in tags:  # the recogniser relies on disjoint classes
        raise ValueError(f"lexicon word {w!r} is in classes {tags[w]!r} and {tag!r}")
      tags[w] = tag
  return tags


# Lower-case word (or punctuation mark) -> its class tag.
WORD_TAG: Mapping[str, str] = types.MappingProxyType(_build_word_tags())
