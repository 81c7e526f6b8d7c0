"""Constrained decoding state machines and the rollout sampler.

Constraint machines are checked by random walks (uniformly random allowed tokens) parsed by an
independent pure-Python grammar, and against the data pipeline's layouts (wavalign_jax.data.layouts).
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wavalign_jax import models, rollout
from wavalign_jax.config_lib import base_config
from wavalign_jax.batches import RLBatch, SeqBatch
from wavalign_jax.data import layouts
from wavalign_jax.rewards.base import RewardResult
from wavalign_jax.rollout import batch as rollout_batch
from wavalign_jax.rollout import constraints, decode
from wavalign_jax.tokens import InterleavedVocab, ParallelVocab, TokenType

IV = InterleavedVocab(vocab_size=48, tokenizer_size=20, special_ids=(), first_audio_code=28, num_audio_codes=16,
                      begin_of_audio=20, end_of_audio=21, eos=22, pad=23, bos=24, newline=25, im_start=26)
PV = ParallelVocab(vocab_size=48, tokenizer_size=20, special_ids=(), audio_offset=30, num_audio_codes=16, text_blank=20,
                   text_eos=21, media_begin=22, media_end=23, msg_end=24, pad=25, user_msg_start=26,
                   assistant_msg_start=27)
RATIOS = (1, 4, 3, 5)   # chunks: 1 text + 2 codes, then 3 text + 3 codes (repeats)
T, N, F = int(TokenType.TEXT), int(TokenType.SPEECH), int(TokenType.BOUNDARY)


def _random_walk(con, rng, batch, steps):
  """Emit uniformly random allowed tokens; returns tokens/types per stream and stop flags [B, steps]."""
  def body(carry, key):
    state, done = carry
    allowed = con.allowed(state)
    keys = jax.random.split(key, len(allowed))
    toks = {s: jax.random.categorical(k, jnp.where(m, 0.0, -jnp.inf)) for (s, m), k in zip(allowed.items(), keys)}
    ok = {s: jnp.take_along_axis(allowed[s], toks[s][:, None], 1)[:, 0] for s in toks}
    state, types, stop = con.update(state, toks)
    return (state, done | stop), (toks, types, stop, done, ok)
  walk = jax.jit(lambda r: jax.lax.scan(body, (con.init(batch), jnp.zeros((batch,), bool)),
                                        jax.random.split(r, steps))[1])
  out = walk(rng)
  return jax.tree.map(lambda a: np.asarray(jnp.moveaxis(a, 0, 1)), out)


def _parse_interleaved(seq, ratios, v):
  """Independent grammar check of one response; returns the expected types. Raises on a violation."""
  pairs = [(ratios[i], ratios[i + 1]) for i in range(0, len(ratios), 2)]
  types, i, k = [], 0, 0
  def at(j):
    return seq[j] if j < len(seq) else None
  while i < len(seq):
    t_max, a_max = pairs[min(k, len(pairs) - 1)]
    if k > 0 and seq[i] == v.eos:
      assert i == len(seq) - 1, f"tokens after <|im_end|> at {i}"
      return types + [T]
    t = 0
    while at(i) is not None and v.is_text(at(i)):
      t, i = t + 1, i + 1
      types.append(T)
    assert t <= t_max, f"chunk {k}: {t} text ids > {t_max}"
    if at(i) is None:
      return types
    assert seq[i] == v.begin_of_audio, f"chunk {k}: expected BOA at {i}, got {seq[i]}"
    types.append(F)
    i += 1
    c = 0
    while at(i) is not None and v.first_audio_code <= at(i) < v.first_audio_code + v.num_audio_codes:
      c, i = c + 1, i + 1
      types.append(N)
    if at(i) is None:
      return types
    assert seq[i] == v.end_of_audio, f"chunk {k}: expected EOA at {i}, got {seq[i]}"
    assert c >= 1, f"chunk {k}: no audio codes"
    final = t < t_max or c > a_max - 2
    assert final or c == a_max - 2, f"chunk {k}: non-final chunk with {c} codes != {a_max - 2}"
    types.append(F)
    i += 1
    if final:
      if at(i) is not None:
        assert seq[i] == v.eos and i == len(seq) - 1, f"final chunk {k} not followed by <|im_end|> alone"
        types.append(T)
      return types
    k += 1
  return types


def _check_rows(toks, types, stops, dones, oks, check_row):
  for b in range(toks.shape[0]):
    assert oks[b][~dones[b]].all()
    n = int(np.argmax(stops[b])) + 1 if stops[b].any() else len(stops[b])
    expected = check_row(toks[b, :n].tolist())
    np.testing.assert_array_equal(types[b, :n], expected)


def test_interleaved_random_walk_follows_schedule():
  con = constraints.InterleavedConstraint(IV, RATIOS)
  toks, types, stops, dones, oks = _random_walk(con, jax.random.key(0), 64, 40)
  toks, types = toks["tokens"], types["tokens"]
  _check_rows(toks, types, stops, dones, oks["tokens"], lambda s: _parse_interleaved(s, RATIOS, IV))
  ends = [toks[b, int(np.argmax(stops[b]))] for b in range(64) if stops[b].any()]
  assert len(ends) > 10 and all(e == IV.eos for e in ends)     # many rows finish, always on <|im_end|>
  chunks = [(toks[b, :int(np.argmax(stops[b]))] == IV.begin_of_audio).sum() for b in range(64) if stops[b].any()]
  assert min(chunks) == 1 and max(chunks) >= 2             # the walk covers final and non-final chunks


def test_interleaved_grammar_rejects_bad_sequences():
  bad = [
      [1, 28, IV.end_of_audio],                         # chunk text not closed by BOA
      [1, IV.begin_of_audio, 28, 29, IV.end_of_audio, 5, 6, 7, 8],   # 4 text ids > T2 = 3
      [1, IV.begin_of_audio, 28, IV.end_of_audio, 2],   # 1 code != 2 in a non-final chunk
  ]
  for seq in bad:
    with pytest.raises(AssertionError):
      _parse_interleaved(seq, RATIOS, IV)
    assert not _machine_accepts(constraints.InterleavedConstraint(IV, RATIOS), {"tokens": seq})[0]


@functools.lru_cache(maxsize=None)
def _jitted(con):
  return jax.jit(con.allowed), jax.jit(con.update)


def _machine_accepts(con, streams):
  """Step the machine along given token streams: (every token allowed, types, stop flags)."""
  allowed_fn, update_fn = _jitted(con)
  state = con.init(1)
  ok, types, stops = True, [], []
  for j in range(len(next(iter(streams.values())))):
    allowed = allowed_fn(state)
    tok = {s: np.asarray([streams[s][j]], np.int32) for s in streams}
    ok &= all(bool(allowed[s][0, streams[s][j]]) for s in streams)
    state, ty, stop = update_fn(state, tok)
    types.append({s: int(ty[s][0]) for s in ty})
    stops.append(bool(stop[0]))
  return ok, types, stops


@pytest.mark.parametrize("n_text,n_codes", [(1, 2), (1, 9), (4, 5), (4, 9), (6, 30), (9, 12), (7, 8)])
def test_interleaved_accepts_data_layouts(n_text, n_codes):
  """Every response the data pipeline lays out (final chunk text <= T) is a path of the machine."""
  ex = layouts.interleaved_response([i % 20 for i in range(n_text)], [c % 16 for c in range(n_codes)], IV, RATIOS)
  seq = ex.tokens["tokens"][:-1].tolist()        # drop the newline after <|im_end|>
  ok, types, stops = _machine_accepts(constraints.InterleavedConstraint(IV, RATIOS), {"tokens": seq})
  assert ok
  np.testing.assert_array_equal([t["tokens"] for t in types], ex.types["tokens"][:-1])
  assert stops == [False] * (len(seq) - 1) + [True]


def test_parallel_random_walk_follows_rules():
  delay = 3
  con = constraints.ParallelConstraint(PV, delay)
  toks, types, stops, dones, oks = _random_walk(con, jax.random.key(1), 32, 24)
  for b in range(32):
    assert oks["text"][b][~dones[b]].all() and oks["audio"][b][~dones[b]].all()
    n = int(np.argmax(stops[b])) + 1 if stops[b].any() else 24
    a, t = toks["audio"][b, :n], toks["text"][b, :n]
    assert (a[:delay] == PV.text_blank).all()
    assert PV.is_audio(a[delay:n - 1]).all()
    if stops[b].any():
      assert a[n - 1] in (PV.msg_end, PV.media_end) and n > delay
    eos = np.flatnonzero(t == PV.text_eos)
    stop_text = eos[0] if len(eos) else n
    assert PV.is_text(t[:stop_text]).all() and (t[stop_text + 1:] == PV.text_blank).all()
    assert (types["text"][b, :n] == T).all() and (types["audio"][b, :n] == N).all()
  assert stops.any(axis=1).sum() > 10


def test_parallel_accepts_data_layout():
  ex = layouts.parallel_response([3, 4, 5], list(range(6)), PV, delay=4)
  n = int(np.flatnonzero(ex.tokens["audio"] == PV.msg_end)[0]) + 1
  ok, types, stops = _machine_accepts(constraints.ParallelConstraint(PV, 4),
                                      {s: ex.tokens[s][:n].tolist() for s in ("text", "audio")})
  assert ok and stops == [False] * (n - 1) + [True]
  assert [t["text"] for t in types] == ex.types["text"][:n].tolist()
  assert [t["audio"] for t in types] == ex.types["audio"][:n].tolist()


def test_bad_ratios_raise():
  with pytest.raises(ValueError, match="ratios"):
    constraints.InterleavedConstraint(IV, (1, 4, 3))
  with pytest.raises(ValueError, match="A >= 3"):
    constraints.InterleavedConstraint(IV, (1, 2))


# ----------------------------------------------------------------------------- sampler on tiny models

# Constraint vocabularies inside the tiny models' 96 ids, with few text ids and codes so that
# random rollouts end often; ids the constraint never allows stay unused.
TIV = InterleavedVocab(vocab_size=96, tokenizer_size=4, special_ids=(), first_audio_code=48, num_audio_codes=4,
                       begin_of_audio=40,
                       end_of_audio=41, eos=42, pad=43, bos=44, newline=45, im_start=46)
TPV = ParallelVocab(vocab_size=96, tokenizer_size=4, special_ids=(), audio_offset=48, num_audio_codes=4, text_blank=40,
                    text_eos=41, media_begin=42, media_end=43, msg_end=44, pad=45, user_msg_start=46,
                    assistant_msg_start=47)
GREEDY = rollout.StreamSampling(0.0, 1.0, 0)


def _prompts(streams, lengths, seed, feature_dim=0):
  rs = np.random.RandomState(seed)
  exs = [layouts.Example({s: rs.randint(0, 96, n).astype(np.int32) for s in streams},
                         {s: np.zeros(n, np.int32) for s in streams}, n) for n in lengths]
  prompts = rollout.left_pad_prompts(exs, pad_id=0)
  if feature_dim:
    prompts = prompts.replace(features=rs.randn(*prompts.valid.shape, feature_dim).astype(np.float32),
                              feature_mask=prompts.valid & (rs.rand(*prompts.valid.shape) < 0.5))
  return prompts


def _greedy_reference(params, cfg, prompts, n, con, pad):
  """Greedy decoding by full uncached forwards over right-padded sequences (no KV cache)."""
  valid = prompts.valid
  P, Lp = valid.shape
  L = Lp + n
  lens = valid.sum(1)
  seqs = {s: np.full((P, L), pad, np.int32) for s in cfg.streams}
  feats, fmask = None, None
  for b in range(P):
    for s in cfg.streams:
      seqs[s][b, :lens[b]] = prompts.inputs[s][b][valid[b]]
  if prompts.features is not None:
    feats = np.zeros((P, L, prompts.features.shape[-1]), np.float32)
    fmask = np.zeros((P, L), bool)
    for b in range(P):
      feats[b, :lens[b]], fmask[b, :lens[b]] = prompts.features[b][valid[b]], prompts.feature_mask[b][valid[b]]

  @jax.jit
  def fwd(ids, seg):
    batch = {"inputs": ids, "segment_ids": seg, "positions": jnp.where(seg > 0, jnp.arange(L)[None], 0)}
    if feats is not None:
      batch.update(features=feats, feature_mask=fmask)
    return models.logits(params, cfg, batch)

  state, done = (con.init(P) if con else None), np.zeros(P, bool)
  allowed_fn, update_fn = _jitted(con) if con else (None, None)
  cur = lens.copy()
  logps = {s: np.zeros((P, n), np.float32) for s in cfg.streams}
  for i in range(n):
    lg = fwd(seqs, (np.arange(L)[None] < cur[:, None]).astype(np.int32))
    allowed = allowed_fn(state) if con else None
    tok = {}
    for s in cfg.streams:
      last = np.asarray(lg[s])[np.arange(P), cur - 1]
      masked = np.where(np.asarray(allowed[s]), last, -np.inf) if con else last
      tok[s] = masked.argmax(-1).astype(np.int32)
      logps[s][:, i] = np.asarray(jax.nn.log_softmax(last))[np.arange(P), tok[s]]
    for b in np.flatnonzero(~done):
      for s in cfg.streams:
        seqs[s][b, cur[b]] = tok[s][b]
      cur[b] += 1
    if con:
      state, _, stop = update_fn(state, tok)
      done |= np.asarray(stop)
  return seqs, logps, cur - lens, lens


def _assert_matches_reference(r, ref, G, streams):
  seqs, logps, ref_len, lens = ref
  for row in range(r.lengths.shape[0]):
    b, n = row // G, int(ref_len[row // G])
    assert int(r.lengths[row]) == n and int(np.asarray(r.mask[row]).sum()) == n
    for s in streams:
      np.testing.assert_array_equal(np.asarray(r.tokens[s][row, :n]), seqs[s][b, lens[b]:lens[b] + n])
      np.testing.assert_allclose(np.asarray(r.logp[s][row, :n]), logps[s][b, :n], atol=2e-5)


def _init(cfg, seed):
  """Random N(0, 0.2) parameters of the model's shapes (no Flax init compile: keeps the test fast)."""
  shapes = jax.eval_shape(models.init_params, cfg, jax.random.key(0))
  rs = np.random.RandomState(seed)
  return jax.tree.map(lambda x: jnp.asarray(rs.normal(0, 0.2, x.shape), x.dtype), shapes)


