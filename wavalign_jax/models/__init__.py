"""Flax transformer for the three architectures and its functional API (WORKSPACE.md "Model API")."""
from wavalign_jax.models.api import (chunked_logprobs, decode, decode_hidden, extend_cache, for_decoding,
                                     gather_for_decoding, head_logits, in_compute_dtype, init_cache, init_mtp_cache,
                                     init_params, logits, logprob_fn, mtp_decode, mtp_logits, param_logical_axes,
                                     param_shardings, share_mtp_prefix, share_prefix, target_logprobs,
                                     tiny_config)
from wavalign_jax.models.config import ModelConfig
from wavalign_jax.models.transformer import HEADS, Transformer, causal_mask

__all__ = ["ModelConfig", "Transformer", "HEADS", "causal_mask", "chunked_logprobs", "decode", "decode_hidden",
           "extend_cache", "head_logits", "for_decoding", "gather_for_decoding", "in_compute_dtype", "init_cache",
           "init_mtp_cache", "init_params", "logits", "logprob_fn", "mtp_decode", "mtp_logits", "param_logical_axes",
           "param_shardings", "share_mtp_prefix", "share_prefix", "target_logprobs", "tiny_config"]
