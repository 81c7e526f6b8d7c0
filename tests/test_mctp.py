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
from test_sampler import RATIOS, TIV, _init, _parse_interleaved, _replay_forced
from test_sampler import _prompts as _sampler_prompts
from wavalign_jax import models, rollout
from wavalign_jax.conversion import config_from_hf, hf_to_params
from wavalign_jax.batches import SamplerPrompts
from wavalign_jax.rollout import constraints, mctp, sampler
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


def _heads(schedule, num_modules, n):
  """The head of each of the n steps (`mctp.plan`'s heads do not depend on the prompt length)."""
  return np.asarray([s.head for s in mctp.plan(schedule, num_modules, 1, n)])


# "Mm" once, then "Mmmmm" repeating: module 0 in the unrolled prefix, both modules in the while_loop, and an 'm' past
# the last module (the main model, restarting the count).
SCHEDULE = (1, 1, 1, 4)


def test_sampled_groups_equal_each_row_decoded_alone(fixture):
  """G = 3 sampled rows per prompt, MCTP modules running, equal the same sampler on each prompt repeated 3 times with
  G = 1 (each row then has its own prompt cache and prompt anchors; nothing is shared). `decode.emit` draws row r's
  token i from `jax.random.uniform(split(fold_in(rng, i))[0], (B,))[r]`: with the same key and the same B = 6 rows in
  the same order (p0 p0 p0 p1 p1 p1), both runs draw the same numbers, so every token must agree. Greedy rows of one
  prompt are identical, so only sampled rows can show a row reading another row's state within its group."""
  cfg, params, gen = fixture
  n, G = 20, 3
  sc = SamplingConfig(max_new_tokens=n, group_size=G, sampling=StreamSampling(1.0, 0.9, 0), decode="mctp",
                      mctp_schedule=SCHEDULE)
  prompts = _prompts(gen, (0, 1))                           # lengths 12 and 32: one is left-padded
  alone = SamplerPrompts(inputs={"tokens": np.repeat(prompts.inputs["tokens"], G, 0)},
                         valid=np.repeat(prompts.valid, G, 0))
  a = jax.device_get(mctp.sample_mctp(params, cfg, prompts, jax.random.key(11), sc))
  b = jax.device_get(mctp.sample_mctp(params, cfg, alone, jax.random.key(11), dataclasses.replace(sc, group_size=1)))
  toks = a.tokens["tokens"]
  # Catches a row of a group reading a sibling's (or its prompt's first row's) state: main or module caches, hidden
  # states handed between heads, completion anchors, positions or the sequence buffer kept per prompt, not per row.
  np.testing.assert_array_equal(toks, b.tokens["tokens"])
  np.testing.assert_allclose(a.logp["tokens"], b.logp["tokens"], atol=1e-5)
  # Not vacuous: the modules made tokens (a schedule that silently ran only the main model would pass the equality)
  # and the rows of each group differ (identical rows would hide a row reading its sibling's state).
  want_heads = _heads(SCHEDULE, cfg.num_mtp_modules, n)
  assert {0, 1} <= set(want_heads.tolist())
  np.testing.assert_array_equal(a.head, np.broadcast_to(want_heads, a.head.shape))   # catches a wrong head record
  np.testing.assert_array_equal(b.head, a.head)
  for g in (0, 1):
    assert len({tuple(toks[r]) for r in range(G * g, G * g + G)}) == G, f"group {g}: rows not all distinct"
    # ... and they already differ at a token some MCTP module made
    rows = toks[G * g:G * g + G][:, want_heads >= 0]
    assert (rows != rows[:1]).any()
  assert a.truncated.all() and (a.lengths == n).all()       # free decoding: no stop token


@pytest.fixture(scope="module")
def tiny_vita():
  """test_sampler's tiny interleaved model (2 MCTP modules, random weights) and its two prompts (lengths 5, 3)."""
  cfg = models.tiny_config("interleaved")
  return cfg, _init(cfg, 0), _sampler_prompts(cfg.streams, (5, 3), seed=0)


