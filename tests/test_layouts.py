"""Layouts against hand-written sequences (ids written out by hand from docs/method.md §2)."""
import jax
import numpy as np
import pytest

from wavalign_jax.data import layouts as L
from wavalign_jax.tokens import InterleavedVocab, ParallelVocab

# interleaved: text < 20, boa 21, eoa 22, im_end 23, newline 25, im_start 26, code c -> 30 + c
IV = InterleavedVocab(vocab_size=64, tokenizer_size=20, special_ids=(), first_audio_code=30, num_audio_codes=30,
                      begin_of_audio=21, end_of_audio=22, eos=23, pad=0, bos=24, newline=25, im_start=26)
ROLE_IDS = {"system": [10], "user": [11], "assistant": [12]}
# parallel: text < 40, blank 41, text_eos 42, media_begin 43, media_end 44, msg_end 45, user 46, assistant 47,
# code c -> 50 + c
PV = ParallelVocab(vocab_size=80, tokenizer_size=40, special_ids=(), audio_offset=50, num_audio_codes=30, text_blank=41,
                   text_eos=42, media_begin=43, media_end=44, msg_end=45, pad=0, user_msg_start=46,
                   assistant_msg_start=47)
T, S, B = 1, 2, 3


def _eq(ex, stream, ids, types):
  np.testing.assert_array_equal(ex.tokens[stream], ids)
  np.testing.assert_array_equal(ex.types[stream], types)


def test_interleaved_response_text_runs_out_first():
  ex = L.interleaved_response([1, 2, 3, 4, 5, 6], list(range(10)), IV, ratios=[1, 5, 2, 4])
  _eq(ex, "tokens",
      [1, 21, 30, 31, 32, 22, 2, 3, 21, 33, 34, 22, 4, 5, 21, 35, 36, 22, 6, 21, 37, 38, 39, 22, 23, 25],
      [T, B, S, S, S, B, T, T, B, S, S, B, T, T, B, S, S, B, T, B, S, S, S, B, T, T])


def test_interleaved_response_audio_runs_out_first():
  ex = L.interleaved_response([1, 2, 3, 4, 5, 6, 7, 8], [0, 1, 2, 3], IV, ratios=[1, 5, 2, 4])
  _eq(ex, "tokens",
      [1, 21, 30, 31, 32, 22, 2, 3, 4, 5, 6, 7, 8, 21, 33, 22, 23, 25],
      [T, B, S, S, S, B, T, T, T, T, T, T, T, B, S, B, T, T])


def test_interleaved_response_no_text_and_split_roundtrip():
  ex = L.interleaved_response([], [4, 5], IV, ratios=L.BOOST_RATIOS)
  _eq(ex, "tokens", [21, 34, 35, 22, 23, 25], [B, S, S, B, T, T])
  text, codes = list(range(1, 15)), list(range(29, 0, -1))
  ex = L.interleaved_response(text, codes, IV, ratios=(1, 4, 3, 8, 4, 10))
  assert L.interleaved_split(ex.tokens["tokens"], IV) == (text, codes)


def test_interleaved_prompt_and_join():
  turns = [L.Turn.make("system", [5, 6]), L.Turn.make("user", [7], audio=[1, 2])]
  prompt = L.interleaved_prompt(turns, IV, ROLE_IDS)
  expected = [26, 10, 25, 5, 6, 23, 25, 26, 11, 25, 7, 21, 31, 32, 22, 23, 25, 26, 12, 25]
  _eq(prompt, "tokens", expected, [0] * len(expected))
  ex = L.join(prompt, L.interleaved_response([3], [0], IV))
  assert ex.prompt_len == len(expected)
  np.testing.assert_array_equal(ex.tokens["tokens"], expected + [3, 21, 30, 22, 23, 25])
  np.testing.assert_array_equal(ex.prompt().tokens["tokens"], expected)
  np.testing.assert_array_equal(ex.response().types["tokens"], [T, B, S, B, T, T])


