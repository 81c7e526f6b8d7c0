"""Hugging Face <-> Flax conversion: the per-tensor parameter mapping (`hf_mapping`) and streaming
safetensors access (`safetensors_io`)."""
from wavalign_jax.conversion.hf_mapping import (Slot, config_from_hf, hf_names, hf_slot, hf_to_params,
                                                params_to_hf, to_flax, to_hf)

__all__ = ["Slot", "config_from_hf", "hf_names", "hf_slot", "hf_to_params", "params_to_hf", "to_flax", "to_hf"]
