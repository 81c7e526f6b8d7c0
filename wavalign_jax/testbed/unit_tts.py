"""An expressive unit-TTS: text -> audio codes in a speaking style, with prosodic variation.

It stands in for a speech tokenizer (GLM-4-Voice / Kimi audio codes) so the testbed can check what
the real benchmarks check: does the answer audio say the answer text, in the requested style?
Each word owns a fixed triple of "phonetic units" (from a hash of the word, so any word has one
and the table never depends on a vocabulary order). A style sets
  * the register: low / neutral / high voices shift the units into their own block of codes;
  * the duration: fast speech drops the middle unit, slow speech holds it twice;
  * a distribution over prosodic variants of each word: `plain`, `long` (the last unit held) and
    `pause` (a pause code after the word). Speech therefore has entropy: a sentence has many valid
    realisations, and styles differ in their statistics (excited high voices lengthen, calm low
    voices pause), not only in a fixed block of codes.
`synthesize(text, style)` without an rng gives the canonical (all-plain) realisation;
with an rng it draws one realisation. `expressiveness` < 1 mixes the style's prosody with the
neutral one: a less expressive speaker (the testbed's base model is trained on such speech).

Two scores grade a realisation (testbed/metrics.py averages them into EQ):
  * intelligibility: 1 - normalised edit distance between the unit sequences of the audio and of
    the canonical realisation, ignoring register, pauses and held units (does it say the words?);
  * style: per word, the audio must realise the word in the style's register and duration, scored
    by the typicality p(variant | style) / max_v p(v | style) of the variant it used (0 if the
    word is not realised in the style at all); the mean over the words of the text.
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
VARIANTS = ("plain", "long", "pause")
# p(variant | style) over VARIANTS: the style's prosody. Neutral and fast speech are mostly plain;
# excited (high) speech holds words, calm (low) speech pauses, slow speech does both.
STYLE_PROSODY = {"neutral": (0.8, 0.1, 0.1), "high": (0.3, 0.6, 0.1), "low": (0.3, 0.1, 0.6),
                 "fast": (0.9, 0.05, 0.05), "slow": (0.2, 0.45, 0.35)}
PAUSE = UNITS_PER_REGISTER * (max(STYLE_REGISTER.values()) + 1)   # the one pause code, after the registers
NUM_AUDIO_CODES = PAUSE + 1


def word_units(word: str) -> tuple[int, ...]:
  """The word's unit triple, each in [0, UNITS_PER_REGISTER); stable across processes (not hash())."""
  digest = hashlib.blake2b(word.encode("utf-8"), digest_size=UNITS_PER_WORD).digest()
  return tuple(b % UNITS_PER_REGISTER for b in digest)


def check_style(style: str) -> str:
  if style not in STYLE_REGISTER:
    raise ValueError(f"unknown speaking style {style!r}; choose one of {list(STYLES)}")
  return style


def prosody(style: str, expressiveness: float = 1.0) -> np.ndarray:
  """p(variant) over VARIANTS for a speaker of the given expressiveness (1: the style's own, 0: neutral)."""
  if not 0.0 <= expressiveness <= 1.0:
    raise ValueError(f"expressiveness must lie in [0, 1], got {expressiveness}")
  own, neutral = np.asarray(STYLE_PROSODY[check_style(style)]), np.asarray(STYLE_PROSODY["neutral"])
  return expressiveness * own + (1.0 - expressiveness) * neutral


def realise_word(word: str, style: str, variant: str) -> tuple[int, ...]:
  """The codes of one word in `style` with one prosodic variant."""
  base = STYLE_REGISTER[style] * UNITS_PER_REGISTER
  units = word_units(word)
  codes = tuple(base + units[i] for i in STYLE_PATTERN[style])
  if variant == "long":
    return codes + codes[-1:]
  if variant == "pause":
    return codes + (PAUSE,)
  return codes


def synthesize(text: str, style: str = "neutral", rng: np.random.Generator | None = None,
               expressiveness: float = 1.0) -> list[int]:
  """Audio codes (0-based, < NUM_AUDIO_CODES) speaking `text` (whitespace-separated words) in `style`:
  the canonical all-plain realisation without `rng`, else one drawn from the style's prosody."""
  p = prosody(style, expressiveness)
  codes: list[int] = []
  for word in text.split():
    variant = "plain" if rng is None else VARIANTS[int(rng.choice(len(VARIANTS), p=p))]
    codes.extend(realise_word(word, style, variant))
  return codes


def _content_units(codes: Sequence[int]) -> list[int]:
  """Units without register, pauses or held repeats: what intelligibility compares."""
  out: list[int] = []
  for c in codes:
    if c == PAUSE:
      continue
    if not out or out[-1] != c:
      out.append(int(c))
  return [c % UNITS_PER_REGISTER for c in out]


def edit_distance(a: Sequence[int], b: Sequence[int]) -> int:
  """Levenshtein distance (unit costs for insertion, deletion, substitution)."""
  prev = list(range(len(b) + 1))
  for i, x in enumerate(a, 1):
    cur = [i]
    for j, y in enumerate(b, 1):
      cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
    prev = cur
  return prev[-1]


def intelligibility(codes: Sequence[int], text: str, style: str) -> float:
  """1 - edit distance / max length between the content units of `codes` and of `text` said in `style`."""
  ref = _content_units(synthesize(text, style))
  if not ref:
    return 0.0
  hyp = _content_units(codes)
  return 1.0 - edit_distance(hyp, ref) / max(len(hyp), len(ref))


def style_match(codes: Sequence[int], text: str, style: str) -> float:
  """Mean typicality of the variant each word of `text` is realised with in `style` (see module docstring).

  The words are aligned with the codes as a whole, each as one of its variants in `style` or, where none fits, as
  a 0-word of its plain length; codes left over after the last word count as one more 0-word. Of all alignments the
  best scoring one counts: a word matched greedily on its own could take the next word's first code (a `long`
  variant ends with the unit the next word starts with) and misalign every word after it.
  """
  words = text.split()
  if not words:
    return 0.0
  p = np.asarray(STYLE_PROSODY[check_style(style)])
  typicality = dict(zip(VARIANTS, p / p.max()))
  codes = tuple(int(c) for c in codes)
  # Forward over the words: the best total of every position the words so far can end at (the score adds up over
  # words, so the best path to a position is all its future needs; no recursion, whatever the length).
  ends = {0: 0.0}
  for word in words:
    realised = [(realise_word(word, style, v), typicality[v]) for v in VARIANTS]
    plain = len(realise_word(word, style, "plain"))
    after: dict[int, float] = {}
    for pos, total in ends.items():
      fits = [(pos + len(r), total + t) for r, t in realised if codes[pos:pos + len(r)] == r] or [(pos + plain, total)]
      for end, value in fits:
        after[end] = max(after.get(end, -np.inf), value)
    ends = after
  exact = max((v for end, v in ends.items() if end >= len(codes)), default=-np.inf)   # no code left over
  return max(exact / len(words), max(ends.values()) / (len(words) + 1))


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
