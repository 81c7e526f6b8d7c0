"""MCTP-accelerated decoding against the upstream VITA-Audio generations of the tiny fixture
(tests/fixtures/vita_audio_mtp/README.md, "MCTP generation fixture"): token for token, the head of every
step, and each chosen token's log-probability under the producing head within the fixture tolerance."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import FIXTURES
from wavalign_jax.conversion import config_from_hf, hf_to_params
from wavalign_jax.batches import SamplerPrompts
from wavalign_jax.rollout import mctp, sampler
from wavalign_jax.rollout.decode import SamplingConfig, StreamSampling

pytestmark = pytest.mark.usefixtures("highest_precision")
MODES = ("main", "turbo", "mixed", "boost", "balance", "overflow")
TOL = 1e-4   # fixture tolerance on logits; log-softmax differences are bounded by twice that


@pytest.fixture(scope="module")
def fixture():
  folder = FIXTURES / "vita_audio_mtp"
  cfg = config_from_hf(json.loads((folder / "config.json").read_text()))
  params = hf_to_params(load_file(str(folder / "model.safetensors")), cfg)
  return cfg, params, dict(np.load(folder / "generate_mtp.npz"))


def _greedy(n, group_size=1, schedule=(1, 0)):
  return SamplingConfig(max_new_tokens=n, group_size=group_size, sampling=StreamSampling(0.0, 1.0, 0),
                        decode="mctp", mctp_schedule=tuple(schedule))


def _prompts(gen, which):
  rows = [gen[f"prompt_{i}"] for i in which]
  Lp = max(len(r) for r in rows)
  inputs = np.zeros((len(rows), Lp), np.int32)
  valid = np.zeros((len(rows), Lp), bool)
  for b, r in enumerate(rows):
    inputs[b, Lp - len(r):], valid[b, Lp - len(r):] = r, True
  return SamplerPrompts(inputs={"tokens": inputs}, valid=valid)


def test_schedule_expansion_and_plan_match_the_fixture(fixture):
  cfg, _, gen = fixture
  n = int(gen["max_new_tokens"])
  for mode in MODES:
    schedule = gen[f"mode_{mode}_schedule"].tolist()
    assert mctp.expand(schedule, n) == str(gen[f"mode_{mode}_steps"])
    for i in (0, 1):
      steps = mctp.plan(schedule, cfg.num_mtp_modules, len(gen[f"prompt_{i}"]), n)
      assert [s.head for s in steps] == gen[f"mode_{mode}_head_{i}"].tolist(), mode
      assert [s.rows for s in steps] == gen[f"mode_{mode}_rows_{i}"].tolist(), mode


@pytest.mark.parametrize("mode", MODES)
def test_mctp_generation_matches_upstream(fixture, mode):
  """Both prompts in one left-padded batch (lengths 12 and 32): padding must not change a token. Two greedy rows
  per prompt, which share the prompt's main cache and the modules' prompt anchors: each must be upstream's."""
  cfg, params, gen = fixture
  n, G = int(gen["max_new_tokens"]), 2
  r = jax.device_get(mctp.sample_mctp(params, cfg, _prompts(gen, (0, 1)), jax.random.key(0),
                                      _greedy(n, G, gen[f"mode_{mode}_schedule"].tolist())))
  for i in (0, 1):
    want = gen[f"mode_{mode}_tokens_{i}"]
    ref = np.asarray(jax.nn.log_softmax(jnp.asarray(gen[f"mode_{mode}_logits_{i}"]), axis=-1))[np.arange(n), want]
    for row in (i * G, i * G + 1):
      np.testing.assert_array_equal(r.tokens["tokens"][row], want, err_msg=f"{mode} prompt {i} row {row}")
      np.testing.assert_array_equal(r.head[row], gen[f"mode_{mode}_head_{i}"])
      np.testing.assert_allclose(r.logp["tokens"][row], ref, atol=2 * TOL, rtol=0)
  assert int(r.lengths.min()) == n and r.truncated.all()


def test_main_schedule_equals_the_main_only_sampler(fixture):
  """[1, 0] runs the main model every step: the same rollouts as `sampler.sample` (sampled, with the same RNG)."""
  cfg, params, gen = fixture
  sc = SamplingConfig(max_new_tokens=20, group_size=3, sampling=StreamSampling(1.0, 0.9, 0))
  prompts = _prompts(gen, (0, 1))
  a = jax.device_get(mctp.sample_mctp(params, cfg, prompts, jax.random.key(5),
                                      dataclasses.replace(sc, decode="mctp", mctp_schedule=(1, 0))))
  b = jax.device_get(sampler.sample(params, cfg, prompts, jax.random.key(5), sc))
  np.testing.assert_array_equal(a.tokens["tokens"], b.tokens["tokens"])
  np.testing.assert_allclose(a.logp["tokens"], b.logp["tokens"], atol=1e-5)
  assert (a.head == mctp.MAIN).all()


def test_bad_schedules_and_models_are_refused(fixture):
  cfg, params, gen = fixture
  for bad in ([1], [0, 2], [1, 2, 0, 0], [1, -1]):
    with pytest.raises(ValueError, match="MCTP schedule"):
      mctp.expand(bad, 4)
    with pytest.raises(ValueError, match="MCTP schedule"):   # a SamplingConfig never holds one
      _greedy(4, schedule=bad)
  with pytest.raises(ValueError, match="MCTP modules"):
    mctp.sample_mctp(params, cfg.replace(num_mtp_modules=0), _prompts(gen, (0,)), jax.random.key(0),
                     _greedy(4, schedule=(1, 2)))
