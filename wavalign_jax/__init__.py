"""wavalign_jax: adaptive hybrid (SFT + text-only GRPO) post-training of spoken dialogue models in JAX."""
