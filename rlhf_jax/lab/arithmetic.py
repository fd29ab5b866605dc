"""The lab's verifiable task: integer arithmetic with an exact checker.

Prompts look like "Compute 23+58=" and the demonstrated response is the bare answer ("81").
The checker recomputes the answer from the prompt (a safe evaluator of +, -, * and
parentheses; never `eval`) and extracts the model's answer robustly, so verifiable-reward RL
(e.g. GRPO = Group Relative Policy Optimization with a 0/1 reward) and best-of-N with a verifier
can be run and checked exactly.

Difficulty levels (`LEVELS`):
  1: a+b            a, b in [0, 9]
  2: a+b or a-b     a, b in [10, 99], a >= b for "-" (non-negative answers)
  3: a*b            a in [10, 99], b in [2, 9]; or a+b / a-b with a, b in [100, 999]
  4: (a op b) op c  a, b, c in [2, 30], op in {+, -, *}

Answer extraction (`extract_answer`), first rule that applies:
  "#### 81" (GSM8K style) -> the number after the last "####";
  "\\boxed{81}" -> the number inside the last box;
  "... answer is 81" / "Answer: 81" -> the first number after the last "answer";
  otherwise the last number in the text.
Numbers may carry a sign (also U+2212), thousands separators ("1,234") and a zero fraction
("81.0"); surrounding markdown ("**81**") and a trailing period do not matter. After
"answer", a worked chain ("answer is 23*4 = 92") is followed to its last number. A non-integer
value is never correct.
"""
from __future__ import annotations

import ast
import fractions
import re
from typing import NamedTuple, Sequence

import numpy as np

LEVELS = (1, 2, 3, 4)
PROMPT_TEMPLATE = "Compute {expression}="


class Problem(NamedTuple):
  """One arithmetic problem: the prompt, its expression and exact integer answer."""
  prompt: str
  expression: str
  answer: int
  level: int


def sample_problem(level: int, rng: np.random.Generator) -> Problem:
  """Draws one problem of a difficulty level."""
  def draw(lo: int, hi: int) -> int:
    return int(rng.integers(lo, hi + 1))

  if level == 1:
    expr = f"{draw(0, 9)}+{draw(0, 9)}"
  elif level == 2:
    a, b = draw(10, 99), draw(10, 99)
    expr = f"{a}+{b}" if rng.random() < 0.5 else f"{max(a, b)}-{min(a, b)}"
  elif level == 3:
    kind = rng.random()
    if kind < 0.5:
      expr = f"{draw(10, 99)}*{draw(2, 9)}"
    else:
      expr = f"{draw(100, 999)}{'+' if kind < 0.75 else '-'}{draw(100, 999)}"
  elif level == 4:
    ops = "+-*"
    a, b, c = draw(2, 30), draw(2, 30), draw(2, 30)
    expr = f"({a}{ops[draw(0, 2)]}{b}){ops[draw(0, 2)]}{c}"
  else:
    raise ValueError(f"arithmetic level must be one of {LEVELS}, got {level!r}")
  return Problem(PROMPT_TEMPLATE.format(expression=expr), expr, evaluate(expr), level)


_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b}


def evaluate(expression: str) -> int:
  """Exact value of an integer expression with + - * and parentheses (no other syntax)."""
  try:
    tree = ast.parse(expression.strip(), mode="eval")
  except SyntaxError:
    raise ValueError(f"not an arithmetic expression: {expression!r}") from None

  def ev(node: ast.AST) -> int:
    if isinstance(node, ast.Constant) and type(node.value) is int:
      return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
      return _OPS[type(node.op)](ev(node.left), ev(node.right))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
      return -ev(node.operand) if isinstance(node.op, ast.USub) else ev(node.operand)
    raise ValueError(f"unsupported syntax {ast.dump(node)} in expression {expression!r}")

  return ev(tree.body)


_PROMPT_RE = re.compile(r"([-+*()\d\s]*\d[-+*()\d\s]*)=\s*\??\s*$")


def solve(prompt: str) -> int:
  """The exact answer of a prompt that ends with "<expression>=" (as `PROMPT_TEMPLATE`)."""
  m = _PROMPT_RE.search(prompt)
  if m is None:
    raise ValueError(f"no arithmetic expression ending in '=' found in prompt {prompt!r}")
  return evaluate(m.group(1))


_NUMBER = r"(?:(?<![\w)])[-\u2212])?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_NUMBER_RE = re.compile(_NUMBER)
_CHAIN_RE = re.compile(r"\s*[-+*/=x\u00d7\u2212]\s*(" + _NUMBER + ")")


def _to_value(token: str) -> fractions.Fraction:
  return fractions.Fraction(token.replace("\u2212", "-").replace(",", ""))


def extract_answer(text: str) -> fractions.Fraction | None:
  """The number a response gives as its answer (rules in the module docstring), or None."""
  for marker in (r"####", r"\\boxed\{", r"(?i:answer)"):
    hits = list(re.finditer(marker, text))
    if hits:
      m = _NUMBER_RE.search(text, hits[-1].end())
      if m is not None:
        # Follow a worked chain such as "answer is 23*4 = 92" to its last number.
        while (step := _CHAIN_RE.match(text, m.end())) is not None:
          m = _NUMBER_RE.match(text, step.start(1))
        return _to_value(m.group())
  numbers = _NUMBER_RE.findall(text)
  return _to_value(numbers[-1]) if numbers else None


def check_answer(prompt: str, response: str) -> bool:
  """Whether `response` answers the arithmetic `prompt` exactly."""
  answer = extract_answer(response)
  return answer is not None and answer == solve(prompt)


def verifier_reward(prompts: Sequence[str], responses: Sequence[str]) -> np.ndarray:
  """Verifiable reward [B] in {0., 1.}: 1 where the response's answer is exactly right."""
  if len(prompts) != len(responses):
    raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
  out = np.zeros(len(prompts), np.float32)
  for i, (prompt, response) in enumerate(zip(prompts, responses)):
    try:
      out[i] = float(check_answer(prompt, response))
    except ValueError as e:
      raise ValueError(f"prompts[{i}]: {e}") from None
  return out
