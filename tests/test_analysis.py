"""The four diagnostics against hand-computed cases."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from wavalign_jax.analysis import gradient_geometry, judge_agreement, rollout_diversity, token_shift
from wavalign_jax.batches import RLBatch, SeqBatch, TargetLogprobs
from wavalign_jax.objectives import GRPOConfig, grpo
from wavalign_jax.tokens import TokenType

N, T, S, X = TokenType.NONE, TokenType.TEXT, TokenType.SPEECH, TokenType.BOUNDARY


# ---------------------------------------------------------------- judge agreement (observation 2)


def test_agreement_of_a_judge_equal_to_the_truth_is_one():
  truth = np.array([1, 2, 2, 3, 4, 5, 5, 3, 1, 4], np.float64)
  got = judge_agreement.agreement(truth, truth, num_bootstrap=200)
  for m in ("spearman", "pearson", "kappa"):
    assert got[m]["value"] == pytest.approx(1.0) and got[m]["lo"] == pytest.approx(1.0)


def test_agreement_hand_values():
  # Pearson of (1,2,3) vs (1,3,2): cov 0.5 / var 1 -> 0.5; Spearman the same (no ties).
  assert judge_agreement.pearson(np.array([1., 2., 3.]), np.array([1., 3., 2.])) == pytest.approx(0.5)
  assert judge_agreement.spearman(np.array([1., 2., 3.]), np.array([10., 30., 20.])) == pytest.approx(0.5)
  # Ties share ranks: (1, 1, 2) -> ranks (1.5, 1.5, 3).
  np.testing.assert_allclose(judge_agreement._ranks(np.array([1, 1, 2])), [1.5, 1.5, 3])
  # Kappa: 4 items, 2 bins; agreement on 2 of 4 with marginals (2, 2) / (2, 2): (0.5 - 0.5) / 0.5 = 0.
  assert judge_agreement.cohen_kappa(np.array([1, 1, 5, 5]), np.array([1, 5, 1, 5]), bins=(3,)) == pytest.approx(0.0)
  # Unequal marginals (3, 1) / (1, 3): p_o 0.5, p_e (3·1 + 1·3) / 16 = 0.375, kappa 0.125 / 0.625 = 0.2.
  assert judge_agreement.cohen_kappa(np.array([1, 1, 1, 5]), np.array([1, 5, 5, 5]), bins=(3,)) == pytest.approx(0.2)
  # A noisy judge agrees less, and its CI excludes 1.
  rng = np.random.default_rng(0)
  truth = rng.integers(1, 6, 200).astype(float)
  noisy = np.clip(truth + rng.normal(0, 1.5, 200), 1, 5)
  got = judge_agreement.agreement(noisy, truth, num_bootstrap=300)
  assert got["pearson"]["lo"] <= got["pearson"]["value"] <= got["pearson"]["hi"] < 1.0


# ---------------------------------------------------------------- rollout diversity (observation 4)


def test_diversity_of_constant_and_varied_groups():
  rewards = np.array([[3, 3, 3, 3], [1, 5, 1, 5]], float)
  text = [[[1, 2, 3]] * 4, [[1, 2, 3], [3, 2, 1], [1, 2, 4], [5, 6, 7]]]
  stats = rollout_diversity.group_stats(rewards, {"semantic": rewards / 2}, text=text, n=2)
  np.testing.assert_allclose(stats["reward_var"], [0.0, 4.0])
  np.testing.assert_allclose(stats["semantic_var"], [0.0, 1.0])
  np.testing.assert_array_equal(stats["informative"], [0.0, 1.0])
  # Group 0: 8 bigrams, 2 distinct; group 1: bigrams 12 23 32 21 12 24 56 67 -> 7 distinct of 8.
  np.testing.assert_allclose(stats["text_distinct_2"], [2 / 8, 7 / 8])
  assert rollout_diversity.summary(stats)["diversity/informative"] == 0.5
  # The same from rollout rows (text ids, audio codes), grouped G at a time.
  rows = [(t, [7, 7]) for group in text for t in group]
  by_rows = rollout_diversity.content_stats(rewards, rows)
  np.testing.assert_allclose(by_rows["text_distinct_2"], stats["text_distinct_2"])
  np.testing.assert_allclose(by_rows["audio_distinct_2"], [1 / 4, 1 / 4])


def test_semantic_informativeness_separates_judge_noise_from_real_differences():
  # Group 0: every rollout right, the scores differ by acoustic noise only; group 1: one rollout wrong.
  rewards = np.array([[4.6, 4.9, 4.2], [4.6, 4.9, 2.1]])
  semantic = np.array([[5, 5, 5], [5, 5, 2]])
  np.testing.assert_array_equal(rollout_diversity.informative(rewards), [1.0, 1.0])
  np.testing.assert_array_equal(rollout_diversity.informative(semantic), [0.0, 1.0])
  # Equal rewards whose float64 mean rounds (3 x 0.1: variance 2e-34) carry no information.
  assert np.var(np.full(3, 0.1)) > 0
  np.testing.assert_array_equal(rollout_diversity.informative(np.full((2, 3), 0.1)), [0.0, 0.0])
  # A failed judge call left out of the advantages (its fallback 1 differs from the group's 3s) is left out here too:
  # the group trains on nothing, so it is not informative, and its reward variance is that of the 3s.
  stats = rollout_diversity.group_stats(np.array([[3.0, 3.0, 3.0, 1.0], [1.0, 2.0, 3.0, 4.0], [2.0, 5.0, 5.0, 5.0]]),
                                        valid=np.array([[1, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]], bool))
  np.testing.assert_array_equal(stats["informative"], [0.0, 1.0, 0.0])
  np.testing.assert_allclose(stats["reward_var"], [0.0, 1.25, 0.0])


def test_pass_stats_and_true_score_summary_hand_computed():
  correct = np.array([[1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], bool)
  assert rollout_diversity.pass_stats(correct) == {
      "pass/at_1": pytest.approx(5 / 12), "pass/at_G": pytest.approx(2 / 3),
      "pass/hopeless_groups": pytest.approx(1 / 3), "pass/saturated_groups": pytest.approx(1 / 3)}
  scores = np.array([1.0, 2.0, 3.0])
  info = [{"semantic": 1, "acoustic": 0.3}, {"semantic": 3, "acoustic": 0.1}, {"semantic": 2, "acoustic": 0.2}]
  got = judge_agreement.true_score_summary(scores, info)
  assert got["judge/true_semantic"] == pytest.approx(2.0) and got["judge/true_acoustic"] == pytest.approx(0.2)
  assert got["judge/pearson_semantic"] == pytest.approx(0.5) and got["judge/pearson_acoustic"] == pytest.approx(-0.5)
  assert judge_agreement.true_score_summary(scores, [{"reason": "x"}] * 3) == {}
  assert judge_agreement.has_true_scores(info) and not judge_agreement.has_true_scores([])
  assert not judge_agreement.has_true_scores(info[:2] + [{"semantic": 2}])   # every item, both dimensions


# ---------------------------------------------------------------- token shift (observation 1)


def toy_logprob_fn(params, batch):
  out = TargetLogprobs(logp={}, entropy={})
  for k, ids in batch.inputs.items():
    logits = jax.nn.log_softmax(params["w"][k][ids], axis=-1)
    logp = jnp.take_along_axis(logits, batch.targets[k][..., None], axis=-1)[..., 0]
    out.logp[k], out.entropy[k] = logp, jnp.zeros_like(logp)
  return out


TYPES = {"text": np.array([[N, T, T, T, N], [N, T, T, N, N]], np.int32),
         "audio": np.array([[N, S, S, X, S], [N, X, S, S, N]], np.int32)}
RNG = np.random.default_rng(0)
IDS = {k: RNG.integers(0, 5, v.shape).astype(np.int32) for k, v in TYPES.items()}
ZEROS = np.zeros(TYPES["text"].shape, np.int32)   # the toy model reads no positions
BATCH = SeqBatch(inputs=IDS, targets={k: np.roll(v, -1, 1) for k, v in IDS.items()}, types=TYPES, positions=ZEROS,
                 segment_ids=ZEROS)
PARAMS = {"w": {k: jnp.asarray(RNG.normal(0, 1, (5, 5)).astype(np.float32)) for k in TYPES}}


def test_identical_checkpoints_shift_nothing():
  delta = token_shift.logprob_shift(toy_logprob_fn, PARAMS, PARAMS, BATCH)
  assert all(float(jnp.max(jnp.abs(d))) == 0.0 for d in delta.values())
  summary = token_shift.summarize(jax.device_get(delta), TYPES)
  assert summary["text"]["mean_abs"] == 0.0 and summary["speech"]["frac_above"] == 0.0


def test_shift_by_type_and_position():
  moved = {"w": {"text": PARAMS["w"]["text"], "audio": PARAMS["w"]["audio"] + 1.0 * jnp.eye(5)}}
  delta = jax.device_get(token_shift.logprob_shift(toy_logprob_fn, PARAMS, moved, BATCH))
  assert np.all(delta["text"] == 0.0)                       # only the audio stream's parameters moved
  a, b = toy_logprob_fn(PARAMS, BATCH).logp["audio"], toy_logprob_fn(moved, BATCH).logp["audio"]
  want = np.where(TYPES["audio"] != N, np.asarray(b - a), 0.0)
  np.testing.assert_allclose(delta["audio"], want, rtol=1e-6)
  s = token_shift.summarize(delta, TYPES, threshold=0.0)
  assert s["text"]["mean_abs"] == 0.0 and s["speech"]["count"] == 5 and s["boundary"]["count"] == 2
  np.testing.assert_allclose(s["speech"]["mean_abs"], np.abs(want[TYPES["audio"] == S]).mean(), rtol=1e-6)
  # Relative positions: row 0's audio response has 4 positions -> 0, .25, .5, .75.
  np.testing.assert_allclose(token_shift.relative_positions(TYPES["audio"])[0], [-1, 0, .25, .5, .75])


# ---------------------------------------------------------------- gradient geometry (observation 3)


def _rl():
  return RLBatch(inputs=BATCH.inputs, targets=BATCH.targets, types={k: jnp.asarray(v) for k, v in TYPES.items()},
                 positions=ZEROS, segment_ids=ZEROS, advantages=jnp.asarray([1.0, -1.0]))


def test_text_and_speech_gradients_add_up_and_are_orthogonal_on_disjoint_parameters():
  g = gradient_geometry.split_gradients(toy_logprob_fn, PARAMS, _rl(), GRPOConfig())
  jax.tree.map(lambda a, b, c: np.testing.assert_allclose(np.asarray(a) + np.asarray(b), np.asarray(c), atol=1e-7),
               g["text"], g["speech"], g["all"])
  # The text stream's parameters only see text tokens, the audio stream's only speech: cosine exactly 0.
  geo = gradient_geometry.geometry(toy_logprob_fn, PARAMS, _rl(), GRPOConfig(), num_minibatches=2)
  assert float(geo["cosine_text_speech"]) == 0.0
  np.testing.assert_allclose(geo["energy_all"], geo["energy_text"] + geo["energy_speech"], rtol=1e-5)


def test_snr_hand_case():
  """Two identical mini-batches: no spread, infinite-like SNR; opposite advantages: zero mean gradient."""
  rl = _rl()
  same = jax.tree.map(lambda x: jnp.concatenate([x[:1], x[:1]]), rl)
  geo = gradient_geometry.geometry(toy_logprob_fn, PARAMS, same, GRPOConfig(), num_minibatches=2)
  assert float(geo["snr_all"]) > 1e6
  flipped = same.replace(advantages=jnp.asarray([1.0, -1.0]))
  geo = gradient_geometry.geometry(toy_logprob_fn, PARAMS, flipped, GRPOConfig(), num_minibatches=2)
  assert float(geo["snr_all"]) == pytest.approx(0.0, abs=1e-6)
  # Two different mini-batches with gradients g1, g2: |mean| / sqrt(mean of |g_i - mean|^2) = |g1 + g2| / |g1 - g2|.
  geo = gradient_geometry.geometry(toy_logprob_fn, PARAMS, rl, GRPOConfig(), num_minibatches=2)
  g1, g2 = (gradient_geometry.split_gradients(toy_logprob_fn, PARAMS, half, GRPOConfig(), ("all",))["all"]
            for half in (jax.tree.map(lambda x: x[:1], rl), jax.tree.map(lambda x: x[1:], rl)))
  norm = lambda f: float(optax.tree.norm(jax.tree.map(f, g1, g2)))
  assert norm(jnp.subtract) > 0.1 * norm(jnp.add)   # the premise: the two differ
  assert float(geo["snr_all"]) == pytest.approx(norm(jnp.add) / norm(jnp.subtract), rel=1e-5)


def test_geometry_weighs_the_rows_training_weighs():
  """The diagnostics take advantages and row weights from `grpo.with_group_fields`, as the step does: a group with
  a failed judge call whose one valid reward carries no signal (dropped by `drop_equal_groups`) changes nothing, so
  the gradient equals that of its other group alone. Advantages alone (the diagnostics before) counted the dropped
  group's tokens in the denominator and shrank the gradient."""
  rl2 = _rl().replace(advantages=None)
  rl4 = jax.tree.map(lambda x: jnp.concatenate([x, x[::-1]]), rl2)   # groups (row 0, row 1) and (row 1, row 0)
  cfg = GRPOConfig(drop_equal_groups=True)
  fields = grpo.with_group_fields(rl4, jnp.asarray([[1.0, 0.0], [2.0, 5.0]]), jnp.asarray([[1, 1], [1, 0]], bool),
                                  cfg)
  np.testing.assert_array_equal(fields.seq_weight, [1, 1, 0, 0])
  both = gradient_geometry.split_gradients(toy_logprob_fn, PARAMS, fields, cfg, ("all",))["all"]
  alone = gradient_geometry.split_gradients(
      toy_logprob_fn, PARAMS, grpo.with_group_fields(rl2, jnp.asarray([[1.0, 0.0]]), None, cfg), cfg, ("all",))["all"]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-8), both, alone)
  assert float(jnp.abs(alone["w"]["text"]).max()) > 1e-3   # not trivially zero
