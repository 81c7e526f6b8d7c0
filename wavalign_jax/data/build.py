"""Dialogue JSONL -> ArrayRecord shards of laid-out, typed examples (the command line: data_pipeline/build.py).

Input records (WavAlign schema): `messages` (system/user turns; "<|audio|>" in a content string
marks where the next entry of `audios` goes, otherwise the audios follow the last user turn's
text), `audios` (question audio), `question_text`, `sft_target_text`, `sft_target_audio`;
dpo adds `rejected_text`, `rejected_audio`; optional `answer`/`reference`, `style`, `id`.
Audio fields are inline code lists or paths (relative to the JSONL file) to pre-computed
GLM-4-Voice code files (.npy / .json / .txt).

Layout, token types and loss masks are computed once here; every error names file and line. What a run
could not load is settled here too, not hours into training: records longer than `--max_length` (default:
the experiment configs' largest length bucket) are skipped and counted, words outside a word-level
tokenizer's vocabulary are counted (`--strict` refuses both), and a build that would hold no record fails
and leaves any existing dataset in place.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import shutil
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import tokenizers

from wavalign_jax import config_lib, files
from wavalign_jax import tokenizer as tokenizer_lib
from wavalign_jax.data import layouts, loader
from wavalign_jax.data import vocab as vocab_lib
from wavalign_jax.data.records import INFO_FILE, KINDS, Record, decode_record, encode_record
from wavalign_jax.tokenizer import TOKENIZER_FILE

AUDIO_PLACEHOLDER = "<|audio|>"
RAW_AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".m4a", ".opus")
SHARD_PATTERN = "{name}-{index:05d}-of-{count:05d}.array_record"
# The longest example the experiment configs load (prompt + response bucket of experiments/vita.py and kimi.py).
DEFAULT_MAX_LENGTH = config_lib.padded_lengths(config_lib.base_config().data)[-1]


def load_codes(value: Any, base_dir: str, field: str) -> list[int]:
  """Audio codes from an inline list or a code file; raw audio is refused with a how-to."""
  if isinstance(value, list):
    if not all(isinstance(c, int) and not isinstance(c, bool) for c in value):
      raise ValueError(f"field {field!r}: inline audio must be a list of integer code ids")
    return value
  if not isinstance(value, str):
    raise ValueError(f"field {field!r}: expected a list of code ids or a path, got {type(value).__name__}")
  path = value if os.path.isabs(value) else os.path.join(base_dir, value)
  suffix = os.path.splitext(path)[1].lower()
  if suffix in RAW_AUDIO_SUFFIXES:
    raise ValueError(
        f"field {field!r}: {value} is raw audio, but this project consumes discrete code ids. Tokenize it outside "
        "this project with the GLM-4-Voice speech tokenizer (THUDM/glm-4-voice-tokenizer: 16 kHz input, 12.5 Hz, "
        "16384 codes; PyTorch) and point the field at a .npy/.json/.txt file of code ids or inline the list")
  if not os.path.exists(path):
    raise ValueError(f"field {field!r}: audio code file {path} does not exist")
  if suffix not in (".npy", ".json", ".txt"):
    raise ValueError(f"field {field!r}: unsupported code file {path}; use .npy, .json or .txt")
  try:   # an empty .npy (EOFError), a directory (OSError), a word in a .txt (ValueError): the field and file named
    if suffix == ".npy":
      arr = np.load(path)
    elif suffix == ".json":
      with open(path) as f:
        arr = np.asarray(json.load(f))
    else:
      with open(path) as f:
        arr = np.asarray(f.read().replace(",", " ").split(), dtype=np.int64)
  except (OSError, EOFError, ValueError) as e:
    raise ValueError(f"field {field!r}: cannot read audio codes from {path} ({type(e).__name__}: {e})") from None
  arr = arr.reshape(-1) if arr.size == 1 else np.squeeze(arr)   # one code is a list of one, not a scalar
  if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
    raise ValueError(f"field {field!r}: {path} must hold a 1-D list of integer codes, got {arr.dtype}{arr.shape}")
  return arr.tolist()


def _field(record: dict, name: str, kind: type | tuple[type, ...]) -> Any:
  if name not in record:
    raise ValueError(f"missing field {name!r}")
  if not isinstance(record[name], kind):
    raise ValueError(f"field {name!r} must be {getattr(kind, '__name__', kind)}, got {type(record[name]).__name__}")
  return record[name]


@dataclasses.dataclass
class Builder:
  """Turns one JSON record into an encoded record (bytes) for one architecture and dataset kind."""
  tokenizer_path: str
  arch: str = "interleaved"
  kind: str = "sft"
  ratios: Sequence[int] = layouts.BOOST_RATIOS
  audio_delay: int = layouts.AUDIO_DELAY
  audio_offset: int = tokenizer_lib.RELEASED_KIMI["audio_offset"]   # parallel only (kimia_token_offset)
  num_audio_codes: int = tokenizer_lib.KIMI_NUM_AUDIO_CODES           # parallel only

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"--kind={self.kind!r}; expected one of {sorted(KINDS)}")
    if not os.path.isfile(self.tokenizer_path):
      raise FileNotFoundError(f"tokenizer {self.tokenizer_path} does not exist")
    self.tok = tokenizers.Tokenizer.from_file(self.tokenizer_path)
    if self.arch == "interleaved":
      self.vocab = vocab_lib.interleaved_vocab(self.tok, self.tokenizer_path)
      self.role_ids = vocab_lib.role_ids(self.tok)
    elif self.arch == "parallel":
      self.vocab = vocab_lib.parallel_vocab(self.tok, self.tokenizer_path, self.audio_offset, self.num_audio_codes)
    else:
      raise ValueError(f"--arch={self.arch!r}; expected 'interleaved' or 'parallel'")
    self.unk_id = vocab_lib.unknown_id(self.tok)
    self.unknown_words: list[str] = []   # of the record being encoded (encode_line)

  def _encode(self, text: str) -> list[int]:
    """Text ids; words the tokenizer maps to its unknown token are collected in `unknown_words`."""
    enc = self.tok.encode(text, add_special_tokens=False)
    if self.unk_id is not None:
      self.unknown_words += [text[a:b] for i, (a, b) in zip(enc.ids, enc.offsets) if i == self.unk_id]
    return enc.ids

  @property
  def streams(self) -> tuple[str, ...]:
    return layouts.INTERLEAVED_STREAMS if self.arch == "interleaved" else layouts.PARALLEL_STREAMS

  def _turns(self, record: dict, base_dir: str) -> list[layouts.Turn]:
    messages = _field(record, "messages", list)
    raw_audios = record.get("audios")   # missing or null: no audio; anything else must be a list
    raw_audios = [] if raw_audios is None else raw_audios
    if not isinstance(raw_audios, list):
      raise ValueError(f"field 'audios' must be a list of code lists or code-file paths, got "
                       f"{type(raw_audios).__name__} {str(raw_audios)[:40]!r}")
    audios = [load_codes(a, base_dir, f"audios[{i}]") for i, a in enumerate(raw_audios)]
    for i, codes in enumerate(audios):
      if not len(codes):
        raise ValueError(f"field 'audios[{i}]': no audio codes (an audio message needs at least one)")
    turns, used = [], 0
    for k, m in enumerate(messages):
      if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
        raise ValueError(f"messages[{k}] must be an object with string 'role' and 'content'")
      pieces = []
      for j, part in enumerate(m["content"].split(AUDIO_PLACEHOLDER)):
        if j:
          if used >= len(audios):
            raise ValueError(f"messages[{k}]: more {AUDIO_PLACEHOLDER} placeholders than entries in 'audios'")
          pieces.append(("audio", tuple(audios[used])))
          used += 1
        if part:
          pieces.append(("text", tuple(self._encode(part))))
      turns.append(layouts.Turn(m["role"], tuple(pieces)))
    if used == 0 and audios:  # no placeholders: the question audio follows the last user turn's text
      users = [k for k, t in enumerate(turns) if t.role == "user"]
      if not users:
        raise ValueError("'audios' given but 'messages' has no user turn to attach them to")
      t = turns[users[-1]]
      turns[users[-1]] = layouts.Turn(t.role, t.pieces + tuple(("audio", tuple(a)) for a in audios))
    elif used != len(audios):
      raise ValueError(f"{used} {AUDIO_PLACEHOLDER} placeholders but {len(audios)} entries in 'audios'")
    return turns

  def _prompt(self, turns: list[layouts.Turn]) -> layouts.Example:
    if self.arch == "interleaved":
      return layouts.interleaved_prompt(turns, self.vocab, self.role_ids)
    system = tuple(p for t in turns if t.role == "system" for p in t.pieces)
    rest = [t for t in turns if t.role != "system"]
    first_user = next((k for k, t in enumerate(rest) if t.role == "user"), None)
    if system and first_user is None:
      raise ValueError("a system turn needs a user turn to merge into (parallel template)")
    if system:
      rest[first_user] = layouts.Turn("user", system + rest[first_user].pieces)
    return layouts.parallel_prompt(rest, self.vocab)

  def prompt(self, record: dict, base_dir: str) -> layouts.Example:
    """The laid-out prompt (system/user turns, question audio, assistant header) of one record."""
    return self._prompt(self._turns(record, base_dir))

  def _response(self, text: str, audio: Any, base_dir: str, field: str) -> layouts.Example:
    """One response laid out; an error names which (`field`: sft_target_audio, the chosen one, or rejected_audio)."""
    codes = load_codes(audio, base_dir, field)
    ids = self._encode(text)
    try:
      if self.arch == "interleaved":
        return layouts.interleaved_response(ids, codes, self.vocab, self.ratios)
      return layouts.parallel_response(ids, codes, self.vocab, self.audio_delay)
    except ValueError as e:
      raise ValueError(f"{field.removesuffix('_audio')}: {e}") from None

  def examples(self, record: dict, base_dir: str) -> tuple[dict[str, layouts.Example], dict[str, Any]]:
    """Laid-out examples and reward metadata of one record (raises ValueError naming the field)."""
    if not isinstance(record, dict):
      raise ValueError(f"record must be a JSON object, got {type(record).__name__}")
    prompt = self.prompt(record, base_dir)
    target_text = _field(record, "sft_target_text", str)
    chosen = layouts.join(prompt, self._response(target_text, _field(record, "sft_target_audio", (list, str)),
                                                 base_dir, "sft_target_audio"))
    meta = {"reference_text": target_text, "style": record.get("style"), "id": record.get("id"),
            "task": record.get("task"), "subset": record.get("subset"),
            "answer": record.get("answer", record.get("reference", target_text)),
            "question_text": _field(record, "question_text", str) if self.kind == "rl"
                             else record.get("question_text")}
    if self.kind == "dpo":
      rejected = layouts.join(prompt, self._response(
          _field(record, "rejected_text", str), _field(record, "rejected_audio", (list, str)), base_dir,
          "rejected_audio"))
      return {"chosen": chosen, "rejected": rejected}, meta
    return {"example": chosen}, meta

  def encode_line(self, line: str, path: str, line_no: int) -> tuple[bytes, int]:
    """(encoded record, longest example length) of one JSONL line; errors name `path:line_no`; the words
    outside the tokenizer's vocabulary are left in `unknown_words`."""
    self.unknown_words = []
    try:
      record = json.loads(line)
      examples, meta = self.examples(record, os.path.dirname(os.path.abspath(path)))
    except (ValueError, json.JSONDecodeError) as e:
      raise ValueError(f"{path}:{line_no}: {e}") from e
    meta.update(source=path, line=line_no)
    return encode_record(self.kind, examples, meta), max(len(ex) for ex in examples.values())


