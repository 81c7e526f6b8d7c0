"""Hybrid training on two JAX processes (4 CPU devices each, gloo collectives) equals one process on 8 devices.

The one-process reference reads the same global batches (its rl_train loader concatenates the slices of
hosts 0 and 1), so rollouts, rewards, lambda, losses, params and the evaluations must agree; each host
must have scored exactly its own rows of the global batch. This file is also the worker script:
`python tests/test_multihost.py train PROCESS_ID PORT WORKDIR BASE_MODEL OUT.npz` and
`python tests/test_multihost.py lengths|reward_eval PROCESS_ID PORT OUT.npz`.

Why the hosts must agree on shapes: a host's batch length comes from its own rows (the loader's length bucket,
the RL batch cut to its longest rollout). When two hosts disagree, each builds a different global array and
compiles a different program, and the first collective whose size depends on that length aborts both processes
in gloo ("Received data size doesn't match expected size. Is there a distributed collective mismatch in your
code?"): the failure this test used to show now and then. Every host now pads to the longest length of any
host (`hosts.same_length`); `test_hosts_agree_on_batch_lengths` puts batches of 40 and 80 positions through it.
"""
import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from conftest import tiny_config  # noqa: E402

from wavalign_jax import checkpointing, train  # noqa: E402
from wavalign_jax.batches import SeqBatch  # noqa: E402
from wavalign_jax.rewards.base import RewardItem  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
STEPS = 2


def _config(base: str):
  c = tiny_config("interleaved", base)
  c.train.update(dict(total_steps=STEPS, checkpoint_every=STEPS, eval_examples=4, eval_before=False))
  c.data.prompts_per_step = 16   # each host's 8 rows over the 8 data shards (train.train refuses fewer)
  c.mesh.num_devices = 0         # every device of the hosts
  # No warmup: the first step (varied rewards) moves the params. eps = 1 keeps AdamW linear in the
  # gradient: with 1e-8, gradients near 0 update by +-lr depending on their rounding (the two runs reduce
  # in different orders), and those params change the second step's rollouts.
  c.optim.update(dict(warmup_steps=0, eps=1.0, learning_rate=1e-2))
  return c


def _record_rollouts(calls: list) -> None:
  """Wraps rollout.batch.rollout_batch to keep each step's prompts (meta ids), RL tokens and rewards."""
  inner = train.rl_batch_lib.rollout_batch

  def wrapped(params, model_cfg, sampling, raw, *args, **kw):
    out = inner(params, model_cfg, sampling, raw, *args, **kw)
    calls.append(dict(ids=np.asarray([m["id"] for m in raw.meta]), tokens=out.rl.inputs["tokens"],
                      rewards=out.rewards))
    return out
  train.rl_batch_lib.rollout_batch = wrapped


def _flat_params(state) -> list[np.ndarray]:
  from jax.experimental import multihost_utils
  return [np.asarray(x) for x in jax.tree.leaves(multihost_utils.process_allgather(state.params, tiled=True))]


def _worker(process_id: int, port: int, workdir: str, base: str, out: str) -> None:
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
  assert jax.process_count() == 2 and len(jax.devices()) == 8 and len(jax.local_devices()) == 4
  calls: list = []
  _record_rollouts(calls)
  result = train.train(_config(base), workdir)
  np.savez(out, lam=float(result.state.gate.lam), eval_after=json.dumps(result.eval_after),
           num_params=len(_flat_params(result.state)),
           **{f"param_{i}": p for i, p in enumerate(_flat_params(result.state))},
           **{f"{k}_{s}": c[k] for s, c in enumerate(calls) for k in c})


def _base_worker(process_id: int, port: int, workdir: str, out: str) -> None:
  """A testbed run without a base model on two processes: both generate the testbed, train the base model together
  and save it (gathered on every process, written once), then evaluate it."""
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
  config = _config("")
  config.train.total_steps = 0   # the base model only, evaluated
  result = train.train(config, workdir)
  np.savez(out, eval_after=json.dumps(result.eval_after))


