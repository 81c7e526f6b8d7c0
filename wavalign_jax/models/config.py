"""Model configuration shared by both architectures.

`arch` selects the stream layout:
  * "qwen2":       plain causal LM (the Qwen2.5 trunk, used by converter parity tests).
  * "interleaved": VITA-Audio, one token stream plus `num_mtp_modules` MCTP modules.
  * "parallel":    Kimi-Audio, audio + text id streams summed at the input, shared trunk,
                   text branch (the remaining trunk layers) and audio branch (MIMO layers).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping


# The ModelConfig fields a config may set over a checkpoint's model_config.json: how the model computes, never its
# shape. Each maps to whether evaluation applies it too: it restores the parameters as they were saved (dtype and
# layer stacking included) and takes no gradients, so only the activation numerics are its own.
RUNTIME_FIELDS = {"dtype": True, "attention_impl": True, "param_dtype": False, "remat": False, "scan_layers": False,
                  "logprob_chunk": False, "logprob_keep_logits": False, "attention_block": False}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  arch: str
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int              # trunk decoder layers (VITA: without the MCTP layers)
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rms_norm_eps: float = 1e-6
  rope_theta: float = 1e6
  # interleaved (VITA-Audio): number of MCTP modules, each one extra decoder layer.
  num_mtp_modules: int = 0
  # parallel (Kimi-Audio): the audio branch starts from the residual stream after trunk
  # layer `mimo_from_layer` (0-based) and runs `num_mimo_layers` layers of its own.
  mimo_from_layer: int = 0
  num_mimo_layers: int = 0
  adaptor_input_dim: int = 0   # > 0 enables the continuous-feature adaptor (vq_adaptor)
  # numerics and memory
  dtype: str = "float32"        # activation / matmul dtype ("bfloat16" on accelerators)
  param_dtype: str = "float32"
  remat: str = "none"           # "none" | "full" | "dots" (rematerialisation policy per layer)
  scan_layers: bool = True      # nn.scan over identical layers (faster compile, stacked params)
  logprob_chunk: int = 256      # positions per chunk when computing target log-probs
  logprob_keep_logits: bool = False  # keep the chunks' float32 logits for the backward pass instead of
                                     # recomputing them: one head product less, [rows, scored positions, V] f32
  attention_impl: str = "xla"   # "xla" (dot-product); "cudnn" uses jax.nn.dot_product_attention on GPU
  attention_block: int = 64     # "xla": queries per block; bounds the float32 scores at [block, length] per
                                # head and, without a KV cache, skips the keys after each block (causal); 0 = off

  def replace(self, **kw: Any) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  def with_runtime_fields(self, model_section: Mapping[str, Any], *, evaluation: bool = False) -> "ModelConfig":
    """This (a checkpoint's) model config with the RUNTIME_FIELDS a run's `config.model` sets."""
    return self.replace(**{k: model_section[k] for k, in_eval in RUNTIME_FIELDS.items()
                           if k in model_section and (in_eval or not evaluation)})

  @property
  def stack_sizes(self) -> dict[str, int]:
    """The decoder stacks and their layers (the model's modules, its KV cache, the HF layer mapping): a parallel
    model's trunk is layers 0..mimo_from_layer, shared by both streams; the text trunk the rest; the MIMO branch
    its own layers."""
    if self.arch == "parallel":
      return {"trunk": self.mimo_from_layer + 1, "text_trunk": self.num_layers - self.mimo_from_layer - 1,
              "mimo": self.num_mimo_layers}
    return {"trunk": self.num_layers}

  @property
  def streams(self) -> tuple[str, ...]:
    """Names of the id streams (keys of batch['inputs'] / ['targets'] / ['types'])."""
    return ("text", "audio") if self.arch == "parallel" else ("tokens",)


def qwen25_7b(**kw: Any) -> dict[str, Any]:
  """Shape of the Qwen2.5-7B trunk shared by VITA-Audio and Kimi-Audio (docs/method.md §2)."""
  shape = dict(hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28,
               num_kv_heads=4, head_dim=128, rms_norm_eps=1e-6, rope_theta=1e6)
  shape.update(kw)
  return shape


def vita_audio_7b(**kw: Any) -> ModelConfig:
  return ModelConfig(arch="interleaved", **qwen25_7b(vocab_size=168072, num_mtp_modules=10, **kw))


def kimi_audio_7b(**kw: Any) -> ModelConfig:
  return ModelConfig(arch="parallel", **qwen25_7b(vocab_size=168448, mimo_from_layer=21,
                                                  num_mimo_layers=6, adaptor_input_dim=5120, **kw))