@pytest.fixture(scope="module")
def vita():
  cfg = models.tiny_config("interleaved")
  return cfg, _init(cfg, 0), _prompts(cfg.streams, (5, 3), seed=0)


@pytest.fixture(scope="module")
def kimi():
  cfg = models.tiny_config("parallel")
  return cfg, _init(cfg, 1), _prompts(cfg.streams, (4, 6), 1, cfg.adaptor_input_dim)


def test_interleaved_greedy_matches_uncached_forward(vita):
  cfg, params, prompts = vita
  con = constraints.InterleavedConstraint(TIV, RATIOS)
  sc = rollout.SamplingConfig(max_new_tokens=10, group_size=2, sampling=GREEDY, constraint=con)
  r = rollout.sample(params, cfg, prompts, jax.random.key(3), sc)
  _assert_matches_reference(r, _greedy_reference(params, cfg, prompts, 10, con, TIV.pad), 2, cfg.streams)


def test_parallel_greedy_unconstrained_matches_uncached_forward(kimi):
  """No constraint, continuous features in the prompt: the cached decode equals full forwards."""
  cfg, params, prompts = kimi
  sc = rollout.SamplingConfig(max_new_tokens=6, group_size=2, sampling=GREEDY)
  r = rollout.sample(params, cfg, prompts, jax.random.key(0), sc)
  _assert_matches_reference(r, _greedy_reference(params, cfg, prompts, 6, None, 0), 2, cfg.streams)
  assert np.asarray(r.truncated).all()
  assert (np.asarray(r.types["text"]) == T).all() and (np.asarray(r.types["audio"]) == N).all()



