"""Record schemas shared by ingestion, dataset builders and training (the data layer's contract).

Every example type is a frozen dataclass that validates its own fields at construction, so an
invalid example cannot exist. `to_dict()` gives plain JSON-serialisable dicts and `from_dict()`
parses them back, naming the offending field on any error (unknown fields are errors too).

Conventions:
  * A prompt is either plain text (`str`) or a conversation: a tuple of `Message`s whose roles are
    "system", "user" or "assistant" (SFT = Supervised Fine-Tuning, RLHF = Reinforcement Learning
    from Human Feedback). A conversational prompt normally ends with a user turn; the chat template
    (`rlhf_jax.data.chat`) appends the assistant header that the response continues.
  * Responses (`chosen`, `rejected`, `response`, `response_a`, `response_b`) are the text of ONE
    final assistant turn, never including the prompt.
  * `metadata` holds JSON-serialisable provenance (model id, sampling temperature, ...).

Bumping `SCHEMA_VERSION` is required whenever a field is added, removed or changes meaning; it is
recorded in every dataset manifest. Version 2 added `PreferenceExample.weight`.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Mapping, Sequence, Union

SCHEMA_VERSION = "2"

ROLES = ("system", "user", "assistant")
LABELS = ("a", "b", "tie")


class SchemaError(ValueError):
  """A record does not match its schema. `field` names the offending field (dotted path)."""

  def __init__(self, field: str, message: str):
    self.field = field
    self.detail = message
    super().__init__(f"field {field!r}: {message}")


@dataclasses.dataclass(frozen=True)
class Message:
  """One conversation turn."""

  role: str  # one of ROLES
  content: str

  def __post_init__(self):
    _check_str("role", self.role)
    if self.role not in ROLES:
      raise SchemaError("role", f"must be one of {list(ROLES)}, got {self.role!r}")
    _check_str("content", self.content)

  def to_dict(self) -> dict[str, str]:
    return {"role": self.role, "content": self.content}

  @classmethod
  def from_dict(cls, d: Any) -> "Message":
    d = _check_mapping("message", d)
    _check_keys(d, required=("role", "content"), optional=())
    return cls(role=d["role"], content=d["content"])


Prompt = Union[str, tuple[Message, ...]]


@dataclasses.dataclass(frozen=True)
class PreferenceExample:
  """A pairwise preference: `chosen` is preferred over `rejected` as a reply to `prompt`.

  `tie=True` marks an equally-good pair (order then carries no information); `confidence` in
  [0, 1] is the annotators' agreement or a labeller's probability; `margin` is an optional
  preference strength (e.g. a Likert difference) used by margin-aware reward losses; `weight` is
  an optional non-negative per-pair loss weight given in the data (None means 1), e.g. to
  down-weight a noisy source. Aggregated labels put their probability (e.g. a Dawid-Skene
  posterior) in `confidence`, not in `weight`.
  """

  prompt: Prompt
  chosen: str
  rejected: str
  id: str
  annotator_id: str | None = None
  tie: bool = False
  confidence: float | None = None
  margin: float | None = None
  weight: float | None = None
  source: str | None = None
  metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    object.__setattr__(self, "prompt", _coerce_prompt("prompt", self.prompt))
    _check_str("chosen", self.chosen)
    _check_str("rejected", self.rejected)
    object.__setattr__(self, "id", _coerce_id("id", self.id))
    _check_optional_str("annotator_id", self.annotator_id)
    if not isinstance(self.tie, bool):
      raise SchemaError("tie", f"expected bool, got {type(self.tie).__name__}")
    object.__setattr__(self, "confidence", _coerce_optional_float("confidence", self.confidence))
    if self.confidence is not None and not 0.0 <= self.confidence <= 1.0:
      raise SchemaError("confidence", f"must lie in [0, 1], got {self.confidence}")
    object.__setattr__(self, "margin", _coerce_optional_float("margin", self.margin))
    object.__setattr__(self, "weight", _coerce_optional_float("weight", self.weight))
    if self.weight is not None and self.weight < 0:
      raise SchemaError("weight", f"must be non-negative, got {self.weight}")
    _check_optional_str("source", self.source)
    object.__setattr__(self, "metadata", _check_metadata(self.metadata))

  def to_dict(self) -> dict[str, Any]:
    """A JSON-serialisable dict.

    `weight` (added in schema version 2) is written only when set, so the dicts of unweighted
    pairs are exactly those of version 1.
    """
    d = {"prompt": prompt_to_json(self.prompt), "chosen": self.chosen, "rejected": self.rejected,
         "id": self.id, "annotator_id": self.annotator_id, "tie": self.tie,
         "confidence": self.confidence, "margin": self.margin, "source": self.source,
         "metadata": dict(self.metadata)}
    if self.weight is not None:
      d["weight"] = self.weight
    return d

  @classmethod
  def from_dict(cls, d: Any) -> "PreferenceExample":
    d = _check_mapping("preference example", d)
    _check_keys(d, required=("prompt", "chosen", "rejected", "id"),
                optional=("annotator_id", "tie", "confidence", "margin", "weight", "source",
                          "metadata"))
    return cls(**{**d, "prompt": prompt_from_json("prompt", d["prompt"])})


@dataclasses.dataclass(frozen=True)
class SFTExample:
  """A demonstration: the target `response` to `prompt`.

  A multi-turn conversation is stored with its last assistant turn as `response` and all earlier
  turns as the prompt (`from_messages`); the chat template can still put loss on earlier
  assistant turns when asked to.
  """

  prompt: Prompt
  response: str
  id: str
  source: str | None = None
  metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    object.__setattr__(self, "prompt", _coerce_prompt("prompt", self.prompt))
    _check_str("response", self.response)
    object.__setattr__(self, "id", _coerce_id("id", self.id))
    _check_optional_str("source", self.source)
    object.__setattr__(self, "metadata", _check_metadata(self.metadata))

  @property
  def messages(self) -> tuple[Message, ...]:
    """The whole conversation, prompt turns then the response as an assistant turn."""
    prompt = (Message("user", self.prompt),) if isinstance(self.prompt, str) else self.prompt
    return prompt + (Message("assistant", self.response),)

  @classmethod
  def from_messages(cls, messages: Sequence[Message | Mapping[str, Any]], id: str | int,
                    source: str | None = None,
                    metadata: Mapping[str, Any] | None = None) -> "SFTExample":
    """Splits a conversation at its last turn, which must be an assistant turn."""
    msgs = _coerce_prompt("messages", list(messages) if not isinstance(messages, str) else messages)
    if isinstance(msgs, str) or not msgs:
      raise SchemaError("messages", "expected a non-empty list of messages")
    if msgs[-1].role != "assistant":
      raise SchemaError(f"messages[{len(msgs) - 1}].role",
                        f"the last message must be an assistant turn, got {msgs[-1].role!r}")
    return cls(prompt=msgs[:-1], response=msgs[-1].content, id=id, source=source,
               metadata=metadata if metadata is not None else {})

  def to_dict(self) -> dict[str, Any]:
    return {"prompt": prompt_to_json(self.prompt), "response": self.response, "id": self.id,
            "source": self.source, "metadata": dict(self.metadata)}

  @classmethod
  def from_dict(cls, d: Any) -> "SFTExample":
    """Accepts `{prompt, response, id, ...}` or `{messages, id, ...}`."""
    d = _check_mapping("SFT example", d)
    if "messages" in d:
      _check_keys(d, required=("messages", "id"), optional=("source", "metadata"))
      return cls.from_messages(prompt_from_json("messages", d["messages"]), id=d["id"],
                               source=d.get("source"), metadata=d.get("metadata", {}))
    _check_keys(d, required=("prompt", "response", "id"), optional=("source", "metadata"))
    return cls(**{**d, "prompt": prompt_from_json("prompt", d["prompt"])})


@dataclasses.dataclass(frozen=True)
class PromptExample:
  """A prompt for generation (RL rollouts, best-of-N, evaluation)."""

  prompt: Prompt
  id: str
  source: str | None = None
  metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    object.__setattr__(self, "prompt", _coerce_prompt("prompt", self.prompt))
    object.__setattr__(self, "id", _coerce_id("id", self.id))
    _check_optional_str("source", self.source)
    object.__setattr__(self, "metadata", _check_metadata(self.metadata))

  def to_dict(self) -> dict[str, Any]:
    return {"prompt": prompt_to_json(self.prompt), "id": self.id, "source": self.source,
            "metadata": dict(self.metadata)}

  @classmethod
  def from_dict(cls, d: Any) -> "PromptExample":
    d = _check_mapping("prompt example", d)
    _check_keys(d, required=("prompt", "id"), optional=("source", "metadata"))
    return cls(**{**d, "prompt": prompt_from_json("prompt", d["prompt"])})


@dataclasses.dataclass(frozen=True)
class Comparison:
  """One annotator's judgement of one item: is `response_a` or `response_b` better, or a tie?"""

  item_id: str
  prompt: Prompt
  response_a: str
  response_b: str
  annotator_id: str
  label: str  # one of LABELS: "a", "b" or "tie"
  metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    object.__setattr__(self, "item_id", _coerce_id("item_id", self.item_id))
    object.__setattr__(self, "prompt", _coerce_prompt("prompt", self.prompt))
    _check_str("response_a", self.response_a)
    _check_str("response_b", self.response_b)
    object.__setattr__(self, "annotator_id", _coerce_id("annotator_id", self.annotator_id))
    _check_str("label", self.label)
    if self.label not in LABELS:
      raise SchemaError("label", f"must be one of {list(LABELS)}, got {self.label!r}")
    object.__setattr__(self, "metadata", _check_metadata(self.metadata))

  def to_dict(self) -> dict[str, Any]:
    return {"item_id": self.item_id, "prompt": prompt_to_json(self.prompt),
            "response_a": self.response_a, "response_b": self.response_b,
            "annotator_id": self.annotator_id, "label": self.label,
            "metadata": dict(self.metadata)}

  @classmethod
  def from_dict(cls, d: Any) -> "Comparison":
    d = _check_mapping("comparison", d)
    _check_keys(d, required=("item_id", "prompt", "response_a", "response_b", "annotator_id",
                             "label"), optional=("metadata",))
    return cls(**{**d, "prompt": prompt_from_json("prompt", d["prompt"])})


