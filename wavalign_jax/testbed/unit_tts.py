"""A deterministic unit-TTS: text -> audio codes in a speaking style, and code noise.

It stands in for a speech tokenizer (GLM-4-Voice / Kimi audio codes) so the testbed can check what
the real benchmarks check: does the answer audio say the answer text, in the requested style?
Each word owns a fixed triple of "phonetic units" (from a hash of the word, so any word has one
and the table never depends on a vocabulary order). The style picks
  * the register: low / neutral / high voices shift the units into their own block of codes;
  * the duration: fast speech drops the middle unit, slow speech holds it twice.
So styles differ in which codes appear (pitch) or in how many (tempo), both visible in the codes.
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

UNITS_PER_REGISTER = 32
UNITS_PER_WORD = 3
# Register (block of codes) and unit pattern per style; the pattern indexes the word's unit triple.
STYLE_REGISTER = {"neutral": 1, "high": 2, "low": 0, "fast": 1, "slow": 1}
STYLE_PATTERN = {"neutral": (0, 1, 2), "high": (0, 1, 2), "low": (0, 1, 2), "fast": (0, 2),
                 "slow": (0, 1, 1, 2)}
STYLES: tuple[str, ...] = tuple(STYLE_REGISTER)
NUM_AUDIO_CODES = UNITS_PER_REGISTER * (max(STYLE_REGISTER.values()) + 1)


def word_units(word: str) -> tuple[int, ...]:
  """The word's unit triple, each in [0, UNITS_PER_REGISTER); stable across processes (not hash())."""
  digest = hashlib.blake2b(word.encode("utf-8"), digest_size=UNITS_PER_WORD).digest()
  return tuple(b % UNITS_PER_REGISTER for b in digest)


def check_style(style: str) -> str:
  if style not in STYLE_REGISTER:
    raise ValueError(f"unknown speaking style {style!r}; choose one of {list(STYLES)}")
  return style


def synthesize(text: str, style: str = "neutral") -> list[int]:
  """Audio codes (0-based, < NUM_AUDIO_CODES) speaking `text` (whitespace-separated words) in `style`."""
  base = STYLE_REGISTER[check_style(style)] * UNITS_PER_REGISTER
  pattern = STYLE_PATTERN[style]
  codes = []
  for word in text.split():
    units = word_units(word)
    codes.extend(base + units[i] for i in pattern)
  return codes


def add_noise(codes: Sequence[int], rate: float, rng: np.random.Generator,
              num_codes: int = NUM_AUDIO_CODES) -> list[int]:
  """Replaces each code with probability `rate` by a uniformly drawn *different* code.

  Drawing from the other num_codes - 1 codes makes `rate` the exact expected fraction of changed
  codes, which is what a configured noise level should mean.
  """
  if not 0.0 <= rate <= 1.0:
    raise ValueError(f"noise rate must lie in [0, 1], got {rate}")
  codes = np.asarray(codes, np.int64)
  hit = rng.random(codes.shape) < rate
  other = rng.integers(0, num_codes - 1, size=codes.shape)
  other = other + (other >= codes)  # skip the original code
  return np.where(hit, other, codes).astype(int).tolist()
