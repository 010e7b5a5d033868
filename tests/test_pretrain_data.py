"""DDK's pretraining text (distill.data.pretrain) and the UltraChat-format instruction file, read
from the paper smoke's fixture files, which have the hub datasets' own formats."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from distill.batching import encode_examples
from distill.data import pretrain
from distill.data.instructions import local_rows
from distill.io import InputError, read_examples
from distill.models.tiny import build_tokenizer

FIXTURES = Path(__file__).parent / "data" / "paper-smoke"
SETS = {"common_crawl": "RedPajamaCommonCrawl", "c4": "RedPajamaC4", "github": "RedPajamaGithub",
        "wikipedia": "RedPajamaWikipedia", "books": "RedPajamaBook", "arxiv": "RedPajamaArXiv",
        "stackexchange": "RedPajamaStackExchange"}  # fmt: skip


def smoke_domains() -> dict:
    """The paper's 10 domains, each pointed at its local stand-in (as paper-smoke.yaml does)."""
    slim = str(FIXTURES / "slimpajama.jsonl")
    domains = {
        name: {"source": slim, "where": {"meta.redpajama_set_name": label}}
        for name, label in SETS.items()
    }
    domains["open_web_math"] = {"source": str(FIXTURES / "open_web_math.jsonl")}
    domains["chinese_books"] = {"source": str(FIXTURES / "wikisource_zh.jsonl")}
    domains["chinese_common_crawl"] = {"source": str(FIXTURES / "c4_zh.jsonl")}
    return domains