def test_constrained_mctp_rollouts_stop_force_and_match_the_main_sampler(tiny_vita):
  """MCTP decoding (modules running) under the interleaved constraint, sampled, with rows that stop before
  max_new_tokens and one that is cut: stops, the padding after them, forced tokens, types and well-formedness as the
  main-head sampler promises, and each row equal to itself decoded alone (G = 1, as in the test above) though its
  siblings stop at other steps. The [1, 0] schedule (main model only) gives exactly `sampler.sample`'s rollouts,
  there with every row stopping, so both decoders' while_loops exit early."""
  cfg, params, prompts = tiny_vita
  con = constraints.InterleavedConstraint(TIV, RATIOS)
  n, G = 16, 3
  sc = SamplingConfig(max_new_tokens=n, group_size=G, sampling=StreamSampling(1.0, 0.9, 0), constraint=con,
                      decode="mctp", mctp_schedule=SCHEDULE)
  r = jax.device_get(sampler.sample(params, cfg, prompts, jax.random.key(6), sc))
  toks, types, forced, lengths = r.tokens["tokens"], r.types["tokens"], r.forced["tokens"], r.lengths
  done = ~r.truncated
  for b in range(2 * G):
    k = int(lengths[b])
    # Catches a stop that does not end the row, a truncation flag out of step with the stop, or the while_loop
    # exiting while some row still runs (a row cut short of n without its stop token).
    assert bool(done[b]) == (toks[b, k - 1] == TIV.eos) and (k == n or done[b]), (b, k)
    assert r.mask[b].sum() == k and r.mask[b, :k].all()
    # Catches MCTP tokens escaping the constraint (its state not advanced by, or its mask not applied to, a module's
    # token): the independent grammar must accept the row and give the recorded types.
    np.testing.assert_array_equal(types[b, :k], _parse_interleaved(toks[b, :k].tolist(), RATIOS, TIV))
    # Catches a stopped row that a later step still writes to (tokens, types, log-probs or forced flags).
    assert (toks[b, k:] == TIV.pad).all() and (types[b, k:] == 0).all() and (r.logp["tokens"][b, k:] == 0).all()
    assert not forced[b, k:].any()
  assert ((lengths < n) & done).any() and r.truncated.any()   # rows stop before max_new_tokens, one is cut
  # Catches `forced` not marking exactly the positions where the constraint allowed one id (replayed on the tokens).
  np.testing.assert_array_equal(forced, _replay_forced(con, r)["tokens"])
  assert forced.any() and np.isin(toks[forced], [TIV.begin_of_audio, TIV.eos]).all()
  assert forced[done, lengths[done] - 1].all()              # each stop token was forced (after the final EOA)
  # Catches a finished row that breaks the layout the data pipeline writes (chunk sizes, BOA / EOA, <|im_end|>).
  assert rollout.well_formed(r, con)[done].all()
  # Not vacuous: modules made tokens inside the completions, forced ones too; rows of a group differ.
  made = (r.head >= 0) & r.mask
  assert made.any() and (made & forced).any()
  np.testing.assert_array_equal(r.head, np.broadcast_to(_heads(SCHEDULE, cfg.num_mtp_modules, n), r.head.shape))
  assert len({tuple(toks[i]) for i in range(G)}) == G and len({tuple(toks[i]) for i in range(G, 2 * G)}) == G
  # Catches a row's stop flag, constraint state or caches read from a sibling (rows of a group stop at different
  # steps here): the same rows, each with its own prompt (G = 1, same key and row order, so the same draws).
  alone = SamplerPrompts(inputs={"tokens": np.repeat(prompts.inputs["tokens"], G, 0)},
                         valid=np.repeat(prompts.valid, G, 0))
  one = jax.device_get(sampler.sample(params, cfg, alone, jax.random.key(6), dataclasses.replace(sc, group_size=1)))
  for f in ("lengths", "truncated"):
    np.testing.assert_array_equal(getattr(one, f), getattr(r, f), err_msg=f)
  for f in ("tokens", "types", "forced"):
    np.testing.assert_array_equal(getattr(one, f)["tokens"], getattr(r, f)["tokens"], err_msg=f)
  np.testing.assert_allclose(one.logp["tokens"], r.logp["tokens"], atol=1e-5)

  # [1, 0]: the main-only sampler's rollouts, token for token, with the same stops, forced tokens and types (catches
  # the MCTP loop's stop / forced / type bookkeeping or its early exit diverging from the main sampler's). Long enough
  # that every row stops: both loops exit on `done` before max_new_tokens.
  n = 24
  main = dataclasses.replace(sc, max_new_tokens=n, decode="main", mctp_schedule=())
  a = jax.device_get(sampler.sample(params, cfg, prompts, jax.random.key(4),
                                    dataclasses.replace(main, decode="mctp", mctp_schedule=(1, 0))))
  b = jax.device_get(sampler.sample(params, cfg, prompts, jax.random.key(4), main))
  assert (~b.truncated).all() and int(b.lengths.max()) < n
  for f in ("lengths", "truncated", "mask"):
    np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
  for f in ("tokens", "types", "forced"):
    np.testing.assert_array_equal(getattr(a, f)["tokens"], getattr(b, f)["tokens"], err_msg=f)
  np.testing.assert_allclose(a.logp["tokens"], b.logp["tokens"], atol=1e-5)
  assert (a.head == mctp.MAIN).all() and len({tuple(a.tokens["tokens"][i]) for i in range(G)}) > 1
