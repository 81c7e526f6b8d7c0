"""IFEval instruction checkers (the verifiable instructions VoiceBench's ifeval subset uses).

Strict: the response as is. Loose: the instruction counts as followed if any of 8 variants passes
(drop the first line, the last line, both, or none; with or without '*'). Score = mean of strict /
loose x prompt-level / instruction-level accuracy. Instructions whose check needs a language
detector (`language:response_language`) are not supported and raise a clear error.
"""
from __future__ import annotations

import json
import re
from typing import Any, Callable, Sequence


def _compare(count: int, relation: str, n: int) -> bool:
  if relation == "less than":
    return count < n
  if relation == "at least":
    return count >= n
  raise ValueError(f"unknown relation {relation!r} (expected 'less than' or 'at least')")


def _words(text: str) -> list[str]:
  return re.findall(r"\w+", text)


def _sentences(text: str) -> list[str]:
  parts = re.split(r"(?<!\b[A-Z][a-z]\.)(?<!\b[A-Z]\.)(?<=[.!?])\s+(?=\S)", text.strip())
  return [p for p in parts if p.strip()]


def _paragraphs_ok(parts: list[str], n: int) -> bool:
  parts = [p.strip() for p in parts]
  if any(not p for p in parts[1:-1]):  # an empty paragraph in the middle breaks the layout
    return False
  return len([p for p in parts if p]) == n


def _postscript(text: str, postscript_marker: str) -> bool:
  marker = postscript_marker.strip().lower()
  if marker == "p.p.s":
    pattern = r"\s*p\.\s?p\.\s?s.*$"
  elif marker == "p.s.":
    pattern = r"\s*p\.\s?s\..*$"
  else:
    pattern = r"\s*" + re.escape(marker) + r".*$"
  return bool(re.findall(pattern, text.lower(), flags=re.MULTILINE))


def _json(text: str) -> bool:
  body = re.sub(r"^```(?:json|Json|JSON)?\s*|\s*```$", "", text.strip())
  try:
    json.loads(body)
  except ValueError:
    return False
  return True


def _two_responses(text: str) -> bool:
  parts = [p.strip() for p in text.split("******")]
  if any(not p for p in parts[1:-1]):
    return False
  valid = [p for p in parts if p]
  return len(valid) == 2 and valid[0] != valid[1]


def _nth_paragraph_first_word(text: str, num_paragraphs: int, nth_paragraph: int, first_word: str) -> bool:
  paragraphs = [p for p in re.split(r"\n\n", text) if p.strip()]
  if len(paragraphs) != num_paragraphs or nth_paragraph > len(paragraphs):
    return False
  words = paragraphs[nth_paragraph - 1].strip().split()
  word = words[0].lstrip("'\"").rstrip(".,!?;:'\"").lower() if words else ""
  return word == first_word.lower()


