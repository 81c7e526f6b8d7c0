"""The activation sharding rules are on in the jitted step: compiled on 8 fake devices (FSDP), each device does
1/8 of the FLOPs and holds ~1/8 of the temporaries of one device. Without the rules XLA keeps the whole batch's
activations on every device (measured: temporaries 0.53 of one device's here, 1/8 with the rules)."""
import jax
import numpy as np

from wavalign_jax import gating, models, optim, sharding, steps, train_state
from wavalign_jax.models.config import ModelConfig

CFG = ModelConfig(arch="qwen2", vocab_size=512, hidden_size=64, intermediate_size=256, num_layers=2, num_heads=4,
                  num_kv_heads=2, head_dim=16, dtype="float32", remat="none", logprob_chunk=64)
B, L = 32, 128


def _analysis(mesh):
  """(per-device FLOPs, per-device temporary bytes) of the SFT step compiled ahead of time on `mesh`."""
  rng = np.random.default_rng(0)
  ids = rng.integers(0, CFG.vocab_size, (B, L)).astype(np.int32)
  seq = dict(inputs={"tokens": ids}, targets={"tokens": np.roll(ids, -1, 1)},
             types={"tokens": np.where(np.arange(L) >= 32, 1, 0)[None].repeat(B, 0).astype(np.int32)},
             positions=np.arange(L, dtype=np.int32)[None].repeat(B, 0), segment_ids=np.ones((B, L), np.int32))
  optimizer = optim.make_optimizer(optim.OptimConfig())
  step_cfg = steps.StepConfig(gate=gating.GateConfig(mode="sft_only"))
  create = lambda: train_state.create(models.init_params(CFG, jax.random.key(0)), optimizer,
                                      gating.init_gate_state(step_cfg.gate), jax.random.key(0))
  abstract = jax.eval_shape(create)
  state_sharding = train_state.state_shardings(
      abstract, train_state.param_shardings(models.param_logical_axes(CFG), mesh), optimizer, mesh)
  step = steps.jit_step(steps.make_hybrid_step(lambda p, b: models.target_logprobs(p, CFG, b), optimizer, step_cfg),
                        state_sharding, mesh)
  compiled = step.lower(train_state.abstract_with_shardings(abstract, state_sharding),
                        steps.device_put_batch({"sft": seq}, mesh)).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return cost["flops"], compiled.memory_analysis().temp_size_in_bytes


def test_step_work_and_temporaries_split_over_8_devices():
  assert jax.device_count() == 8, "conftest sets 8 fake CPU devices"
  flops1, temp1 = _analysis(sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1]))
  flops8, temp8 = _analysis(sharding.make_mesh((1, 8, 1)))
  assert flops8 <= 1.1 * flops1 / 8, (flops8, flops1)   # the target: within 10% of total / 8
  assert temp8 <= 0.2 * temp1, (temp8, temp1)            # ~1/8 with the rules, ~1/2 without
