"""Tests of rlhf_jax.data.schemas."""
import dataclasses
import json

import pytest

from rlhf_jax.data import schemas
from rlhf_jax.data.schemas import Comparison, Message, PreferenceExample, PromptExample
from rlhf_jax.data.schemas import SchemaError, SFTExample

CONV = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]


def _pref(**overrides):
  d = {"prompt": CONV, "chosen": "Hello.", "rejected": "Go away.", "id": "p1",
       "annotator_id": "ann7", "tie": False, "confidence": 0.75, "margin": 2.0, "weight": 0.5,
       "source": "unit",
       "metadata": {"model": "m-1", "temperature": 0.7}}
  d.update(overrides)
  return d


ROUNDTRIPS = [
    (PreferenceExample, _pref()),
    (PreferenceExample, _pref(prompt="plain text", annotator_id=None, confidence=None, margin=None,
                              source=None, metadata={}, tie=True)),
    (SFTExample, {"prompt": "Q", "response": "A", "id": "s1", "source": None, "metadata": {}}),
    (SFTExample, {"prompt": CONV, "response": "A", "id": "s2", "source": "x", "metadata": {"k": [1]}}),
    (PromptExample, {"prompt": CONV, "id": "q1", "source": None, "metadata": {"answer": "4"}}),
    (Comparison, {"item_id": "i1", "prompt": "Q", "response_a": "A", "response_b": "B",
                  "annotator_id": "w3", "label": "tie", "metadata": {}}),
]


@pytest.mark.parametrize("cls, d", ROUNDTRIPS)
def test_roundtrip_through_json(cls, d):
  ex = cls.from_dict(d)
  again = cls.from_dict(json.loads(json.dumps(ex.to_dict())))
  assert again == ex
  assert ex.to_dict() == d


def test_conversation_prompt_is_a_tuple_of_messages():
  ex = PreferenceExample.from_dict(_pref())
  assert ex.prompt == (Message("system", "Be brief."), Message("user", "Hi?"))
  # Constructor accepts dicts and Messages alike.
  assert PreferenceExample(prompt=CONV, chosen="a", rejected="b", id="x").prompt == ex.prompt


def test_frozen():
  ex = PreferenceExample.from_dict(_pref())
  with pytest.raises(dataclasses.FrozenInstanceError):
    ex.chosen = "other"


def test_integer_ids_become_strings_but_bools_do_not():
  assert PreferenceExample.from_dict(_pref(id=17)).id == "17"
  with pytest.raises(SchemaError, match="'id'"):
    PreferenceExample.from_dict(_pref(id=True))
  with pytest.raises(SchemaError, match="'id': must be non-empty"):
    PreferenceExample.from_dict(_pref(id=""))


@pytest.mark.parametrize("overrides, field, message", [
    ({"chosen": 3}, "chosen", "expected str, got int"),
    ({"rejected": None}, "rejected", "expected str, got NoneType"),
    ({"prompt": 5}, "prompt", "expected str or list of messages"),
    ({"prompt": [{"role": "robot", "content": "x"}]}, "prompt[0].role", "must be one of"),
    ({"prompt": [{"role": "user"}]}, "prompt[0].content", "missing required field"),
    ({"prompt": [CONV[0], {"role": "user", "content": 1}]}, "prompt[1].content", "expected str"),
    ({"prompt": ["just a string"]}, "prompt[0]", "expected a JSON object"),
    ({"tie": "yes"}, "tie", "expected bool"),
    ({"confidence": 1.5}, "confidence", r"\[0, 1\]"),
    ({"confidence": "high"}, "confidence", "expected a number"),
    ({"margin": float("nan")}, "margin", "finite"),
    ({"weight": -0.5}, "weight", "non-negative"),
    ({"weight": True}, "weight", "expected a number"),
    ({"annotator_id": 4}, "annotator_id", "expected str or null"),
    ({"metadata": []}, "metadata", "JSON object"),
    ({"metadata": {"x": {1, 2}}}, "metadata", "JSON-serialisable"),
    ({"extra_column": 1}, "extra_column", "unknown field"),
])
def test_errors_name_the_field(overrides, field, message):
  with pytest.raises(SchemaError, match=message) as info:
    PreferenceExample.from_dict(_pref(**overrides))
  assert info.value.field == field
  assert f"'{field}'" in str(info.value)


@pytest.mark.parametrize("missing", ["prompt", "chosen", "rejected", "id"])
def test_missing_required_field_is_named(missing):
  d = _pref()
  del d[missing]
  with pytest.raises(SchemaError, match="missing required field") as info:
    PreferenceExample.from_dict(d)
  assert info.value.field == missing


def test_not_an_object():
  with pytest.raises(SchemaError, match="expected a JSON object, got list"):
    PreferenceExample.from_dict([1, 2])


def test_sft_from_messages_splits_at_last_assistant_turn():
  msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
          {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
  ex = SFTExample.from_dict({"messages": msgs, "id": 1})
  assert ex.response == "d"
  assert ex.prompt == tuple(Message(**m) for m in msgs[:3])
  assert ex.messages == tuple(Message(**m) for m in msgs)
  assert SFTExample(prompt="q", response="r", id="x").messages == (
      Message("user", "q"), Message("assistant", "r"))
  with pytest.raises(SchemaError, match=r"messages\[1\].role.*assistant"):
    SFTExample.from_dict({"messages": msgs[:1] + [{"role": "user", "content": "x"}], "id": 1})
  with pytest.raises(SchemaError, match="non-empty"):
    SFTExample.from_dict({"messages": [], "id": 1})


def test_comparison_label_is_checked():
  d = dict(ROUNDTRIPS[-1][1])
  for label in ("a", "b", "tie"):
    assert Comparison.from_dict({**d, "label": label}).label == label
  with pytest.raises(SchemaError, match="'label': must be one of"):
    Comparison.from_dict({**d, "label": "A"})
  with pytest.raises(SchemaError, match="'annotator_id'"):
    Comparison.from_dict({**d, "annotator_id": None})


def test_message_checks():
  with pytest.raises(SchemaError, match="'role'"):
    Message("tool", "x")
  with pytest.raises(SchemaError, match="'content'"):
    Message("user", None)


def test_prompt_text_and_version():
  assert schemas.prompt_text("abc") == "abc"
  assert schemas.prompt_text(PreferenceExample.from_dict(_pref()).prompt) == (
      "system: Be brief.\nuser: Hi?")
  assert isinstance(schemas.SCHEMA_VERSION, str) and schemas.SCHEMA_VERSION


def test_weight_is_written_only_when_set():
  d = _pref()
  del d["weight"]
  ex = PreferenceExample.from_dict(d)
  assert ex.weight is None and "weight" not in ex.to_dict()  # version-1 dicts are unchanged
  assert PreferenceExample.from_dict({**d, "weight": None}).to_dict() == d
  assert PreferenceExample.from_dict({**d, "weight": 2}).to_dict()["weight"] == 2.0
