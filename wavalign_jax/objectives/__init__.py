"""Objectives over (per-position log-probs, token types, masks): SFT, GRPO, DPO, the hybrid and its λ gate."""
from wavalign_jax.objectives.aggregation import LossTerm, aggregate, aggregate_count, term_value
from wavalign_jax.objectives.dpo import DPOConfig, dpo_loss, make_dpo_loss, sequence_logp
from wavalign_jax.objectives.gate import GateConfig, GateState, init_gate_state, update_gate
from wavalign_jax.objectives.grpo import (GRPOConfig, group_advantages, group_weights, grpo_count, grpo_loss,
                                          group_fallback, kl_divergence, rl_token_weights)
from wavalign_jax.objectives.hybrid import HybridConfig, hybrid_counts, make_hybrid_loss
from wavalign_jax.objectives.sft import SFTConfig, sft_count, sft_loss, sft_token_weights

__all__ = [
    "LossTerm", "aggregate", "aggregate_count", "term_value",
    "DPOConfig", "dpo_loss", "make_dpo_loss", "sequence_logp",
    "GateConfig", "GateState", "init_gate_state", "update_gate",
    "GRPOConfig", "group_advantages", "group_weights", "grpo_count", "grpo_loss", "group_fallback", "kl_divergence",
    "rl_token_weights",
    "HybridConfig", "hybrid_counts", "make_hybrid_loss",
    "SFTConfig", "sft_count", "sft_loss", "sft_token_weights",
]