def test_parallel_prompt_and_response():
  prompt = L.parallel_prompt([L.Turn.make("user", [5, 6], audio=[1, 2, 3])], PV)
  _eq(prompt, "text", [41, 5, 6, 41, 41, 41, 41, 41, 41, 41], [0] * 10)
  _eq(prompt, "audio", [46, 41, 41, 43, 51, 52, 53, 44, 45, 47], [0] * 10)
  resp = L.parallel_response([7, 8], [0, 1, 2], PV, delay=2)
  _eq(resp, "text", [7, 8, 42, 41, 41, 41], [T] * 6)
  _eq(resp, "audio", [41, 41, 50, 51, 52, 45], [S] * 6)
  long_text = L.parallel_response([1, 2, 3, 4, 5, 6], [4], PV, delay=1)
  _eq(long_text, "text", [1, 2, 3, 4, 5, 6, 42], [T] * 7)
  _eq(long_text, "audio", [41, 54, 45, 41, 41, 41, 41], [S] * 7)
  assert L.parallel_split(resp.tokens["text"], resp.tokens["audio"], PV) == ([7, 8], [0, 1, 2])
  default = L.parallel_response([7], list(range(3)), PV)
  np.testing.assert_array_equal(default.tokens["audio"][:7], [41] * 6 + [50])


def test_to_sequence_batch_and_packing():
  a = L.Example({"tokens": np.array([10, 11, 12, 13])}, {"tokens": np.array([0, 0, 1, 2])}, 2)
  b = L.Example({"tokens": np.array([20, 21, 22])}, {"tokens": np.array([0, 3, 1])}, 1)
  batch = L.to_sequence_batch([a], 6, pad_id=7)
  np.testing.assert_array_equal(batch.inputs["tokens"], [[10, 11, 12, 13, 7, 7]])
  np.testing.assert_array_equal(batch.targets["tokens"], [[11, 12, 13, 7, 7, 7]])
  np.testing.assert_array_equal(batch.types["tokens"], [[0, 1, 2, 0, 0, 0]])
  np.testing.assert_array_equal(batch.positions, [[0, 1, 2, 3, 0, 0]])
  np.testing.assert_array_equal(batch.segment_ids, [[1, 1, 1, 1, 0, 0]])
  packed = L.packed_sequence_batch([[a, b], [b]], 8)
  np.testing.assert_array_equal(packed.inputs["tokens"], [[10, 11, 12, 13, 20, 21, 22, 0], [20, 21, 22] + [0] * 5])
  np.testing.assert_array_equal(packed.targets["tokens"], [[11, 12, 13, 0, 21, 22, 0, 0], [21, 22] + [0] * 6])
  np.testing.assert_array_equal(packed.types["tokens"], [[0, 1, 2, 0, 3, 1, 0, 0], [3, 1] + [0] * 6])
  np.testing.assert_array_equal(packed.positions, [[0, 1, 2, 3, 0, 1, 2, 0], [0, 1, 2, 0, 0, 0, 0, 0]])
  np.testing.assert_array_equal(packed.segment_ids, [[1, 1, 1, 1, 2, 2, 2, 0], [1, 1, 1, 0, 0, 0, 0, 0]])
  for v in jax.tree.leaves(packed):
    assert v.dtype == np.int32


def test_parallel_batch_shifts_both_streams():
  ex = L.join(L.parallel_prompt([L.Turn.make("user", [5])], PV), L.parallel_response([7], [0], PV, delay=1))
  batch = L.to_sequence_batch([ex], len(ex) + 1)
  for s in ("text", "audio"):
    np.testing.assert_array_equal(batch.targets[s][0, :len(ex) - 1], ex.tokens[s][1:])
  # the last prompt position (assistant_msg_start) predicts the first response token
  n = ex.prompt_len
  assert batch.types["text"][0, n - 1] == T and batch.types["audio"][0, n - 1] == S
  assert batch.types["text"][0, n - 2] == 0


