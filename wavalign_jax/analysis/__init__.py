"""Diagnostics of the paper's four observations, one module each, as pure functions over arrays / pytrees:

  token_shift       (1) how SFT and RL move the per-token log-probabilities of reference responses
  judge_agreement   (2) how well judge scores agree with reference (human or testbed-true) scores, per dimension
  gradient_geometry (3) text- vs speech-token policy gradients: energies, coupling (cosine), SNR
  rollout_diversity (4) per-group reward variance and distinct-n: which groups carry information
"""