def iter_lines(paths: Sequence[str]) -> Iterator[tuple[str, int, str]]:
  """(path, line number, text) of every non-blank line; a line that is not UTF-8 is an error naming it."""
  for path in paths:
    with open(path, "rb") as f:
      for line_no, raw in enumerate(f, 1):
        try:
          line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
          raise ValueError(f"{path}:{line_no}: not valid UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1}); "
                           "re-encode the file as UTF-8") from None
        if line.strip():
          yield path, line_no, line


def content_hasher(shard_names: Sequence[str]) -> Any:
  """A hashlib object for the `content_sha256` of a dataset (dataset_info.json), fed its shard names; then
  `add_record` of each record in the order written (record j in shard j % number of shards)."""
  return hashlib.sha256(json.dumps(list(shard_names)).encode())


def add_record(content: Any, data: bytes) -> None:
  content.update(len(data).to_bytes(8, "little") + data)


def verify_content(path: str, visit: Callable[[Record], None] | None = None) -> tuple[str, str]:
  """(recorded, recomputed) `content_sha256` of the built dataset at `path`, from its shards' records: they differ
  when a shard was replaced or altered since the build. `visit` sees each record, decoded, in the same pass (what
  `data_pipeline.inspect` counts: the dataset is read once)."""
  paths, info = loader.resolve_paths(path)
  source = loader.RecordSource(paths)   # read one record at a time, in the order the build wrote them
  content = content_hasher(info["shards"])
  for j in range(len(source)):
    shard, index = j % len(paths), j // len(paths)
    data = source.shard_record(shard, index)
    add_record(content, data)
    if visit is not None:
      visit(decode_record(data, f"{paths[shard]}[{index}]"))
  return info.get("content_sha256", ""), content.hexdigest()


