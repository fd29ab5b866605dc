"""Tests of rlhf_jax.data.chat: the chat template and its invariants."""
import pytest

from rlhf_jax.data import chat
from rlhf_jax.data.schemas import Message
from rlhf_jax.data.tokenizer import Tokenizer

U, A, S = "user", "assistant", "system"

CONVERSATIONS = [
    ("plain text prompt", "Sure, here it is."),
    ((Message(U, "What is 2 plus 3?"),), "It is 5."),
    ((Message(S, "Be brief."), Message(U, "Hi"), Message(A, "Hello!"), Message(U, "Bye")), "Bye."),
    # HH-style: responses with "\n\n", invented turns, role confusion, empty middle turns,
    # trailing whitespace and non-ASCII text.
    ((Message(U, "Can you help me?"), Message(A, "Human: sure.\n\nWhat do you need?"),
      Message(U, "A “recipe”"), Message(A, ""), Message(U, "hello?")),
     "Here:\n\nHuman: invented turn\n\nAssistant: more text  "),
    ((Message(U, "x"),), ""),  # empty response
    ((Message(U, "literal </s> and <s> in text"),), "ok </s>"),
]


@pytest.fixture(scope="module")
def tok(testdata_dir):
  return Tokenizer.load(testdata_dir / "tokenizer_512.model")


def _num_assistant(prompt):
  return sum(m.role == A for m in chat.as_messages(prompt))


@pytest.mark.parametrize("prompt, response", CONVERSATIONS)
def test_invariants(tok, prompt, response):
  full = chat.render(tok, prompt, response)
  prompt_only = chat.render(tok, prompt)
  ids, mask = full.ids, full.response_mask
  assert len(ids) == len(mask)
  # The prompt's ids are an exact prefix of prompt + response ids.
  assert ids[:full.prompt_len] == prompt_only.ids
  assert prompt_only.prompt_len == len(prompt_only.ids)
  assert chat.render_prompt(tok, prompt) == prompt_only.ids
  # Exactly one BOS, at position 0.
  assert ids[0] == tok.bos_id and ids.count(tok.bos_id) == 1
  # One EOS per assistant turn (prompt turns + the response), the last token being EOS.
  assert ids.count(tok.eos_id) == _num_assistant(prompt) + 1
  assert ids[-1] == tok.eos_id
  assert prompt_only.ids.count(tok.eos_id) == _num_assistant(prompt)
  assert tok.pad_id not in ids
  # No EOS pairs (would mean an empty assistant turn got a duplicated EOS).
  assert all(not (x == y == tok.eos_id) for x, y in zip(ids, ids[1:]))
  # The loss is on the response tokens and their EOS only.
  assert mask[:full.prompt_len] == [0] * full.prompt_len
  assert mask[full.prompt_len:] == [1] * (len(ids) - full.prompt_len)
  assert tok.decode(ids[full.prompt_len:]) == " " + response
  # Decoding (without EOS, which stops decoding) gives the template text.
  no_eos = [i for i in ids if i != tok.eos_id]
  assert tok.decode(no_eos) == chat.render_text(prompt, response)
  assert tok.decode([i for i in prompt_only.ids if i != tok.eos_id]) == chat.render_text(prompt)


def test_matches_hand_built_ids(tok):
  """Independent construction of the expected ids for a two-turn conversation."""
  conv = (Message(U, "Hi"), Message(A, "Hello"), Message(U, "Bye"))
  e = tok.encode
  expected = ([tok.bos_id] + e("\n\nHuman:") + e(" Hi") + e("\n\nAssistant:") + e(" Hello") +
              [tok.eos_id] + e("\n\nHuman:") + e(" Bye") + e("\n\nAssistant:"))
  out = chat.render(tok, conv, "Ciao")
  assert out.ids == expected + e(" Ciao") + [tok.eos_id]
  assert out.prompt_len == len(expected)
  assert chat.render_text(conv, "Ciao") == "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Bye\n\nAssistant: Ciao"


def test_plain_text_equals_single_user_turn(tok):
  assert chat.render(tok, "What?", "That.") == chat.render(tok, (Message(U, "What?"),), "That.")


def test_loss_on_prompt_assistant_turns(tok):
  conv = (Message(U, "Hi"), Message(A, "Hello"), Message(U, "Bye"))
  off = chat.render(tok, conv, "Ciao")
  on = chat.render(tok, conv, "Ciao", loss_on_prompt_assistant_turns=True)
  assert on.ids == off.ids and on.prompt_len == off.prompt_len
  extra = [i for i, (a, b) in enumerate(zip(on.response_mask, off.response_mask)) if a != b]
  # Exactly the " Hello" tokens and the EOS after them.
  hello = tok.encode(" Hello") + [tok.eos_id]
  assert [on.ids[i] for i in extra] == hello
  start = 1 + len(tok.encode("\n\nHuman:")) + len(tok.encode(" Hi")) + len(tok.encode("\n\nAssistant:"))
  assert extra == list(range(start, start + len(hello)))


def test_custom_template(tok):
  tmpl = chat.ChatTemplate(role_names={"system": "SYS", "user": "User", "assistant": "Bot"},
                           separator="\n")
  out = chat.render(tok, "hi", "yo", template=tmpl)
  assert tok.decode(out.ids) == "\nUser: hi\nBot: yo"
  with pytest.raises(ValueError, match="lacks roles"):
    chat.ChatTemplate(role_names={"user": "U", "assistant": "A"})


def test_render_batch(tok):
  prompts = ["a", (Message(U, "b"),)]
  outs = chat.render_batch(tok, prompts, ["x", "y"])
  assert outs == [chat.render(tok, "a", "x"), chat.render(tok, prompts[1], "y")]
  assert chat.render_batch(tok, prompts) == [chat.render(tok, p) for p in prompts]
  with pytest.raises(ValueError, match="2 prompts but 1 responses"):
    chat.render_batch(tok, prompts, ["x"])
