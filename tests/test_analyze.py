"""`python -m wavalign_jax.analyze` end to end on a tiny testbed run of each architecture."""
import json

import numpy as np
import pytest

from conftest import tiny_config
from wavalign_jax import analyze, train
from wavalign_jax.rewards.base import RewardResult


@pytest.mark.parametrize("arch", ["interleaved", "parallel"])
def test_analyze_a_testbed_run(tmp_path, tiny_base, arch, monkeypatch):
  """Interleaved: the judge agreement from a scores file; parallel: without one, the testbed judge against its own
  true scores."""
  config = tiny_config(arch, tiny_base(arch))
  config.train.update(total_steps=2, checkpoint_every=2)
  train.train(config, str(tmp_path / "run"))
  scores = tmp_path / "scores.jsonl"
  scores.write_text("\n".join(json.dumps({"judge": {"semantic": s, "acoustic": (s * 7) % 5 + 1},
                                          "reference": {"semantic": s, "acoustic": s}}) for s in [1, 2, 3, 4, 5] * 4))
  real_reward = analyze.make_reward_fn

  def failing_every_fourth(config, workdir):   # a judge whose every fourth call fails: fallback 1000, counted
    reward = real_reward(config, workdir)

    def scored(items):
      r = reward(items)
      failed = np.arange(len(items)) % 4 == 0
      return RewardResult(np.where(failed, 1000.0, r.scores).astype(np.float32), failed, r.info)
    return scored

  monkeypatch.setattr(analyze, "make_reward_fn", failing_every_fourth)
  out_dir = tmp_path / "analysis"
  out = analyze.analyze(config, str(tmp_path / "run"), str(out_dir), examples=4,
                        judge_scores=str(scores) if arch == "interleaved" else None)
  assert set(out["figures"]) == {"token_shift", "rollout_diversity", "gradient_geometry", "judge_agreement"}
  for name in out["figures"].values():
    assert (out_dir / name).read_bytes()[:4] == b"\x89PNG"
  assert json.loads((out_dir / "analysis.json").read_text())["checkpoint"] == str(tmp_path / "run")
  report = (out_dir / "analysis.md").read_text()
  assert "## 2. Judge agreement" in report and "## 3. Gradient geometry" in report
  # Two training steps moved the policy away from the base model.
  assert out["token_shift"]["text"]["mean_abs"] > 0
  assert 0.0 <= out["rollout_diversity"]["diversity/informative"] <= 1.0
  rows = 4 * config.rollout.group_size   # 4 examples x G rollouts: every fourth failed, and left out of the mean
  assert out["rollout_diversity"]["reward_failed"] == rows // 4 and out["rollout_diversity"]["reward_mean"] <= 5
  assert set(out["judge_agreement"]) == {"semantic", "acoustic"}
  if arch == "interleaved":   # the scores file's semantic judge equals the truth, its acoustic one does not
    assert out["judge_agreement"]["semantic"]["spearman"]["value"] == pytest.approx(1.0)
    assert out["judge_agreement"]["acoustic"]["spearman"]["value"] < 1.0