def test_cache_windows_grow_to_max_new_tokens():
  assert rollout.sampler.windows(128, 4) == [32, 64, 96, 128]
  assert rollout.sampler.windows(20, 3) == [8, 16, 20]
  assert rollout.sampler.windows(10, 4) == [8, 10]       # rounded up to multiples of 8, duplicates merged
  assert rollout.sampler.windows(5, 4) == [5]
  assert rollout.sampler.windows(40, 1) == [40]


@pytest.mark.parametrize("arch", ["vita", "kimi"])
def test_shared_prompt_and_grown_cache_match_uncached_forward(arch, request):
  """Three rows per prompt read one copy of its cache; the completion cache grows twice (8 -> 16 -> 20 slots)
  while decoding: greedy tokens and log-probs equal full forwards, rows of a prompt agree."""
  cfg, params, prompts = request.getfixturevalue(arch)
  con = constraints.InterleavedConstraint(TIV, RATIOS) if arch == "vita" else None
  sc = rollout.SamplingConfig(max_new_tokens=20, group_size=3, sampling=GREEDY, constraint=con, cache_windows=3)
  r = rollout.sample(params, cfg, prompts, jax.random.key(0), sc)
  _assert_matches_reference(r, _greedy_reference(params, cfg, prompts, 20, con, TIV.pad if con else 0), 3,
                            cfg.streams)
  assert int(np.asarray(r.lengths).max()) > 16   # the last window was used


