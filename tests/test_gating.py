"""The λ gate against hand-computed numbers (docs/method.md §1 reference rules)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wavalign_jax.objectives.gate import GateConfig, init_gate_state, update_gate


def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


# Prompt A [1, 5, 3, 3]: var 2, max 5 -> g_V 0.5, g_R sigmoid(10).
# Prompt B [2, 2, 2, 2]: var 0 -> λ_raw 0.
# Prompt C [1, 2, 3, 4]: var 1.25, max 4 -> g_V 0.3125, g_R sigmoid(5).
REWARDS = jnp.array([[1.0, 5.0, 3.0, 3.0], [2.0, 2.0, 2.0, 2.0], [1.0, 2.0, 3.0, 4.0]])
RAW = 0.8 * np.array([sigmoid(10.0) * 0.5, 0.0, sigmoid(5.0) * 0.3125])


def test_first_step_is_mean_raw_lambda_and_metrics():
  cfg = GateConfig()
  state, m = update_gate(init_gate_state(cfg), REWARDS, None, cfg)
  np.testing.assert_allclose(state.lam, RAW.mean(), rtol=1e-6)
  np.testing.assert_allclose(m["lambda_raw"], RAW.mean(), rtol=1e-6)
  np.testing.assert_allclose(m["gate_info"], np.mean([0.5, 0.0, 0.3125]), rtol=1e-6)
  np.testing.assert_allclose(m["gate_direction"], np.mean([sigmoid(10.0), sigmoid(-5.0), sigmoid(5.0)]), rtol=1e-6)
  np.testing.assert_allclose(m["reward_max"], 11.0 / 3, rtol=1e-6)
  np.testing.assert_allclose(m["reward_var"], np.mean([2.0, 0.0, 1.25]), rtol=1e-6)
  np.testing.assert_allclose(m["reward_mean"], 30.0 / 12, rtol=1e-6)
  assert bool(state.initialized)


def test_ema_step_uses_previous_lambda_for_every_prompt():
  cfg = GateConfig()
  state = init_gate_state(cfg)._replace(lam=jnp.float32(0.6), initialized=jnp.asarray(True))
  state, m = update_gate(state, REWARDS, None, cfg)
  np.testing.assert_allclose(state.lam, np.mean(0.9 * 0.6 + 0.1 * RAW), rtol=1e-6)
  # Two steps in a row under jit: the second uses the first's λ.
  step = jax.jit(lambda s, r: update_gate(s, r, None, cfg))
  s1, _ = step(init_gate_state(cfg), REWARDS)
  s2, _ = step(s1, REWARDS)
  np.testing.assert_allclose(s2.lam, np.mean(0.9 * RAW.mean() + 0.1 * RAW), rtol=1e-6)


def test_clip_to_lambda_max():
  # λ_prev above λ_max (e.g. the config changed on resume) clips every prompt's λ; and each prompt is clipped before
  # the mean: λ_prev 0.54 gives per-prompt 0.536 -> 0.5 and 0.486, mean 0.493, where clipping the mean gives 0.5.
  cfg = GateConfig(lambda_max=0.5)
  r = jnp.array([[1.0, 5.0, 1.0, 5.0], [3.0, 3.0, 3.0, 3.0]])  # var 4 -> g_V 1; var 0
  raw = 0.5 * np.array([sigmoid(10.0), 0.0])
  for prev, want in [(0.9, 0.5), (0.54, np.mean([0.5, 0.9 * 0.54]))]:
    state = init_gate_state(cfg)._replace(lam=jnp.float32(prev), initialized=jnp.asarray(True))
    state, _ = update_gate(state, r, None, cfg)
    np.testing.assert_allclose(state.lam, np.mean(np.minimum(0.9 * prev + 0.1 * raw, 0.5)), rtol=1e-6)
    np.testing.assert_allclose(state.lam, want, rtol=1e-5)   # by hand (sigmoid(10) rounds to 1 at this tolerance)


def test_info_gate_is_capped_at_one():
  """A spread wider than info_norm (var 4 over info_norm 2) opens the information gate fully, no further: g_V = 1,
  λ_raw = λ_max · g_R (the gate without its clip would give 2 and λ above λ_max)."""
  cfg = GateConfig(mode="dynamic_no_ema", info_norm=2.0)
  state, m = update_gate(init_gate_state(cfg), jnp.array([[1.0, 5.0, 1.0, 5.0]]), None, cfg)
  np.testing.assert_allclose(m["gate_info"], 1.0, rtol=1e-6)
  np.testing.assert_allclose(state.lam, 0.8 * sigmoid(10.0), rtol=1e-6)


def test_invalid_items_are_excluded():
  cfg = GateConfig(mode="dynamic_no_ema")
  valid = jnp.array([[1, 1, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]], bool)
  r = REWARDS.at[0, 3].set(100.0).at[1].set(100.0)
  state, m = update_gate(init_gate_state(cfg), r, valid, cfg)
  # Prompt A over [1, 5, 3]: var 8/3, max 5; prompt B has no valid item and does not count.
  raw_a = 0.8 * sigmoid(10.0) * (8.0 / 3 / 4)
  np.testing.assert_allclose(state.lam, np.mean([raw_a, RAW[2]]), rtol=1e-6)
  np.testing.assert_allclose(m["reward_mean"], 19.0 / 7, rtol=1e-6)
  np.testing.assert_allclose(m["gate_valid_prompts"], 2.0)


def test_no_valid_rewards_keeps_previous_lambda():
  cfg = GateConfig()
  state = init_gate_state(cfg)._replace(lam=jnp.float32(0.3), initialized=jnp.asarray(True))
  new, _ = update_gate(state, REWARDS, jnp.zeros(REWARDS.shape, bool), cfg)
  np.testing.assert_allclose(new.lam, 0.3)
  first, _ = update_gate(init_gate_state(cfg), REWARDS, jnp.zeros(REWARDS.shape, bool), cfg)
  assert not bool(first.initialized)


def test_dynamic_no_ema_ignores_previous_lambda():
  cfg = GateConfig(mode="dynamic_no_ema")
  state = init_gate_state(cfg)._replace(lam=jnp.float32(0.7), initialized=jnp.asarray(True))
  state, _ = update_gate(state, REWARDS, None, cfg)
  np.testing.assert_allclose(state.lam, RAW.mean(), rtol=1e-6)


@pytest.mark.parametrize("mode,want", [("fixed", 0.3), ("sft_only", 0.0), ("rl_only", 1.0)])
def test_static_modes(mode, want):
  cfg = GateConfig(mode=mode, fixed_lambda=0.3)
  state = init_gate_state(cfg)
  np.testing.assert_allclose(state.lam, want)
  state, m = update_gate(state, REWARDS, None, cfg)
  np.testing.assert_allclose(state.lam, want)
  np.testing.assert_allclose(m["lambda_raw"], RAW.mean(), rtol=1e-6)  # statistics still logged


def test_hard_gates():
  cfg = GateConfig(mode="dynamic_no_ema", hard_gates=True)
  # A: max 5 > 3, var > 0 -> 0.8; B: var 0 -> 0; C: max 2.5 not > 3 -> 0; D: max exactly 3 -> 0.
  r = jnp.array([[1.0, 5.0, 3.0, 3.0], [4.0, 4.0, 4.0, 4.0], [1.0, 2.5, 2.0, 1.0], [1.0, 3.0, 2.0, 2.0]])
  state, m = update_gate(init_gate_state(cfg), r, None, cfg)
  np.testing.assert_allclose(state.lam, 0.8 / 4, rtol=1e-6)
  np.testing.assert_allclose(m["gate_info"], 0.75)
  np.testing.assert_allclose(m["gate_direction"], 0.5)
  # Equal rewards whose float32 mean rounds (7 x 4.995): no spread, so the hard information gate stays shut.
  _, m = update_gate(init_gate_state(cfg), jnp.full((1, 7), 4.995), None, cfg)
  assert float(m["gate_info"]) == 0.0 and float(m["reward_var"]) == 0.0


def test_bad_config_and_shapes():
  with pytest.raises(ValueError, match="mode"):
    GateConfig(mode="ema")
  with pytest.raises(ValueError, match="rewards"):
    update_gate(init_gate_state(GateConfig()), jnp.zeros(4), None, GateConfig())