def run(monkeypatch, out: Path, **settings) -> None:
    argv = ["pretrain", "--settings", json.dumps(settings), "--out-dir", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    pretrain.main()


def test_ten_domains_from_local_files_in_hub_formats(monkeypatch, tmp_path):
    run(monkeypatch, tmp_path, domains=smoke_domains(), valid_per_domain=4, n_train_per_domain=8,
        max_chars=300)  # fmt: skip
    valid, train = read_examples(tmp_path / "valid.jsonl"), read_examples(tmp_path / "train.jsonl")
    for rows, n in ((valid, 4), (train, 8)):
        counts = {}
        for row in rows:
            counts[row["domain"]] = counts.get(row["domain"], 0) + 1
            assert set(row) == {"id", "domain", "text"} and 0 < len(row["text"]) <= 300
        assert counts == dict.fromkeys(smoke_domains(), n)
    # Valid holds each domain's first rows, train the next ones, in the source's order.
    slim = [json.loads(line) for line in open(FIXTURES / "slimpajama.jsonl", encoding="utf-8")]
    github = [r["text"][:300] for r in slim if r["meta"]["redpajama_set_name"] == "RedPajamaGithub"]
    assert [r["text"] for r in valid if r["domain"] == "github"] == github[:4]
    assert [r["text"] for r in train if r["domain"] == "github"] == github[4:12]
    assert [r["id"] for r in train if r["domain"] == "github"][0] == "github-train-0"
    for domain in ("chinese_books", "chinese_common_crawl"):
        assert all("。" in r["text"] for r in train if r["domain"] == domain)


def test_plain_text_rows_train_on_every_token(monkeypatch, tmp_path):
    run(monkeypatch, tmp_path, domains={"c4": smoke_domains()["c4"]}, valid_per_domain=1,
        n_train_per_domain=2)  # fmt: skip
    tokenizer = build_tokenizer("qwen2")
    examples = encode_examples(tokenizer, read_examples(tmp_path / "train.jsonl"), max_len=64)
    assert len(examples) == 2
    for e in examples:
        assert e.target_mask[:-1].all() and not e.target_mask[-1]


def write_lines(path: Path, rows: list) -> Path:
    path.write_text("".join(r if isinstance(r, str) else json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    "bad_row, words",
    [
        ("{not json\n", "not valid JSON"),
        ({"text": "no label"}, "no field `meta.redpajama_set_name`"),
        ({"meta": {"redpajama_set_name": "RedPajamaC4"}, "txt": "typo"}, "no string field `text`"),
    ],
)
def test_bad_rows_stop_with_file_line_and_fix(monkeypatch, tmp_path, bad_row, words):
    good = {"text": "fine", "meta": {"redpajama_set_name": "RedPajamaC4"}}
    source = write_lines(tmp_path / "slim.jsonl", [good, bad_row, good])
    domains = {"c4": {"source": str(source), "where": {"meta.redpajama_set_name": "RedPajamaC4"}}}
    with pytest.raises(InputError) as caught:
        run(monkeypatch, tmp_path / "out", domains=domains, valid_per_domain=1,
            n_train_per_domain=2)  # fmt: skip
    message = str(caught.value)
    assert f"{source}:2:" in message and words in message and "Fix" in message
    assert not (tmp_path / "out" / "train.jsonl").exists()  # nothing half-written


def test_too_few_rows_names_the_short_domain(monkeypatch, tmp_path):
    domains = {"c4": smoke_domains()["c4"], "books": smoke_domains()["books"]}
    with pytest.raises(InputError, match=r"domains \{'c4': 40, 'books': 40\} short"):
        run(monkeypatch, tmp_path, domains=domains, valid_per_domain=10, n_train_per_domain=50)


def test_hub_sources_stream_one_pass_per_source_and_stop_early(monkeypatch, tmp_path):
    calls, served = [], []

    def fake_load_dataset(dataset_id, **kwargs):
        calls.append((dataset_id, kwargs))

        def stream():
            for i in range(10_000):
                served.append(i)
                label = ["RedPajamaC4", "RedPajamaBook"][i % 2]
                yield {"text": f"doc {i}", "meta": {"redpajama_set_name": label}}

        return stream()

    monkeypatch.setattr("datasets.load_dataset", fake_load_dataset)
    domains = {
        "c4": {"source": "hf:cerebras/SlimPajama-627B",
               "where": {"meta.redpajama_set_name": "RedPajamaC4"}},
        "books": {"source": "hf:cerebras/SlimPajama-627B",
                  "where": {"meta.redpajama_set_name": "RedPajamaBook"}},
        "zh": {"source": "hf:allenai/c4", "data_files": "multilingual/c4-zh.*.json.gz"},
    }  # fmt: skip
    run(monkeypatch, tmp_path, domains=domains, valid_per_domain=2, n_train_per_domain=3)
    assert [c[0] for c in calls] == ["cerebras/SlimPajama-627B", "allenai/c4"]
    assert calls[1][1] == {"name": None, "data_files": "multilingual/c4-zh.*.json.gz",
                           "split": "train", "streaming": True}  # fmt: skip
    assert len(served) == 10 + 5  # 5 of each label from the shared pass, then 5 rows of c4-zh
    train = read_examples(tmp_path / "train.jsonl")
    assert [r["text"] for r in train if r["domain"] == "books"] == ["doc 5", "doc 7", "doc 9"]


def test_ultrachat_format_file_is_an_instruction_source():
    rows = local_rows(str(FIXTURES / "ultrachat.jsonl"), 20, "general")
    assert len(rows) == 20 and all(r["domain"] == "general" for r in rows)
    assert any(sum(m["role"] == "assistant" for m in r["messages"]) >= 2 for r in rows)
    tokenizer = build_tokenizer("mistral")  # Mistral's template: strictly alternating turns
    examples = encode_examples(tokenizer, rows, max_len=512)
    assert len(examples) == 20


def test_bad_chat_row_stops_with_file_line(tmp_path):
    source = write_lines(
        tmp_path / "chat.jsonl",
        [{"prompt": "hi", "messages": [{"role": "user", "content": "hi"},
                                       {"role": "assistant", "content": "hello"}]},
         {"prompt": "x", "messages": [{"role": "user", "content": "no answer"}]}],
    )  # fmt: skip
    with pytest.raises(InputError, match=f"{source}:2: the last message must be the assistant"):
        local_rows(str(source), 5, "general")


def test_long_documents_give_pieces_that_never_straddle_splits(monkeypatch, tmp_path):
    books = [{"text": f"{d}" * 25, "meta": {"redpajama_set_name": "RedPajamaBook"}} for d in "abc"]
    source = write_lines(tmp_path / "slim.jsonl", books)
    domains = {
        "books": {"source": str(source), "where": {"meta.redpajama_set_name": "RedPajamaBook"}}
    }
    run(monkeypatch, tmp_path, domains=domains, valid_per_domain=2, n_train_per_domain=5,
        max_chars=10, max_chunks=3)  # fmt: skip
    valid = [r["text"] for r in read_examples(tmp_path / "valid.jsonl")]
    train = [r["text"] for r in read_examples(tmp_path / "train.jsonl")]
    # Book a: 3 pieces of which valid takes 2 (its third piece is dropped, not put in train);
    # b gives 3 pieces (10 + 10 + 5 characters), c the last 2 that train needs.
    assert valid == ["a" * 10, "a" * 10]
    assert train == ["b" * 10, "b" * 10, "b" * 5, "c" * 10, "c" * 10]