def test_sampling_on_a_mesh_matches_one_device(vita):
  """Prompts and caches split over the data axes, heads over tensor: the shared prompt prefix and the grown cache
  give the rollouts of one device (8 fake devices; FSDP-split weights are the next test's)."""
  shape = (2, 1, 4)
  from wavalign_jax import sharding
  from wavalign_jax.rollout import hosts
  cfg, params, prompts = vita
  sc = rollout.SamplingConfig(max_new_tokens=20, group_size=2, sampling=GREEDY,
                              constraint=constraints.InterleavedConstraint(TIV, RATIOS), cache_windows=3)
  want = jax.device_get(rollout.sample(params, cfg, prompts, jax.random.key(2), sc))
  got = hosts.sample_rows(params, cfg, prompts, jax.random.key(2), sc, sharding.make_mesh(shape))
  np.testing.assert_array_equal(got.tokens["tokens"], want.tokens["tokens"])
  np.testing.assert_array_equal(got.lengths, want.lengths)
  np.testing.assert_allclose(got.logp["tokens"], want.logp["tokens"], atol=2e-5)


def test_fsdp_split_weights_and_weights_gathered_once_per_call_sample_as_one_device(vita):
  """FSDP-split weights (the training layout; layers stay scanned) on a (2, 2, 2) mesh, all-gathered by the loop at
  every token or, with rollout.gather_weights, once per call, give the rollouts of one device; gathered, no weight
  is split over fsdp but the output heads along the vocabulary."""
  from wavalign_jax import sharding
  from wavalign_jax.rollout import hosts
  cfg, params, prompts = vita
  mesh = sharding.make_mesh((2, 2, 2))
  split = jax.device_put(params, models.param_shardings(cfg, mesh))
  sc = rollout.SamplingConfig(max_new_tokens=20, group_size=2, sampling=GREEDY,
                              constraint=constraints.InterleavedConstraint(TIV, RATIOS), cache_windows=3)
  want = jax.device_get(rollout.sample(params, cfg, prompts, jax.random.key(2), sc))
  for gather in (False, True):
    got = hosts.sample_rows(split, cfg, prompts, jax.random.key(2), dataclasses.replace(sc, gather_weights=gather),
                            mesh)
    np.testing.assert_array_equal(got.tokens["tokens"], want.tokens["tokens"])
    np.testing.assert_array_equal(got.lengths, want.lengths)
    np.testing.assert_allclose(got.logp["tokens"], want.logp["tokens"], atol=2e-5)

  uses_fsdp = lambda x: any(e == "fsdp" or (isinstance(e, tuple) and "fsdp" in e) for e in x.sharding.spec)
  gathered = models.gather_for_decoding(split, cfg, mesh)
  axes = jax.tree.leaves(models.param_logical_axes(cfg), is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  assert sum(uses_fsdp(x) for x in jax.tree.leaves(split)) > len(axes) // 2   # the weights really were split
  for names, x in zip(axes, jax.tree.leaves(gathered)):
    assert not uses_fsdp(x) or {"vocab", "table_embed"} & set(names), names
  assert any(uses_fsdp(x) for x in jax.tree.leaves(gathered["lm_head"]))   # the head keeps its vocabulary split


def test_shared_prefix_holds_each_prompt_once(vita):
  cfg, params, prompts = vita
  P, Lp = prompts.valid.shape
  _, cache = models.decode(params, cfg, prompts.inputs, np.zeros((P, Lp), np.int32), models.init_cache(cfg, P, Lp),
                           valid=prompts.valid)
  shared = models.extend_cache(models.share_prefix(cache, 4, 8), 24)
  layer = shared["trunk"][0]
  assert layer["prefix_k"].shape == (P, cfg.num_kv_heads, Lp, cfg.head_dim)
  assert layer["k"].shape == (4 * P, cfg.num_kv_heads, 24, cfg.head_dim)
  np.testing.assert_array_equal(np.asarray(layer["prefix_k"]), np.asarray(cache["trunk"][0]["k"]))
  np.testing.assert_array_equal(np.asarray(shared["prefix_valid"]), prompts.valid)
  assert not np.asarray(shared["valid"]).any() and int(shared["index"]) == 0


def test_several_tokens_through_a_shared_prefix_match_an_unshared_cache(vita):
  """The MCTP catch-up reads the shared prefix with T > 1 new tokens at once (layers._attend_prefix): the hidden
  states of T = 1, then T = 3 tokens per row equal those of a cache that holds each row's own copy of its prompt."""
  cfg, params, prompts = vita
  G = 2
  P, Lp = prompts.valid.shape
  positions = np.maximum(np.cumsum(prompts.valid, axis=1) - 1, 0).astype(np.int32)
  prefill = lambda rows, rep: models.decode(params, cfg, {"tokens": np.repeat(prompts.inputs["tokens"], rep, 0)},
                                            np.repeat(positions, rep, 0), models.init_cache(cfg, rows, Lp),
                                            valid=np.repeat(prompts.valid, rep, 0))[1]
  shared = models.share_prefix(prefill(P, 1), G, 8)
  own = models.extend_cache(prefill(P * G, G), Lp + 8)
  rng = np.random.default_rng(0)
  start = positions[:, -1].repeat(G) + 1
  for T in (1, 3):
    tokens = {"tokens": rng.integers(0, cfg.vocab_size, (P * G, T)).astype(np.int32)}
    pos = start[:, None] + np.arange(T)[None]
    h_shared, shared = models.decode_hidden(params, cfg, tokens, pos, shared)
    h_own, own = models.decode_hidden(params, cfg, tokens, pos, own)
    np.testing.assert_allclose(np.asarray(h_shared["tokens"]), np.asarray(h_own["tokens"]), atol=2e-5, rtol=0)
    start = start + T


def _replay_forced(con, r):
  """{stream: bool[B, N]}: positions where the constraint, replayed on the emitted tokens, allowed one id."""
  allowed_fn, update_fn = _jitted(con)
  B, N = r.mask.shape
  state, out = con.init(B), {s: np.zeros((B, N), bool) for s in r.tokens}
  for i in range(N):
    allowed = allowed_fn(state)
    for s in r.tokens:
      out[s][:, i] = (np.asarray(allowed[s]).sum(-1) == 1) & np.asarray(r.mask)[:, i]
    state, _, _ = update_fn(state, {s: np.asarray(t)[:, i] for s, t in r.tokens.items()})
  return out


def _rl_batch_reference(prompts, r, pad, drop_forced=True):
  """The same batch through the data pipeline: layouts.join(prompt, response) -> to_sequence_batch, with
  forced positions typed NONE (no RL gradient) unless `drop_forced` is False; each row then shifted right by its
  prompt's left padding (rl_batch keeps the prompts as sampled, every completion starting at Lp)."""
  G = r.mask.shape[0] // prompts.valid.shape[0]
  streams = tuple(r.tokens)
  exs = []
  for row in range(r.mask.shape[0]):
    b, n = row // G, int(r.lengths[row])
    v = prompts.valid[b]
    p = layouts.Example({s: prompts.inputs[s][b][v] for s in streams}, {s: np.zeros(v.sum(), np.int32)
                                                                              for s in streams}, int(v.sum()))
    types = {s: np.where(np.asarray(r.forced[s][row, :n]) & drop_forced, 0, np.asarray(r.types[s][row, :n]))
             for s in streams}
    resp = layouts.Example({s: np.asarray(r.tokens[s][row, :n]) for s in streams}, types)
    exs.append(layouts.join(p, resp))
  batch = layouts.to_sequence_batch(exs, prompts.valid.shape[1] + r.mask.shape[1], pad)
  shift = np.repeat(prompts.valid.shape[1] - np.asarray(prompts.valid).sum(1), G)
  right = lambda x: np.stack([np.roll(row, k, axis=0) for row, k in zip(x, shift)])
  return jax.tree.map(lambda x: right(x) if np.ndim(x) >= 2 else x, batch)


def _check_rl_batch_and_logp(params, cfg, prompts, r, pad):
  batch = rollout.rl_batch(prompts, r, pad)
  want = _rl_batch_reference(prompts, r, pad)
  for k in ("inputs", "targets", "types"):
    for s in cfg.streams:
      np.testing.assert_array_equal(np.asarray(getattr(batch, k)[s]), getattr(want, k)[s], err_msg=f"{k}/{s}")
  for k in ("positions", "segment_ids"):
    np.testing.assert_array_equal(np.asarray(getattr(batch, k)), getattr(want, k), err_msg=k)
  # sampler log-probs == the model's log-softmax at the sampled tokens (full forward of the RL batch)
  lp = models.target_logprobs(params, cfg, batch)
  completion = _rl_batch_reference(prompts, r, pad, drop_forced=False).types
  for s in cfg.streams:
    m = completion[s] > 0
    assert m.sum() == int(np.asarray(r.lengths).sum())
    np.testing.assert_allclose(np.asarray(lp.logp[s])[m], np.asarray(batch.sampler_logp[s])[m], atol=2e-5)
    np.testing.assert_array_equal(np.asarray(batch.sampler_logp[s])[~m], 0.0)
    # Forced positions: in the completion, out of the RL types.
    assert (np.asarray(batch.types[s])[m] == 0).sum() == int(np.asarray(r.forced[s]).sum())
  return batch


def test_interleaved_rollouts_follow_schedule(vita):
  cfg, params, prompts = vita
  con = constraints.InterleavedConstraint(TIV, RATIOS)
  sc = rollout.SamplingConfig(max_new_tokens=16, group_size=4, sampling=rollout.StreamSampling(1.0, 0.95, 0),
                              constraint=con)
  r = rollout.sample(params, cfg, prompts, jax.random.key(5), sc)
  toks, types = np.asarray(r.tokens["tokens"]), np.asarray(r.types["tokens"])
  contents = rollout.response_contents(r, con)
  for b in range(8):
    n = int(r.lengths[b])
    np.testing.assert_array_equal(types[b, :n], _parse_interleaved(toks[b, :n].tolist(), RATIOS, TIV))
    assert bool(r.truncated[b]) == (toks[b, n - 1] != TIV.eos)
    assert bool(r.truncated[b]) == (n == 16)
    assert (toks[b, n:] == TIV.pad).all() and (types[b, n:] == 0).all()
    text, codes = contents[b]
    assert len(text) == int(((types[b, :n] == T) & TIV.is_text(toks[b, :n])).sum())
    assert codes == (toks[b, :n][types[b, :n] == N] - TIV.first_audio_code).tolist()
  assert 0 < np.asarray(r.truncated).sum() < 8      # some rows finish, some are cut
  # Forced: a BOA after T_k text ids, the <|im_end|> after the final chunk's EOA (one allowed id each).
  forced = np.asarray(r.forced["tokens"])
  np.testing.assert_array_equal(forced, _replay_forced(con, r)["tokens"])
  assert forced.any() and (toks[forced] != TIV.eos).any() and np.isin(toks[forced], [TIV.begin_of_audio, TIV.eos]).all()
  done = ~np.asarray(r.truncated)
  assert forced[done, np.asarray(r.lengths)[done] - 1].all()   # every finished row's <|im_end|> was forced
  assert rollout.well_formed(r, con)[done].all()
  # The logged shape of the rollouts: forced share over the completion tokens, mean length, and under the constraint
  # only cut rows are malformed.
  rewards = np.arange(8, dtype=np.float32).reshape(2, 4)
  m = rollout_batch.rollout_metrics(r, con, rewards, contents,
                                    RewardResult(rewards.ravel(), np.zeros(8, bool), [{}] * 8))
  mask = np.asarray(r.mask)
  assert m["rollout_forced_fraction"] == pytest.approx(forced[mask].mean())
  assert m["rollout_length"] == pytest.approx(mask.sum() / 8)
  assert m["rollout_truncated"] == m["rollout_malformed"] == pytest.approx(np.asarray(r.truncated).mean())
  _check_rl_batch_and_logp(params, cfg, prompts, r, TIV.pad)
  # same key -> same rollouts; another key -> other rollouts
  again = rollout.sample(params, cfg, prompts, jax.random.key(5), sc)
  other = rollout.sample(params, cfg, prompts, jax.random.key(6), sc)
  np.testing.assert_array_equal(np.asarray(again.tokens["tokens"]), toks)
  assert (np.asarray(other.tokens["tokens"]) != toks).any()
  # rows of one group differ (independent samples of the same prompt)
  assert len({tuple(toks[b]) for b in range(4)}) > 1


def test_parallel_rollouts_follow_delay_blank_stop(kimi):
  cfg, params, prompts = kimi
  delay = 2
  con = constraints.ParallelConstraint(TPV, delay)
  # Kimi-Audio's own decoding: audio temperature 0.8 / top-k 10, text greedy
  sc = rollout.SamplingConfig(per_stream=(("audio", rollout.StreamSampling(0.8, 1.0, 10)),
                                          ("text", rollout.StreamSampling(0.0, 1.0, 0))),
                              max_new_tokens=10, group_size=3, constraint=con)
  r = rollout.sample(params, cfg, prompts, jax.random.key(7), sc)
  t, a = np.asarray(r.tokens["text"]), np.asarray(r.tokens["audio"])
  contents = rollout.response_contents(r, con)
  for b in range(6):
    n = int(r.lengths[b])
    assert (a[b, :delay] == TPV.text_blank).all()
    stopped = a[b, n - 1] in (TPV.msg_end, TPV.media_end)
    assert stopped != bool(r.truncated[b])
    assert TPV.is_audio(a[b, delay:n - 1 if stopped else n]).all()
    eos = np.flatnonzero(t[b, :n] == TPV.text_eos)
    end = eos[0] if len(eos) else n
    assert TPV.is_text(t[b, :end]).all() and (t[b, end + 1:n] == TPV.text_blank).all()
    assert (t[b, n:] == TPV.pad).all() and (a[b, n:] == TPV.pad).all()
    text, codes = contents[b]
    assert text == t[b, :end].tolist() and codes == (a[b, delay:n - stopped] - TPV.audio_offset).tolist()
  # text is greedy (kimi upstream), so all rows of a group share it while the text stream runs
  for g in range(2):
    n = int(np.asarray(r.lengths[3 * g:3 * g + 3]).min())
    assert (t[3 * g:3 * g + 3, :n] == t[3 * g, :n]).all()
  assert np.asarray(r.truncated).sum() < 6
  # Forced: the first `delay` audio blanks and every text blank after text_eos; nothing the model chose.
  forced = {s: np.asarray(f) for s, f in r.forced.items()}
  replay = _replay_forced(con, r)
  for s in forced:
    np.testing.assert_array_equal(forced[s], replay[s])
  for b in range(6):
    n = int(r.lengths[b])
    eos = np.flatnonzero(t[b, :n] == TPV.text_eos)
    end = eos[0] if len(eos) else n
    assert forced["audio"][b, :delay].all() and not forced["audio"][b, delay:n].any()
    assert forced["text"][b, end + 1:n].all() and not forced["text"][b, :end + 1].any()
  # Under the constraint the one malformation is a text cut off by the audio's stop (no text_eos); a code in the
  # delay, or text after text_eos, is malformed too (free decoding can write them).
  ok, done = rollout.well_formed(r, con), ~np.asarray(r.truncated)
  has_eos = np.array([(t[b, :int(r.lengths[b])] == TPV.text_eos).any() for b in range(6)])
  np.testing.assert_array_equal(ok, done & has_eos)
  eos_at = lambda b: int(np.flatnonzero(t[b] == TPV.text_eos)[0])
  b = next(b for b in np.flatnonzero(ok) if eos_at(b) + 1 < int(r.lengths[b]))   # a blank after its text_eos
  code_in_delay = a.copy()
  code_in_delay[b, 0] = TPV.audio_offset
  text_after_eos = t.copy()
  text_after_eos[b, eos_at(b) + 1] = TPV.text_eos
  for tokens in ({"text": t, "audio": code_in_delay}, {"text": text_after_eos, "audio": a}):
    assert not rollout.well_formed(r._replace(tokens=tokens), con)[b]
  _check_rl_batch_and_logp(params, cfg, prompts, r, TPV.pad)


def test_free_decoding_applies_no_mask_and_counts_malformed_rollouts(vita):
  """rollout.constrained=False: greedy decoding is the model's unmasked argmax up to <|im_end|>, nothing is
  forced, tokens are typed by id class, and rollouts that break the layout are reported by well_formed."""
  cfg, params, prompts = vita
  con = constraints.InterleavedConstraint(TIV, RATIOS, constrained=False)
  sc = rollout.SamplingConfig(max_new_tokens=10, group_size=2, sampling=GREEDY, constraint=con)
  r = rollout.sample(params, cfg, prompts, jax.random.key(3), sc)
  seqs, _, _, lens = _greedy_reference(params, cfg, prompts, 10, None, TIV.pad)
  toks, types = np.asarray(r.tokens["tokens"]), np.asarray(r.types["tokens"])
  for row in range(4):
    b, n = row // 2, int(r.lengths[row])
    free = seqs["tokens"][b, lens[b]:lens[b] + 10]
    stop = np.flatnonzero(free == TIV.eos)
    assert n == (stop[0] + 1 if len(stop) else 10)
    np.testing.assert_array_equal(toks[row, :n], free[:n])
    want = np.where(TIV.is_audio(free[:n]), N, np.where(np.isin(free[:n], [TIV.begin_of_audio, TIV.end_of_audio]), F, T))
    np.testing.assert_array_equal(types[row, :n], want)
  assert not np.asarray(r.forced["tokens"]).any()
  # Random weights emit ids that are neither text nor layout tokens: not well formed.
  assert not rollout.well_formed(r, con).all()
  rollout_cfg = dict(base_config().rollout, group_size=1, temperature=0.0, top_p=1.0, top_k=0, max_new_tokens=4,
                     constrained=False)
  assert rollout.sampling_config(rollout_cfg, {"kind": "interleaved", "ratios": RATIOS}, TIV).constraint == con


# ----------------------------------------------------------------------------- sample_token


def test_sample_token_top_k_1_is_greedy_and_mask_binds():
  logits = jax.random.normal(jax.random.key(0), (64, 30)) * 3
  allowed = jax.random.uniform(jax.random.key(1), (64, 30)) < 0.3
  allowed = allowed.at[:, 0].set(True)
  greedy, lp = rollout.sample_token(logits, allowed, GREEDY, jax.random.key(2))
  top1, _ = rollout.sample_token(logits, allowed, rollout.StreamSampling(1.3, 0.8, 1), jax.random.key(3))
  want = np.where(np.asarray(allowed), np.asarray(logits), -np.inf).argmax(-1)
  np.testing.assert_array_equal(np.asarray(greedy), want)
  np.testing.assert_array_equal(np.asarray(top1), want)
  x = np.asarray(logits, np.float64)
  ref = (x - np.log(np.exp(x).sum(-1, keepdims=True)))[np.arange(64), want]   # untempered, unmasked
  # float32 logit - log-sum-exp: a few ulps of the log-sum-exp (|lse| < 16 here)
  np.testing.assert_allclose(np.asarray(lp), ref, rtol=0, atol=4 * 16 * np.finfo(np.float32).eps)


@pytest.mark.parametrize("sp,support,probs", [
    (rollout.StreamSampling(1.0, 0.7, 0), [0, 1], [0.5 / 0.8, 0.3 / 0.8]),        # nucleus keeps 0.5 + 0.3
    (rollout.StreamSampling(1.0, 1.0, 3), [0, 1, 2], [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95]),
    (rollout.StreamSampling(1.0, 0.9, 3), [0, 1, 2], [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95]),  # 0.8 < 0.9
    # the nucleus of the renormalised top k: mass before id 2 is 0.8 / 0.95 = 0.84 >= 0.82, so it goes
    (rollout.StreamSampling(1.0, 0.82, 3), [0, 1], [0.5 / 0.8, 0.3 / 0.8]),
    (rollout.StreamSampling(0.5, 1.0, 3), [0, 1, 2], np.array([0.5, 0.3, 0.15]) ** 2 / 0.3625),   # tempered top k
    (rollout.StreamSampling(0.5, 1.0, 0), [0, 1, 2, 3], np.array([0.5, 0.3, 0.15, 0.05]) ** 2 / 0.3575),
])
def test_sample_token_distribution(sp, support, probs):
  n = 20000
  logits = jnp.log(jnp.tile(jnp.asarray([[0.05, 0.5, 0.15, 0.3]]), (n, 1)))[:, jnp.asarray([1, 3, 2, 0])]
  ids, _ = rollout.sample_token(logits, None, sp, jax.random.key(11))
  freq = np.bincount(np.asarray(ids), minlength=4) / n
  assert set(np.flatnonzero(freq)) == set(support)
  probs = np.asarray(probs)   # each frequency within 5 binomial standard deviations of its own probability
  assert np.all(np.abs(freq[support] - probs) <= 5 * np.sqrt(probs * (1 - probs) / n)), (freq[support], probs)


def test_categorical_over_blocks_is_exact_and_skips_excluded_ids():
  """The two-level CDF (blocks of 64 ids): ids spread over blocks 0, 2 and the last, partial one (block 1 and
  every other id excluded) are drawn with their probabilities; an excluded id never is."""
  n, probs = 20000, np.zeros(200, np.float32)
  probs[[3, 63, 130, 199]] = [0.1, 0.4, 0.2, 0.3]
  ids = np.asarray(decode.categorical(jax.random.key(5), jnp.tile(jnp.asarray(probs)[None] * 7.0, (n, 1))))
  assert set(np.unique(ids)) == {3, 63, 130, 199}
  # 5 binomial standard deviations at p = 0.5 and n draws
  np.testing.assert_allclose(np.bincount(ids, minlength=200)[[3, 63, 130, 199]] / n, [0.1, 0.4, 0.2, 0.3],
                             atol=5 * 0.5 / np.sqrt(n))
  one = np.zeros((3, 130), np.float32)
  one[:, 129] = 1.0     # all mass on the last id: every uniform, the largest included, lands there
  assert (np.asarray(decode.categorical(jax.random.key(0), jnp.asarray(one))) == 129).all()


def test_sample_token_rng():
  logits = jnp.zeros((16, 50))
  sp = rollout.StreamSampling()
  a, _ = rollout.sample_token(logits, None, sp, jax.random.key(0))
  b, _ = rollout.sample_token(logits, None, sp, jax.random.key(0))
  c, _ = rollout.sample_token(logits, None, sp, jax.random.key(1))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert (np.asarray(a) != np.asarray(c)).any()


def test_sample_rejects_bad_prompts(vita):
  cfg, params, prompts = vita
  right = prompts.replace(valid=prompts.valid[:, ::-1].copy())
  with pytest.raises(ValueError, match="left-padded"):
    rollout.sample(params, cfg, right, jax.random.key(0), rollout.SamplingConfig(max_new_tokens=2))
  with pytest.raises(ValueError, match="does not fit arch"):
    rollout.sample(params, cfg, prompts, jax.random.key(0),
                   rollout.SamplingConfig(constraint=constraints.ParallelConstraint(TPV)))


def test_sampling_config_from_experiment_configs():
  from experiments import kimi, vita
  kc = kimi.get_config("tiny")
  sc = rollout.sampling_config(kc.rollout, kc.layout, TPV)
  assert sc.group_size == kc.rollout.group_size and sc.max_new_tokens == kc.rollout.max_new_tokens
  assert sc.for_stream("audio") == rollout.StreamSampling(kc.rollout.audio_temperature, kc.rollout.audio_top_p,
                                                          kc.rollout.audio_top_k)
  assert sc.for_stream("text").temperature == kc.rollout.text_temperature
  assert sc.constraint == constraints.ParallelConstraint(TPV, kc.layout.audio_delay)
  vc = vita.get_config()
  sc = rollout.sampling_config(vc.rollout, vc.layout, TIV)
  assert sc.for_stream("tokens") == rollout.StreamSampling(0.7, 0.9, 0) and sc.group_size == 4
  assert sc.constraint.ratios == tuple(vc.layout.ratios) and sc.max_new_tokens == 1024
  # decode="auto" (the default): MCTP for an interleaved model with MCTP modules, with the layout's ratio list as
  # its schedule; the main head without modules, and always for a parallel model.
  assert vc.rollout.decode == "auto" and sc.decode == "main" and sc.mctp_schedule == ()
  sc = rollout.sampling_config(vc.rollout, vc.layout, TIV, num_mtp_modules=10)
  assert sc.decode == "mctp" and sc.mctp_schedule == tuple(vc.layout.ratios)
  assert rollout.sampling_config(kc.rollout, kc.layout, TPV, num_mtp_modules=10).decode == "main"


@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9, 0.99])
def test_nucleus_equals_the_sort_based_definition(top_p):
  """The sort-free nucleus keeps exactly the tokens the sort-based one keeps (here with masked ids and ties)."""
  x = jax.random.normal(jax.random.key(4), (64, 500)) * jnp.linspace(0.3, 4.0, 64)[:, None]
  x = x.at[:, 100:140].set(-jnp.inf)                      # constraint-masked ids
  x = x.at[:8, 200:203].set(x[:8, 7:8])                    # exact ties
  srt = -np.sort(-np.asarray(x), axis=-1)
  p = np.asarray(jax.nn.softmax(jnp.asarray(srt), axis=-1), np.float64)
  keep_sorted = (np.cumsum(p, axis=-1) - p) < top_p
  threshold = np.min(np.where(keep_sorted, srt, np.inf), axis=-1, keepdims=True)
  want = np.asarray(x) >= threshold
  np.testing.assert_array_equal(np.asarray(rollout.nucleus(jax.nn.softmax(x, axis=-1), top_p)), want)


