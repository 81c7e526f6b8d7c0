"""Constrained decoding state machines and the rollout sampler.

Constraint machines are checked by random walks (uniformly random allowed tokens) parsed by an
independent pure-Python grammar, and against the data pipeline's layouts (wavalign_jax.data.layouts).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wavalign_jax.data import layouts
from wavalign_jax.rollout import constraints
from wavalign_jax.tokens import InterleavedVocab, ParallelVocab, TokenType

IV = InterleavedVocab(vocab_size=48, text_vocab_size=20, first_audio_code=28, num_audio_codes=16,
                      begin_of_audio=20, end_of_audio=21, eos=22, pad=23, bos=24, newline=25, im_start=26)
PV = ParallelVocab(vocab_size=48, text_vocab_size=20, audio_offset=30, num_audio_codes=16, text_blank=20,
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
    while at(i) is not None and at(i) < v.text_vocab_size:
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


def _machine_accepts(con, streams):
  """Step the machine along given token streams: (every token allowed, types, stop flags)."""
  state = con.init(1)
  ok, types, stops = True, [], []
  for j in range(len(next(iter(streams.values())))):
    allowed = con.allowed(state)
    tok = {s: jnp.asarray([streams[s][j]], jnp.int32) for s in streams}
    ok &= all(bool(allowed[s][0, streams[s][j]]) for s in streams)
    state, ty, stop = con.update(state, tok)
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
    assert (t[:stop_text] < PV.text_vocab_size).all() and (t[stop_text + 1:] == PV.text_blank).all()
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
