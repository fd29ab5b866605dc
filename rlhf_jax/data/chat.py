"""Chat template: conversations to token ids with a response (loss) mask.

The template is the Anthropic HH-RLHF (Helpful and Harmless RLHF) transcript format, so a rendered
HH prompt decodes back to its original transcript text:

    <bos>\\n\\nHuman: {user}\\n\\nAssistant: {assistant}<eos>\\n\\nHuman: {user}\\n\\nAssistant:

followed, when a response is given, by ` {response}<eos>`. Roles are written with
`ChatTemplate.role_names` ("System", "Human", "Assistant" by default) and every turn starts with
`ChatTemplate.separator` ("\\n\\n"). A plain-text prompt is a single user turn.

Invariants (tested):
  * Each header, each content and the response are tokenised SEPARATELY and the ids concatenated;
    the joined string is never re-tokenised. Hence the prompt ids are an exact prefix of the
    prompt+response ids, which log-prob masks and KV-cache sampling rely on.
  * Exactly one BOS, at position 0. One EOS after every assistant turn (including the response)
    and nowhere else; text never tokenises to BOS/EOS.
  * `response_mask` is 1 exactly on the response tokens and its EOS (optionally also on earlier
    assistant turns, for multi-turn SFT), so the loss never trains on prompt text.
  * Content is encoded as " " + content: the space after the colon belongs to the content, so the
    first word gets its usual word-initial piece. Empty content still gets the space, exactly as
    HH transcripts write an empty turn ("\n\nAssistant: ").
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, NamedTuple, Sequence

from rlhf_jax.data.schemas import Message, Prompt, ROLES
from rlhf_jax.data.tokenizer import Tokenizer


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
  """How roles are written. The defaults reproduce HH-RLHF transcripts."""

  role_names: Mapping[str, str] = dataclasses.field(
      default_factory=lambda: {"system": "System", "user": "Human", "assistant": "Assistant"})
  separator: str = "\n\n"  # written before every role header

  def __post_init__(self):
    missing = [r for r in ROLES if r not in self.role_names]
    if missing:
      raise ValueError(f"ChatTemplate.role_names lacks roles {missing}")

  def header(self, role: str) -> str:
    return f"{self.separator}{self.role_names[role]}:"


DEFAULT_TEMPLATE = ChatTemplate()


class ChatTokens(NamedTuple):
  """A rendered conversation.

  ids: token ids, BOS first.
  response_mask: same length as `ids`; 1 where the loss applies.
  prompt_len: number of leading ids forming the generation prompt (ends with the assistant header).
  """

  ids: list[int]
  response_mask: list[int]
  prompt_len: int


def as_messages(prompt: Prompt) -> tuple[Message, ...]:
  """A prompt as a conversation: plain text becomes one user turn."""
  if isinstance(prompt, str):
    return (Message("user", prompt),)
  return tuple(prompt)


def render_text(prompt: Prompt, response: str | None = None,
                template: ChatTemplate = DEFAULT_TEMPLATE) -> str:
  """The text the template produces (BOS/EOS omitted); equals decoding the ids without EOS."""
  parts = []
  for m in as_messages(prompt):
    parts.append(f"{template.header(m.role)} {m.content}")
  parts.append(template.header("assistant"))
  if response is not None:
    parts.append(" " + response)
  return "".join(parts)


def render(tokenizer: Tokenizer, prompt: Prompt, response: str | None = None, *,
           template: ChatTemplate = DEFAULT_TEMPLATE,
           loss_on_prompt_assistant_turns: bool = False) -> ChatTokens:
  """Tokenises a conversation (and optional final assistant response) with its loss mask.

  Args:
    tokenizer: supplies `encode`, `bos_id`, `eos_id`.
    prompt: plain text or a sequence of `Message`s.
    response: the final assistant reply; None renders the generation prompt only.
    template: role names and separator.
    loss_on_prompt_assistant_turns: also set the mask on assistant turns inside the prompt
      (multi-turn SFT); False for preference and RL data, where they are context.

  Returns:
    ChatTokens(ids, response_mask, prompt_len); `ids[:prompt_len]` is the generation prompt.

  Example:
    >>> t = render(tok, "Hi", "Hello!")
    >>> tok.decode(t.ids)            # '\\n\\nHuman: Hi\\n\\nAssistant: Hello!'
    >>> t.response_mask[t.prompt_len:]   # all ones: ' Hello!' tokens and EOS
  """
  eos = tokenizer.eos_id
  ids = [tokenizer.bos_id]
  mask = [0]
  header_cache: dict[str, list[int]] = {}

  def header(role: str) -> list[int]:
    if role not in header_cache:
      header_cache[role] = tokenizer.encode(template.header(role))
    return header_cache[role]

  def content(text: str) -> list[int]:
    return tokenizer.encode(" " + text)

  for m in as_messages(prompt):
    ids += header(m.role)
    mask += [0] * len(header(m.role))
    body = content(m.content)
    if m.role == "assistant":
      body = body + [eos]
    ids += body
    mask += [int(loss_on_prompt_assistant_turns and m.role == "assistant")] * len(body)
  ids += header("assistant")
  mask += [0] * len(header("assistant"))
  prompt_len = len(ids)
  if response is not None:
    body = content(response) + [eos]
    ids += body
    mask += [1] * len(body)
  return ChatTokens(ids=ids, response_mask=mask, prompt_len=prompt_len)


def render_prompt(tokenizer: Tokenizer, prompt: Prompt, *,
                  template: ChatTemplate = DEFAULT_TEMPLATE) -> list[int]:
  """Ids of the generation prompt (BOS ... assistant header), for sampling."""
  return render(tokenizer, prompt, None, template=template).ids


def render_batch(tokenizer: Tokenizer, prompts: Sequence[Prompt],
                 responses: Sequence[str | None] | None = None, *,
                 template: ChatTemplate = DEFAULT_TEMPLATE,
                 loss_on_prompt_assistant_turns: bool = False) -> list[ChatTokens]:
  """`render` for each (prompt, response) pair."""
  if responses is None:
    responses = [None] * len(prompts)
  if len(responses) != len(prompts):
    raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
  return [render(tokenizer, p, r, template=template,
                 loss_on_prompt_assistant_turns=loss_on_prompt_assistant_turns)
          for p, r in zip(prompts, responses)]