def test_trimmed_rl_batch_scores_the_same(vita):
  """The RL batch cut after the longest completion (bucketed), with the head run from the first completion
  target only (start = Lp - 1), gives the same log-probs on every scored position as the full batch."""
  from wavalign_jax.rollout import batch
  cfg, params, prompts = vita
  con = constraints.InterleavedConstraint(TIV, RATIOS)
  sc = rollout.SamplingConfig(max_new_tokens=16, group_size=2, sampling=rollout.StreamSampling(1.0, 1.0, 0),
                              constraint=con)
  r = jax.device_get(rollout.sample(params, cfg, prompts, jax.random.key(9), sc))
  full = jax.device_get(rollout.rl_batch(prompts, r, TIV.pad))
  Lp = prompts.valid.shape[1]
  assert not full.types["tokens"][:, :Lp - 1].any()       # nothing to score before the completions
  trimmed = batch.trim_rl_batch(full, Lp, 16, num_buckets=8)
  L = trimmed.segment_ids.shape[1]
  longest = int(np.asarray(r.lengths).max())
  assert L - Lp == min(16, -(-longest // 2) * 2)              # buckets of 16 / 8 = 2 new tokens
  assert (full.segment_ids[:, L:] == 0).all()
  a = models.target_logprobs(params, cfg, full)
  b = models.target_logprobs(params, cfg, trimmed, Lp - 1)
  m = trimmed.types["tokens"] > 0
  np.testing.assert_allclose(np.asarray(b.logp["tokens"])[m], np.asarray(a.logp["tokens"])[:, :L][m], atol=1e-6)
  np.testing.assert_allclose(np.asarray(b.entropy["tokens"])[m], np.asarray(a.entropy["tokens"])[:, :L][m],
                             atol=1e-5)
  np.testing.assert_array_equal(np.asarray(b.logp["tokens"])[:, :Lp - 1], 0.0)


@pytest.mark.parametrize("spec", [("data", "fsdp"), None, ("fsdp", "tensor")])
def test_process_rows_read_from_any_layout(spec):
  """hosts._rows assembles rows [lo, hi) of a global array from the shards this process holds, whether the
  array is split along its rows, replicated, or split along both axes (8 fake devices, one process)."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  from wavalign_jax import sharding
  from wavalign_jax.rollout import hosts
  mesh = sharding.make_mesh((2, 2, 2))
  x = np.arange(16 * 6, dtype=np.int32).reshape(16, 6)
  pspec = P() if spec is None else P(spec[0], spec[1]) if spec[0] == "fsdp" else P(spec)
  g = jax.device_put(x, NamedSharding(mesh, pspec))
  for lo, hi in ((0, 16), (4, 12), (5, 6)):
    np.testing.assert_array_equal(hosts._rows(g, lo, hi), x[lo:hi])
  assert hosts._process_rows(g) == slice(0, 16)


def test_pad_sequence_batch_pads_like_the_loader():
  ex = layouts.Example(tokens={"tokens": np.array([5, 6, 7])}, types={"tokens": np.array([1, 2, 2])}, prompt_len=1)
  short, long = layouts.to_sequence_batch([ex], 4, pad_id=9), layouts.to_sequence_batch([ex], 7, pad_id=9)
  seq_fields = {f.name: getattr(short, f.name) for f in dataclasses.fields(SeqBatch)}
  rl = RLBatch(**seq_fields, sampler_logp={"tokens": np.ones((1, 4), np.float32)})
  padded = layouts.pad_sequence_batch(rl, 7, 9)
  jax.tree.map(np.testing.assert_array_equal, SeqBatch(**{k: getattr(padded, k) for k in seq_fields}), long)
  np.testing.assert_array_equal(padded.sampler_logp["tokens"], [[1, 1, 1, 1, 0, 0, 0]])
  with pytest.raises(ValueError, match="cannot pad a batch of length 7 to 4"):
    layouts.pad_sequence_batch(long, 4, 9)
