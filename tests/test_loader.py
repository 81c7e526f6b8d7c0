"""Grain loader: host sharding, epochs, buckets, exact resume (2 simulated hosts, >1 epoch)."""
import itertools
import json

import jax
import numpy as np
import pytest

from test_data_pipeline import RECORD, build_dataset
from wavalign_jax.data import loader
from wavalign_jax.data.loader import RecordSource, resolve_paths

N = 11  # records; record k has k + 1 response words, so its length identifies it


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("loader")
  out, _, _ = build_dataset(tmp, [dict(RECORD, sft_target_text=" ".join(["four"] * (k + 1))) for k in range(N)],
                            num_shards=3)
  return out


@pytest.fixture(scope="module")
def lengths(dataset):
  src = RecordSource(resolve_paths(dataset)[0])
  return sorted(len(src[i].examples["example"]) for i in range(len(src)))


def _ids(batch):
  """Length of each row's first segment = identity of the example."""
  return [int(np.sum(row == 1)) for row in batch.segment_ids]


def _take(it, n):
  return list(itertools.islice(it, n))


def _equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_hosts_epochs_and_buckets(dataset, lengths):
  kw = dict(global_batch_size=4, buckets=[48, 56, 64], seed=3, num_epochs=2, process_count=2)
  seen = []
  for host in range(2):
    batches = list(loader.make_loader(dataset, process_index=host, **kw))
    # 10 usable records (11 - 11 % 2), 5 per host, 2 epochs, batches of 2, remainder dropped
    assert len(batches) == 5
    ids = [i for b in batches for i in _ids(b)]
    assert len(set(ids[:5])) == 5 and set(ids[:5]) == set(ids[5:])  # each epoch covers the host slice once
    seen.append(set(ids))
    for b in batches:
      longest = max(_ids(b))
      assert b.inputs["tokens"].shape[1] == min(x for x in kw["buckets"] if x >= longest)
  assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 10
  assert seen[0] | seen[1] <= set(lengths)


def test_epochs_reshuffle_and_cover(dataset):
  it = loader.make_loader(dataset, global_batch_size=1, buckets=[64], seed=0, num_epochs=3, process_index=0,
                          process_count=1)
  ids = [i for b in it for i in _ids(b)]
  epochs = [ids[k * N:(k + 1) * N] for k in range(3)]
  assert len(ids) == 3 * N and all(len(set(e)) == N for e in epochs)
  assert epochs[0] != epochs[1]  # reshuffled each epoch


def test_resume_is_exact_for_two_hosts_across_epochs(dataset):
  kw = dict(global_batch_size=4, buckets=[64, 128], seed=7, num_epochs=None, process_count=2, read_threads=2,
            read_prefetch=4)
  for host in range(2):
    reference = _take(loader.make_loader(dataset, process_index=host, **kw), 9)  # > 2 epochs of 5 records
    it = loader.make_loader(dataset, process_index=host, **kw)
    first = _take(it, 4)
    state = json.dumps(it.get_state())   # as the checkpoint stores it
    resumed = loader.make_loader(dataset, process_index=host, **kw)
    resumed.set_state(json.loads(state))
    for a, b in zip(first + _take(resumed, 5), reference):
      _equal(a, b)


def test_errors(dataset):
  with pytest.raises(ValueError, match="exceed the largest length bucket 40"):
    _take(loader.make_loader(dataset, global_batch_size=2, buckets=[40], process_index=0, process_count=1), 6)
  with pytest.raises(ValueError, match="not divisible by 2 hosts"):
    loader.make_loader(dataset, global_batch_size=3, buckets=[64], process_index=0, process_count=2)


def test_worker_processes_same_batches_and_resume(dataset):
  from absl import flags
  if not flags.FLAGS.is_parsed():  # grain workers read absl flags; train.py parses them through app.run
    flags.FLAGS.mark_as_parsed()
  kw = dict(global_batch_size=2, buckets=[64], seed=5, num_epochs=None, process_index=1, process_count=2,
            read_threads=1, read_prefetch=2)
  reference = _take(loader.make_loader(dataset, **kw), 6)
  it = loader.make_loader(dataset, worker_count=1, **kw)
  first = _take(it, 3)
  state = json.dumps(it.get_state())
  resumed = loader.make_loader(dataset, worker_count=1, **kw)
  resumed.set_state(json.loads(state))
  for a, b in zip(first + _take(resumed, 3), reference):
    _equal(a, b)