def prompt_to_json(prompt: Prompt) -> str | list[dict[str, str]]:
  """A prompt as JSON: the string itself, or a list of `{role, content}` dicts."""
  return prompt if isinstance(prompt, str) else [m.to_dict() for m in prompt]


def prompt_from_json(field: str, value: Any) -> Prompt:
  """Parses a prompt given as a string or a list of `{role, content}` dicts (or Messages)."""
  if isinstance(value, str):
    return value
  if not isinstance(value, (list, tuple)):
    raise SchemaError(field, f"expected str or list of messages, got {type(value).__name__}")
  out = []
  for i, m in enumerate(value):
    if isinstance(m, Message):
      out.append(m)
      continue
    try:
      out.append(Message.from_dict(m))
    except SchemaError as e:
      where = f"{field}[{i}]" if e.field == "message" else f"{field}[{i}].{e.field}"
      raise SchemaError(where, e.detail) from None
  return tuple(out)


def prompt_text(prompt: Prompt) -> str:
  """A readable single string for a prompt (conversations as `role: content` lines)."""
  if isinstance(prompt, str):
    return prompt
  return "\n".join(f"{m.role}: {m.content}" for m in prompt)


def _coerce_prompt(field: str, value: Any) -> Prompt:
  if isinstance(value, str):
    return value
  if isinstance(value, (list, tuple)):
    if all(isinstance(m, Message) for m in value):
      return tuple(value)
    return prompt_from_json(field, value)  # dicts allowed; errors name the element
  raise SchemaError(field, f"expected str or list of messages, got {type(value).__name__}")


