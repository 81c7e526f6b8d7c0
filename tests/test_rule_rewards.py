"""Rule-based rewards and the benchmarks' choice extraction: hand-checked cases."""
import numpy as np
import pytest

from wavalign_jax.rewards import base
from wavalign_jax.rewards import rules


def item(text, **prompt):
  return base.RewardItem(prompt, text)


def test_normalize_answer():
  assert rules.normalize_answer("  The Eiffel-Tower, in PARIS! ") == "eiffeltower in paris"
  assert rules.normalize_answer("An apple a day") == "apple day"


def test_exact_and_normalized_match():
  items = [item("Paris", answer="Paris"), item("paris.", answer="Paris"),
           item("It is Paris.", answer="Paris"), item("Lyon", answer=["Paris", "Lyon"]),
           item("Parisian", answer="Paris")]
  raw = rules.ExactMatch(normalize=False)(items)
  norm = rules.ExactMatch()(items)
  contains = rules.ExactMatch(contains=True)(items)
  np.testing.assert_array_equal(raw.scores, [1, 0, 0, 1, 0])
  np.testing.assert_array_equal(norm.scores, [1, 1, 0, 1, 0])
  np.testing.assert_array_equal(contains.scores, [1, 1, 1, 1, 0])  # whole words only
  assert not norm.failed.any()


@pytest.mark.parametrize("text, expected", [
    ("The answer is B.", "B"), ("the answer is (c)", "C"), ("B", "B"), ("(D) Paris", "D"),
    ("C. Paris", "C"), ("Option A is correct", "A"), ("I would choose option **C**", "C"),
    ("Answer: D", "D"), ("答案是C", "C"), ("The correct answer is: **A) Paris**", "A"),
    ("I think the answer is a dog", None), ("A dog is an animal.", None), ("I am not sure", None),
    ("E", None),
])
def test_extract_choice(text, expected):
  assert rules.extract_choice(text) == expected