def _lengths_worker(process_id: int, port: int, out: str) -> None:
  """Host 0 holds a batch of 40 positions, host 1 one of 80; after `hosts.same_length` both put a (16, 80) global
  batch on the mesh and all-gather it."""
  from wavalign_jax import sharding
  from wavalign_jax.rollout import hosts
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
  length = 40 if process_id == 0 else 80
  rows = np.arange(8 * length, dtype=np.int32).reshape(8, length) + 1000 * process_id
  ones = np.ones((8, length), np.int32)
  batch = hosts.same_length(SeqBatch(inputs={"tokens": rows}, targets={"tokens": rows}, types={"tokens": ones},
                                     positions=ones, segment_ids=ones), pad_id=7)
  mesh = sharding.make_mesh((1, -1, 1))
  on_mesh = sharding.device_put_batch(batch, mesh)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  gathered = jax.jit(lambda b: b, out_shardings=replicated)(on_mesh)   # all-gathers rows of the common length
  np.savez(out, tokens=np.asarray(gathered.inputs["tokens"]), segment_ids=np.asarray(gathered.segment_ids))


def _reward_eval_worker(process_id: int, port: int, out: str) -> None:
  """Both hosts evaluate the same 7 responses (an odd count: host 0 scores 4, host 1 scores 3) with a reward that
  fails on one item and records which items it scored."""
  from wavalign_jax.evaluation import reward_eval
  from wavalign_jax.rewards.base import RewardResult
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
  seen = []

  def reward(items):
    seen.extend(i.record["id"] for i in items)
    return RewardResult(scores=[len(i.text) for i in items], failed=[i.record["id"] == 5 for i in items])
  reward.name = "length"
  summary, rows = reward_eval.reward_evaluator(reward)([RewardItem({"id": n}, "x" * n) for n in range(7)])
  np.savez(out, seen=np.asarray(seen), summary=json.dumps(summary), rows=json.dumps(rows))