@pytest.mark.parametrize("call, match", [
    (lambda: L.interleaved_response([1], [30], IV), "audio code 30"),
    (lambda: L.interleaved_response([], [], IV), "empty response"),
    (lambda: L.interleaved_response([25], [1], IV), "id 25 is not a text token"),
    (lambda: L.interleaved_response([21], [1], IV), r"id 21 is not a text token \(a special token\)"),
    (lambda: L.interleaved_response([1], [1], IV, ratios=[1, 2]), "A >= 3"),
    (lambda: L.interleaved_response([1], [1], IV, ratios=[1, 4, 2]), "pairs"),
    (lambda: L.parallel_prompt([L.Turn.make("system", [1])], PV), "system"),
    (lambda: L.interleaved_prompt([L.Turn.make("user", [1])], IV, {"user": [1]}), "assistant"),
    (lambda: L.to_sequence_batch([L.parallel_response([1], [1], PV)], 3), "exceed the batch length 3"),
])
def test_errors(call, match):
  with pytest.raises(ValueError, match=match):
    call()


@pytest.mark.parametrize("arch", ["interleaved"])  # "parallel" works too; left out to keep the file fast
def test_packed_forward_equals_separate_forward(arch):
  """Segment ids / positions from packing give each example exactly its unpacked log-probs."""
  from wavalign_jax.models import api
  if arch == "interleaved":
    prompt = L.interleaved_prompt([L.Turn.make("user", [5, 6], audio=[1, 2])], IV, ROLE_IDS)
    a = L.join(prompt, L.interleaved_response([1, 2, 3], [4, 5, 6, 7], IV, ratios=[1, 4]))
    b = L.join(prompt, L.interleaved_response([9], [8], IV))
  else:
    prompt = L.parallel_prompt([L.Turn.make("user", [5], audio=[1, 2])], PV)
    a = L.join(prompt, L.parallel_response([1, 2, 3], [4, 5, 6], PV, delay=2))
    b = L.join(prompt, L.parallel_response([9], [8], PV, delay=2))
  cfg = api.tiny_config(arch)
  params = jax.jit(api.init_params, static_argnums=0)(cfg, jax.random.PRNGKey(0))
  length = len(a) + len(b) + 3
  logprobs = jax.jit(api.target_logprobs, static_argnums=1)  # both batches [2, length]: one compile
  packed = logprobs(params, cfg, L.packed_sequence_batch([[a, b], [b]], length))
  separate = logprobs(params, cfg, L.to_sequence_batch([a, b], length))
  for s in a.streams:
    np.testing.assert_allclose(packed.logp[s][0, :len(a)], separate.logp[s][0, :len(a)], atol=1e-5)
    np.testing.assert_allclose(packed.logp[s][0, len(a):len(a) + len(b)], separate.logp[s][1, :len(b)],
                               atol=1e-5)


def test_loader_prompts_left_padded_for_the_sampler():
  """Right-padded prompt rows (the loader's) -> the sampler's left-padded ones: tokens, features and their mask
  move together; `valid` marks the prompt's tokens."""
  from wavalign_jax.batches import PromptBatch
  a = L.Example({"tokens": np.array([5, 6, 7])}, {"tokens": np.zeros(3, np.int32)}, 3)
  b = L.Example({"tokens": np.array([8])}, {"tokens": np.zeros(1, np.int32)}, 1)
  prompt = L.to_sequence_batch([a, b], 4, pad_id=0)
  feats = np.arange(2 * 4 * 2, dtype=np.float32).reshape(2, 4, 2)
  prompt = prompt.replace(features=feats, feature_mask=np.array([[1, 0, 1, 0], [1, 0, 0, 0]], bool))
  out = PromptBatch(prompt=prompt, prompt_lengths=np.array([3, 1]), reference=prompt, meta=[{}, {}]).left_padded()
  np.testing.assert_array_equal(out.inputs["tokens"], [[0, 5, 6, 7], [0, 0, 0, 8]])
  np.testing.assert_array_equal(out.valid, [[0, 1, 1, 1], [0, 0, 0, 1]])
  np.testing.assert_array_equal(out.features[0, 1:], feats[0, :3])
  np.testing.assert_array_equal(out.features[1, 3], feats[1, 0])
  np.testing.assert_array_equal(out.feature_mask, [[0, 1, 0, 1], [0, 0, 0, 1]])