def build(builder: Builder, inputs: Sequence[str], output_dir: str, num_shards: int = 1,
          max_length: int = DEFAULT_MAX_LENGTH, name: str = "data", overwrite: bool = False,
          strict: bool = False) -> dict[str, Any]:
  """Writes `num_shards` ArrayRecord shards (record j goes to shard j % num_shards), a copy of the tokenizer and
  dataset_info.json, whose paths are relative to the dataset: the folder can be moved or copied whole.

  Records longer than `max_length` (> 0; 0 = no limit) are skipped and counted in the info file, as are the
  words outside the tokenizer's vocabulary (they become its unknown token); `strict` refuses both instead,
  naming the first such record. The dataset is written into a temporary sibling folder and renamed into place
  only once every record is in: a failed build, or one that would hold no record, leaves no partial dataset and
  an existing one untouched. An existing dataset is replaced only with `overwrite`.
  """
  from array_record.python.array_record_module import ArrayRecordWriter

  output_dir = os.path.abspath(output_dir)
  if num_shards < 1:
    raise ValueError(f"--num_shards={num_shards}: must be >= 1")
  if os.path.exists(output_dir) and os.listdir(output_dir):
    if not overwrite:
      raise FileExistsError(f"{output_dir} already exists and is not empty; pass --overwrite to replace it "
                            "(the old dataset is kept until the new one is complete)")
    _check_replaceable(output_dir)
  tmp_dir = f"{output_dir}.building-{os.getpid()}"
  shutil.rmtree(tmp_dir, ignore_errors=True)
  os.makedirs(tmp_dir)
  try:
    names = [SHARD_PATTERN.format(name=name, index=i, count=num_shards) for i in range(num_shards)]
    writers = [ArrayRecordWriter(os.path.join(tmp_dir, n), "group_size:1") for n in names]
    written = longest = too_long = 0
    # Of the records in order and their shards: a run resumed over a dataset rebuilt in place that differs is refused
    # (config_history.input_fingerprints).
    content = content_hasher(names)
    too_long_first: list[str] = []            # path:line (tokens) of the first skipped records
    unknown, unknown_records = collections.Counter(), 0
    try:
      for path, line_no, line in iter_lines(inputs):
        data, n = builder.encode_line(line, path, line_no)
        if max_length and n > max_length:
          if strict:
            raise ValueError(f"{path}:{line_no}: {n} tokens, longer than --max_length={max_length} (--strict)")
          too_long += 1
          too_long_first += [f"{path}:{line_no} ({n} tokens)"][:10 - len(too_long_first)]
          continue
        if builder.unknown_words:
          if strict:
            raise ValueError(f"{path}:{line_no}: words outside the tokenizer's vocabulary (--strict): "
                             f"{sorted(set(builder.unknown_words))[:10]}")
          unknown.update(builder.unknown_words)
          unknown_records += 1
        writers[written % num_shards].write(data)
        add_record(content, data)
        written += 1
        longest = max(longest, n)
    finally:
      for w in writers:
        w.close()
    if not written:
      why = (f"all {too_long} records are longer than --max_length={max_length}" if too_long
             else "they hold no records (only blank lines)")
      raise ValueError(f"nothing to write from {', '.join(inputs)}: {why}; {output_dir} is left as it was")
    info = {"arch": builder.arch, "kind": builder.kind, "streams": list(builder.streams),
            "num_records": written, "content_sha256": content.hexdigest(), "longest": longest, "max_length": max_length,
            "skipped_too_long": too_long, "skipped_too_long_first": too_long_first,
            "unknown_words": sum(unknown.values()), "records_with_unknown_words": unknown_records,
            "most_common_unknown_words": dict(unknown.most_common(20)),
            "shards": names, "pad_id": builder.vocab.pad,
            "ratios": list(builder.ratios), "audio_delay": builder.audio_delay,
            "vocab": dataclasses.asdict(builder.vocab), "tokenizer": TOKENIZER_FILE,
            "tokenizer_source": os.path.abspath(builder.tokenizer_path), "inputs": [os.path.abspath(p) for p in inputs]}
    shutil.copyfile(builder.tokenizer_path, os.path.join(tmp_dir, TOKENIZER_FILE))
    files.write_json(os.path.join(tmp_dir, INFO_FILE), info, indent=1)
    _replace_dir(tmp_dir, output_dir)
  except BaseException:
    shutil.rmtree(tmp_dir, ignore_errors=True)
    raise
  return info