def _damaged_worker(process_id: int, port: int, damage: str, directory: str, out: str) -> None:
  """Two processes save steps 1 and 2 of a replicated state and a Grain iterator (each its own position file);
  step 2 is then damaged for process 1 only (`damage`: its position file truncated, as a node dying mid-write leaves
  it, or its array reads failing), and both restore."""
  import grain
  from wavalign_jax import checkpointing
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("d",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  data = lambda: iter(grain.MapDataset.range(100).to_iter_dataset())
  ckpt, it = checkpointing.Checkpointer(directory, keep=3, async_save=False), data()
  for step in (1, 2):
    next(it)
    ckpt.save(step, {"w": jax.device_put(np.full((4,), float(step), np.float32), replicated)}, it)
  ckpt.close()
  from jax.experimental import multihost_utils
  if process_id == 1 and damage == "position":
    os.truncate(os.path.join(directory, "2", "data", "process_1-of-2.json"), 5)
  if process_id == 1 and damage == "arrays":   # as a truncated data file of the shards only this host reads fails
    import orbax.checkpoint as ocp
    restore = ocp.StandardCheckpointHandler.restore

    def fails_at_step_2(self, directory, *args, **kwargs):
      if os.path.basename(os.path.dirname(str(directory))) == "2":
        raise ValueError("OUT_OF_RANGE: byte range of a data file this host reads")
      return restore(self, directory, *args, **kwargs)
    ocp.StandardCheckpointHandler.restore = fails_at_step_2
  multihost_utils.sync_global_devices("damaged")
  it = data()
  state = checkpointing.Checkpointer(directory, keep=3, async_save=False).restore(
      {"w": jax.ShapeDtypeStruct((4,), np.float32, sharding=replicated)}, it)
  np.savez(out, w=np.asarray(state["w"].addressable_data(0)), next=next(it))


def _signal_worker(process_id: int, port: int, out: str) -> None:
  """Process 1 receives SIGTERM, process 0 nothing: both must learn of it at the same `should_stop`, or one host
  would save and exit while the other waits in its next collective."""
  import signal
  from jax.experimental import multihost_utils
  from wavalign_jax import preemption
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
  with preemption.PreemptionGuard() as guard:
    before = guard.should_stop()
    if process_id == 1:
      os.kill(os.getpid(), signal.SIGTERM)
    multihost_utils.sync_global_devices("signalled")
    after = guard.should_stop()
    np.savez(out, before=before, after=after, signum=guard.signum or 0)


def _spawn(args: list[str], outs: list, timeout: int = 300) -> list[dict]:
  """Runs this file as two worker processes (4 fake CPU devices each) and loads what each wrote to outs[i]."""
  port = _free_port()
  # the session's XLA flags (conftest.py: same compiler settings as the one-process reference), 4 devices each
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
  env = dict(os.environ, XLA_FLAGS=" ".join([*flags, "--xla_force_host_platform_device_count=4"]),
             JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  procs = [subprocess.Popen([sys.executable, __file__, args[0], str(i), str(port), *args[1:], str(outs[i])],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  logs = [p.communicate(timeout=timeout)[0] for p in procs]
  for i, p in enumerate(procs):
    assert p.returncode == 0, f"host {i} failed:\n{logs[i][-4000:]}"
  return [dict(np.load(o)) for o in outs]


@pytest.mark.parametrize("damage", ["position", "arrays"])
def test_a_checkpoint_damaged_on_one_host_falls_back_on_every_host(tmp_path, damage):
  """Every process agrees to skip step 2 (damaged for process 1 only) and resumes from step 1 with its own data
  position: process 1 used to fail inside Orbax's restore while process 0 waited in the barrier that ends it, and
  both stopped."""
  hosts = _spawn(["damaged", damage, str(tmp_path / "ckpt")], [tmp_path / f"host{i}.npz" for i in range(2)])
  for host in hosts:
    assert host["w"].tolist() == [1.0] * 4 and int(host["next"]) == 1
  assert os.listdir(tmp_path / "ckpt.damaged") == ["2"]


def test_a_signal_to_one_host_stops_every_host(tmp_path):
  import signal
  hosts = _spawn(["signal"], [tmp_path / f"host{i}.npz" for i in range(2)])
  for host in hosts:
    assert not host["before"] and host["after"] and int(host["signum"]) == signal.SIGTERM


def test_hosts_agree_on_batch_lengths(tmp_path):
  hosts = _spawn(["lengths"], [tmp_path / f"host{i}.npz" for i in range(2)])
  want = np.full((16, 80), 7, np.int32)                     # inputs padded with pad_id
  want[:8, :40] = np.arange(320).reshape(8, 40)
  want[8:] = np.arange(640).reshape(8, 80) + 1000
  for host in hosts:
    np.testing.assert_array_equal(host["tokens"], want)
    assert host["segment_ids"].sum() == 8 * 40 + 8 * 80   # padding is segment 0: outside every loss


def test_hosts_share_the_eval_reward_calls(tmp_path):
  """data.eval's reward on two hosts: each item is scored once, by one host (a judge is not called twice per
  item), and both hosts get the result one host scoring everything would give."""
  from wavalign_jax.evaluation import reward_eval
  from wavalign_jax.rewards.base import RewardResult
  hosts = _spawn(["reward_eval"], [tmp_path / f"host{i}.npz" for i in range(2)])
  assert sorted(hosts[0]["seen"].tolist()) == [0, 2, 4, 6] and sorted(hosts[1]["seen"].tolist()) == [1, 3, 5]

  def reward(items):
    return RewardResult(scores=[len(i.text) for i in items], failed=[i.record["id"] == 5 for i in items])
  reward.name = "length"
  summary, rows = reward_eval.reward_evaluator(reward)([RewardItem({"id": n}, "x" * n) for n in range(7)])
  assert summary["reward"] == pytest.approx(16 / 6) and summary["reward/failed"] == 1   # (0+1+2+3+4+6) / 6
  for host in hosts:
    assert json.loads(str(host["summary"])) == pytest.approx(summary)
    assert json.loads(str(host["rows"])) == rows


def _two_host_loader(make_loader):
  """The rl_train loader of one process yielding the global batch two hosts would read together."""
  import grain.experimental as grain_exp
  from wavalign_jax.data import loader

  def concat(pair):
    a, b = pair
    stack = lambda x, y: jax.tree.map(lambda u, v: np.concatenate([u, v]), x, y)
    return a.replace(prompt=stack(a.prompt, b.prompt), prompt_lengths=stack(a.prompt_lengths, b.prompt_lengths),
                     reference=stack(a.reference, b.reference), meta=a.meta + b.meta)

  def make(path, **kw):
    if not str(path).endswith("rl_train"):
      return make_loader(path, **kw)
    hosts = [loader.make_dataset(path, **kw, process_index=i, process_count=2) for i in range(2)]
    return iter(grain_exp.ZipIterDataset(hosts).map(concat))
  return make


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _train_lines(workdir) -> list[dict]:
  return [l for l in map(json.loads, open(os.path.join(workdir, "metrics.jsonl"))) if l["split"] == "train"]


def test_two_processes_train_and_save_the_testbed_base_model(tmp_path):
  """Without a base model, two processes SFT-train it together and save it once (each gathers the whole params:
  they span both processes' devices); both then evaluate the same model."""
  work = tmp_path / "run"
  hosts = _spawn(["base", str(work)], [tmp_path / f"host{i}.npz" for i in range(2)])
  after = [json.loads(str(h["eval_after"])) for h in hosts]
  assert after[0] == after[1] and "iq" in after[0]
  meta = json.load(open(work / "base_model" / "model_config.json"))
  assert meta["steps"] == _config("").testbed.base_sft_steps
  params = checkpointing.load_host_params(str(work / "base_model" / "params"))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
  assert not (work / "base_model.tmp").exists() and not (work / "base_model.sft_checkpoints").exists()


def test_two_processes_match_one(tmp_path, monkeypatch, tiny_base):
  ref_dir, mh_dir = tmp_path / "one", tmp_path / "two"
  monkeypatch.setattr(train.loader, "make_loader", _two_host_loader(train.loader.make_loader))
  ref_calls: list = []
  monkeypatch.setattr(train.rl_batch_lib, "rollout_batch", train.rl_batch_lib.rollout_batch)
  _record_rollouts(ref_calls)
  base = tiny_base("interleaved")   # one base model and testbed: no two processes generating them
  ref = train.train(_config(base), str(ref_dir))
  hosts = _spawn(["train", str(mh_dir), base], [tmp_path / f"host{i}.npz" for i in range(2)])

  # Each host sampled and scored exactly its own half of every global batch, as one process did.
  assert len(ref_calls) == STEPS
  for s, call in enumerate(ref_calls):
    P, n = len(call["ids"]), len(call["ids"]) // 2
    G = len(call["tokens"]) // P
    for h, host in enumerate(hosts):
      np.testing.assert_array_equal(host[f"ids_{s}"], call["ids"][h * n:(h + 1) * n])
      np.testing.assert_array_equal(host[f"tokens_{s}"], call["tokens"][h * n * G:(h + 1) * n * G])
      np.testing.assert_allclose(host[f"rewards_{s}"], call["rewards"][h * n:(h + 1) * n], rtol=0, atol=1e-6)

  assert np.ptp(ref_calls[0]["rewards"]) > 0, "constant rewards would not exercise the RL half of the loss"

  # Same lambda and params on both hosts and in the one-process run; same logged losses and evaluations.
  ref_params = [np.asarray(x) for x in jax.tree.leaves(ref.state.params)]
  # lambda: float32 reductions over the global rewards, in another order across two processes (a few ulps)
  assert float(hosts[0]["lam"]) == float(hosts[1]["lam"])
  for host in hosts:
    assert float(host["lam"]) == pytest.approx(float(ref.state.gate.lam), rel=1e-6)
    assert int(host["num_params"]) == len(ref_params)
    for i, p in enumerate(ref_params):
      np.testing.assert_allclose(host[f"param_{i}"], p, rtol=1e-5, atol=1e-6)
    assert json.loads(str(host["eval_after"])) == ref.eval_after
  for i in range(len(ref_params)):
    np.testing.assert_array_equal(hosts[0][f"param_{i}"], hosts[1][f"param_{i}"])
  ref_lines, mh_lines = _train_lines(ref_dir), _train_lines(mh_dir)
  assert [l["step"] for l in mh_lines] == [l["step"] for l in ref_lines] == list(range(1, STEPS + 1))
  for a, b in zip(ref_lines, mh_lines):
    for key in ("loss", "sft_loss", "rl_loss", "lambda", "reward_mean", "grad_norm"):
      np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-6, err_msg=key)
  assert sorted(int(s) for s in os.listdir(mh_dir / "checkpoints") if s.isdigit()) == [STEPS]


if __name__ == "__main__":
  if sys.argv[1] == "lengths":
    _lengths_worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
  elif sys.argv[1] == "reward_eval":
    _reward_eval_worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
  elif sys.argv[1] == "signal":
    _signal_worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
  elif sys.argv[1] == "damaged":
    _damaged_worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6])
  elif sys.argv[1] == "base":
    _base_worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
  else:
    _worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6])