def _check_str(field: str, value: Any) -> None:
  if not isinstance(value, str):
    raise SchemaError(field, f"expected str, got {type(value).__name__}")


def _check_optional_str(field: str, value: Any) -> None:
  if value is not None and not isinstance(value, str):
    raise SchemaError(field, f"expected str or null, got {type(value).__name__}")


def _coerce_id(field: str, value: Any) -> str:
  # Integer ids are common in public datasets; they are stored as strings.
  if isinstance(value, bool) or not isinstance(value, (str, int)):
    raise SchemaError(field, f"expected str (or int), got {type(value).__name__}")
  value = str(value)
  if not value:
    raise SchemaError(field, "must be non-empty")
  return value


def _coerce_optional_float(field: str, value: Any) -> float | None:
  if value is None:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise SchemaError(field, f"expected a number or null, got {type(value).__name__}")
  if not math.isfinite(value):
    raise SchemaError(field, f"must be finite, got {value}")
  return float(value)


def _check_mapping(what: str, d: Any) -> Mapping[str, Any]:
  if not isinstance(d, Mapping):
    raise SchemaError(what, f"expected a JSON object, got {type(d).__name__}")
  return d


def _check_keys(d: Mapping[str, Any], required: Sequence[str], optional: Sequence[str]) -> None:
  for k in required:
    if k not in d:
      raise SchemaError(k, "missing required field")
  unknown = sorted(set(d) - set(required) - set(optional))
  if unknown:
    raise SchemaError(unknown[0], f"unknown field (allowed: {sorted([*required, *optional])})")


def _check_metadata(value: Any) -> dict[str, Any]:
  if not isinstance(value, Mapping):
    raise SchemaError("metadata", f"expected a JSON object, got {type(value).__name__}")
  for k in value:
    if not isinstance(k, str):
      raise SchemaError("metadata", f"keys must be str, got {type(k).__name__}")
  try:
    json.dumps(value, allow_nan=False)
  except (TypeError, ValueError) as e:
    raise SchemaError("metadata", f"must be JSON-serialisable: {e}") from None
  return dict(value)