def summary(info: dict[str, Any], output_dir: str) -> str:
  """What a build wrote and what it skipped or altered, for the command line."""
  lines = [f"wrote {info['num_records']} records (longest {info['longest']} tokens) to {output_dir}"]
  if info["skipped_too_long"]:
    lines.append(f"skipped {info['skipped_too_long']} records longer than --max_length={info['max_length']}, "
                 f"first: {', '.join(info['skipped_too_long_first'][:3])}")
  if info["unknown_words"]:
    common = ", ".join(f"{w!r} x{c}" for w, c in list(info["most_common_unknown_words"].items())[:5])
    lines.append(f"{info['unknown_words']} words in {info['records_with_unknown_words']} records are outside the "
                 f"tokenizer's vocabulary and became its unknown token (most common: {common}); --strict refuses them")
  return "\n".join(lines)


def _check_replaceable(output_dir: str) -> None:
  """--overwrite replaces a built dataset, never a folder of other files (the build's inputs, audio codes, a
  checkout): `output_dir` must hold a dataset's info file and only what a build writes."""
  info_path = os.path.join(output_dir, INFO_FILE)
  try:
    with open(info_path) as f:
      made = {INFO_FILE, TOKENIZER_FILE, *json.load(f)["shards"]}
  except (OSError, ValueError, KeyError, TypeError):
    raise FileExistsError(f"--output_dir={output_dir} is not a built dataset (no readable {INFO_FILE}): --overwrite "
                          "replaces only a dataset; choose another --output_dir") from None
  others = sorted(set(os.listdir(output_dir)) - made)
  if others:
    raise FileExistsError(f"--output_dir={output_dir} holds files a build did not write ({', '.join(others[:5])}"
                          f"{', ...' if len(others) > 5 else ''}): --overwrite would delete them; move them or choose "
                          "another --output_dir")


def _replace_dir(new: str, target: str) -> None:
  """Moves `new` to `target`; an existing `target` is moved aside first and deleted only afterwards."""
  old = None
  if os.path.exists(target):
    old = f"{target}.old-{os.getpid()}"
    os.replace(target, old)
  os.replace(new, target)
  if old is not None:
    shutil.rmtree(old)
