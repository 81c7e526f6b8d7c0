"""Rule-based rewards and the benchmarks' choice extraction: hand-checked cases."""
import numpy as np
import pytest

from experiments import vita
from wavalign_jax import run_setup
from wavalign_jax.rewards import base
from wavalign_jax.rewards import rules
from wavalign_jax.testbed import metrics, unit_tts


def item(text, **prompt):
  return base.RewardItem(prompt, text)


def test_normalize_answer():
  assert rules.normalize_answer("  The Eiffel-Tower, in PARIS! ") == "eiffeltower in paris"
  assert rules.normalize_answer("An apple a day") == "apple day"


def test_exact_and_normalized_match():
  items = [item("Paris", answer="Paris"), item("paris.", answer="Paris"),
           item("It is Paris.", answer="Paris"), item("Lyon", answer=["Paris", "Lyon"]),
           item("Parisian", answer="Paris")]
  raw = rules.ExactMatch(normalize=None)(items)
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


def test_the_testbed_exact_match_reward_is_1_exactly_where_iq_is_1(tmp_path):
  """The positive control's reward on the testbed must reward what IQ counts (testbed/metrics.item_scores), not
  SQuAD's normal form, which drops articles ("red dog" for "a red dog") and joins hyphenated words."""
  reward = run_setup.make_reward_fn(vita.get_config("tiny,rl_text_exact"), str(tmp_path))
  cases = [("a red dog", "a red dog"), ("red dog", "a red dog"), ("A red dog!", "a red dog"), ("7.", "7"),
           ("the 7", "7"), ("big-forest", "big forest"), ("bigforest", "big forest"), ("", "7")]
  got = reward([item(text, answer=answer) for text, answer in cases]).scores
  style = unit_tts.STYLES[0]
  iq = [metrics.item_scores({"answer": answer, "style": style}, text, [])["iq"] for text, answer in cases]
  assert got.tolist() == iq == [1, 0, 1, 1, 0, 1, 0, 0]
  assert rules.ExactMatch()([item("red dog", answer="a red dog")]).scores.tolist() == [1]   # SQuAD's, elsewhere