CHECKERS: dict[str, Callable[..., bool]] = {
    "punctuation:no_comma": lambda t: "," not in t,
    "length_constraints:number_words": lambda t, num_words, relation: _compare(len(_words(t)), relation, num_words),
    "length_constraints:number_sentences":
        lambda t, num_sentences, relation: _compare(len(_sentences(t)), relation, num_sentences),
    "length_constraints:number_paragraphs":
        lambda t, num_paragraphs: _paragraphs_ok(re.split(r"\s?\*\*\*\s?", t), num_paragraphs),
    "length_constraints:nth_paragraph_first_word": _nth_paragraph_first_word,
    "detectable_content:number_placeholders":
        lambda t, num_placeholders: len(re.findall(r"\[.*?\]", t)) >= num_placeholders,
    "detectable_content:postscript": _postscript,
    "detectable_format:number_bullet_lists":
        lambda t, num_bullets: len(re.findall(r"^\s*\*[^\*].*$", t, re.M))
        + len(re.findall(r"^\s*-.*$", t, re.M)) == num_bullets,
    "detectable_format:constrained_response":
        lambda t: any(o in t for o in ("My answer is yes.", "My answer is no.", "My answer is maybe.")),
    "detectable_format:number_highlighted_sections":
        lambda t, num_highlights: sum(1 for h in re.findall(r"\*[^\n\*]*\*", t) if h.strip("*").strip())
        + sum(1 for h in re.findall(r"\*\*[^\n\*]*\*\*", t) if h.strip("*").strip()) >= num_highlights,
    "detectable_format:multiple_sections":
        lambda t, section_spliter, num_sections:
        len(re.split(r"\s?" + re.escape(section_spliter) + r"\s?\d+\s?", t)) - 1 >= num_sections,
    "detectable_format:json_format": _json,
    "detectable_format:title": lambda t: any(s.strip() for s in re.findall(r"<<([^\n]+)>>", t)),
    "combination:two_responses": _two_responses,
    "combination:repeat_prompt":
        lambda t, prompt_to_repeat: t.strip().lower().startswith(prompt_to_repeat.strip().lower()),
    "startend:end_checker":
        lambda t, end_phrase: t.strip().strip('"').lower().endswith(end_phrase.strip().lower()),
    "startend:quotation": lambda t: len(t.strip()) > 1 and t.strip()[0] == '"' and t.strip()[-1] == '"',
    "change_case:capital_word_frequency":
        lambda t, capital_frequency, capital_relation:
        _compare(sum(w.isupper() for w in _words(t)), capital_relation, capital_frequency),
    "change_case:english_capital": lambda t: t.isupper(),
    "change_case:english_lowercase": lambda t: t.islower(),
    "keywords:existence": lambda t, keywords: all(re.search(k, t, re.I) for k in keywords),
    "keywords:frequency":
        lambda t, keyword, frequency, relation: _compare(len(re.findall(keyword, t, re.I)), relation, frequency),
    "keywords:forbidden_words":
        lambda t, forbidden_words: not any(re.search(r"\b" + w + r"\b", t, re.I) for w in forbidden_words),
    "keywords:letter_frequency":
        lambda t, letter, let_frequency, let_relation: _compare(t.lower().count(letter.lower()), let_relation,
                                                                let_frequency),
}


def _variants(text: str) -> list[str]:
  lines = text.split("\n")
  base = [text, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
  return base + [v.replace("*", "") for v in base]


def check(instruction_id: str, text: str, kwargs: dict[str, Any], *, loose: bool, where: str = "") -> bool:
  if instruction_id not in CHECKERS:
    raise ValueError(f"{where}: unsupported IFEval instruction {instruction_id!r}; supported: {sorted(CHECKERS)}")
  kwargs = {k: v for k, v in (kwargs or {}).items() if v is not None}
  fn = CHECKERS[instruction_id]
  try:
    if not loose:
      return bool(text.strip()) and fn(text, **kwargs)
    return any(v.strip() and fn(v, **kwargs) for v in _variants(text))
  except TypeError as e:
    raise ValueError(f"{where}: bad kwargs {sorted(kwargs)} for IFEval instruction {instruction_id!r}: {e}") from None


def ifeval_metrics(records: Sequence[dict[str, Any]]) -> dict[str, float]:
  """prompt/instruction x strict/loose accuracies (0-1) and their mean `score`."""
  counts = {k: [] for k in ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose")}
  for rec in records:
    where = rec.get("_where", str(rec.get("id")))
    ids = rec.get("instruction_id_list")
    kwargs_list = rec.get("kwargs")
    if not isinstance(ids, list) or not isinstance(kwargs_list, list) or len(ids) != len(kwargs_list):
      raise ValueError(f"{where}: ifeval needs equal-length lists 'instruction_id_list' and 'kwargs'")
    for mode in ("strict", "loose"):
      ok = [check(i, rec["text"], kw, loose=mode == "loose", where=where) for i, kw in zip(ids, kwargs_list)]
      counts[f"prompt_{mode}"].append(float(all(ok)))
      counts[f"instruction_{mode}"].extend(map(float, ok))
  metrics = {k: sum(v) / len(v) if v else float("nan") for k, v in counts.items()}
  metrics["score"] = sum(metrics.values()) / 4
  return metrics
