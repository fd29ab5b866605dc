"""Tests of the lab's verifiable arithmetic task and its exact checker."""
import fractions
import re

import numpy as np
import pytest

from rlhf_jax.lab import arithmetic

_RANGES = {  # level -> operand ranges and operators, as documented
    1: ((0, 9), "+"),
    2: ((10, 99), "+-"),
    4: ((2, 30), "+-*"),
}


@pytest.mark.parametrize("level", arithmetic.LEVELS)
def test_problems_are_solved_exactly_and_respect_their_level(level):
  rng = np.random.default_rng(level)
  for _ in range(300):
    q = arithmetic.sample_problem(level, rng)
    assert q.prompt == f"Compute {q.expression}="
    assert q.level == level
    # Python's own evaluator as the independent reference, on strings we generated ourselves.
    assert q.answer == eval(q.expression)  # pylint: disable=eval-used
    assert arithmetic.solve(q.prompt) == q.answer
    operands = [int(x) for x in re.findall(r"\d+", q.expression)]
    if level in _RANGES:
      (lo, hi), ops = _RANGES[level]
      assert all(lo <= x <= hi for x in operands), q
      assert set(re.findall(r"[-+*]", q.expression)) <= set(ops)
    if level == 2:
      assert q.answer >= 0
    if level == 3:
      assert re.fullmatch(r"\d{2}\*[2-9]|\d{3}[-+]\d{3}", q.expression), q
    if level == 4:
      assert len(operands) == 3 and q.expression.startswith("(")


def test_sampling_is_deterministic_per_seed():
  def draw(seed):
    rng = np.random.default_rng(seed)
    return [arithmetic.sample_problem(level, rng).prompt for level in (2, 3, 4) * 5]

  assert draw(0) == draw(0)
  assert draw(0) != draw(1)


@pytest.mark.parametrize("response", [
    "81", " 81", "81.", "81\n", "The answer is 81.", "Answer: 81", "**81**", "\\boxed{81}",
    "#### 81", "81.0", "23+58=81", "23 + 58 = 81.", "I think the answer is 23+58 = 81.",
    "The answer is 81, not 82.", "So 23+58 is 81", "We get 80 + 1 = 81",
])
def test_checker_accepts_correct_answers_with_formatting_variations(response):
  assert arithmetic.check_answer("Compute 23+58=", response)


@pytest.mark.parametrize("response", [
    "18", "810", "8 1", "81.5", "", "no idea", "-81", "The answer is 80, or maybe 81.",
    "81 or 82", "#### 80\nactually 81", "\\boxed{80} but 81",
])
def test_checker_rejects_wrong_answers(response):
  assert not arithmetic.check_answer("Compute 23+58=", response)


def test_extraction_of_signs_separators_and_chains():
  assert arithmetic.extract_answer("= -35") == -35
  assert arithmetic.extract_answer("\u221235") == -35  # unicode minus
  assert arithmetic.extract_answer("23-58") == 58  # a binary minus is not a sign
  assert arithmetic.extract_answer("Total: 1,234.") == 1234
  assert arithmetic.extract_answer("1,23") == 23  # not a thousands group
  assert arithmetic.extract_answer("answer is 23*4 = 92") == 92
  assert arithmetic.extract_answer("2.5") == fractions.Fraction(5, 2)
  assert arithmetic.extract_answer("none") is None
  assert arithmetic.check_answer("Compute 100-250=", "The answer is -150.")
  assert arithmetic.check_answer("Compute (12+3)*30=", "450")
  assert not arithmetic.check_answer("Compute 100-250=", "150")


def test_evaluator_refuses_anything_but_integer_arithmetic():
  assert arithmetic.evaluate("(2+3)*-4") == -20
  for bad in ("__import__('os')", "2**10", "7/2", "1.5+1", "x+1", "2 +"):
    with pytest.raises(ValueError):
      arithmetic.evaluate(bad)
  with pytest.raises(ValueError, match="no arithmetic expression"):
    arithmetic.solve("Write a review of the kettle.")
  with pytest.raises(ValueError, match="arithmetic level must be one of"):
    arithmetic.sample_problem(7, np.random.default_rng(0))


def test_verifier_reward():
  prompts = ["Compute 2+2=", "Compute 10-3=", "Compute 6*7="]
  reward = arithmetic.verifier_reward(prompts, ["4", "The answer is 8.", "#### 42"])
  np.testing.assert_array_equal(reward, np.array([1.0, 0.0, 1.0], np.float32))
  assert reward.dtype == np.float32
  with pytest.raises(ValueError, match=r"prompts\[1\]"):
    arithmetic.verifier_reward(["Compute 1+1=", "hello"], ["2", "2"])
  with pytest.raises(ValueError, match="2 prompts but 1 responses"):
    arithmetic.verifier_reward(prompts[:2], ["4"])
