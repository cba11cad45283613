from collections import Counter

import pytest
from helpers import make_rows, write_csv, write_jsonl

from bertdeploy.builder.examples import check_known_labels, label_order, load_examples, sample_examples, split_examples
from bertdeploy.errors import DataError


def test_csv_tsv_jsonl_read_the_same(tmp_path):
    rows = make_rows(10)
    read = [
        load_examples(write_csv(tmp_path / "a.csv", rows)),
        load_examples(write_csv(tmp_path / "a.tsv", rows, delimiter="\t")),
        load_examples(write_jsonl(tmp_path / "a.jsonl", rows)),
    ]
    for examples in read:
        assert examples.texts == [r["text"] for r in rows]
        assert examples.labels == [r["label"] for r in rows]
    assert read[0].lines == list(range(2, 12))  # after the header
    assert read[2].lines == list(range(1, 11))


def test_csv_with_quoted_newlines_bom_and_commas(tmp_path):
    path = tmp_path / "q.csv"
    path.write_bytes('\ufefftext,label\n"第一行\n第二行, 还有逗号",pos\nplain,neg\n'.encode())
    examples = load_examples(path)
    assert examples.texts == ["第一行\n第二行, 还有逗号", "plain"]
    assert examples.lines == [2, 4]


def test_tsv_keeps_quotes_as_text(tmp_path):
    path = tmp_path / "q.tsv"
    path.write_text('text\tlabel\n他说"好"\tpos\n"引号\tneg\n', encoding="utf-8")
    assert load_examples(path).texts == ['他说"好"', '"引号']


def test_integer_labels_sort_numerically_and_jsonl_ints(tmp_path):
    rows = [{"text": f"t{i}", "label": label} for i, label in enumerate([10, 2, 1, 2, 10])]
    examples = load_examples(write_jsonl(tmp_path / "a.jsonl", rows))
    assert examples.labels == ["10", "2", "1", "2", "10"]
    assert label_order(examples) == ["1", "2", "10"]


def test_explicit_label_order_and_unknown_label(tmp_path):
    examples = load_examples(write_csv(tmp_path / "a.csv", make_rows(6)))
    assert label_order(examples, ["positive", "negative"]) == ["positive", "negative"]
    with pytest.raises(DataError, match=r"'positive' on lines 2, 4, 6 is not in --labels"):
        label_order(examples, ["negative", "neutral"])


def test_sentence_pairs(tmp_path):
    rows = [{"premise": "a", "hypothesis": "b", "label": "yes"}, {"premise": "c", "hypothesis": "d", "label": "no"}]
    examples = load_examples(write_jsonl(tmp_path / "p.jsonl", rows), "premise", pair_column="hypothesis")
    assert examples.texts == ["a", "c"] and examples.pairs == ["b", "d"]


def test_missing_file_empty_file_unknown_extension(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_examples(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty.csv: the file is empty"):
        load_examples(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("text,label\n")
    with pytest.raises(DataError, match="no usable rows"):
        load_examples(tmp_path / "header.csv")
    (tmp_path / "a.xlsx").write_text("x")
    with pytest.raises(DataError, match=r"unknown file type '.xlsx'; use one of .csv, .tsv, .jsonl"):
        load_examples(tmp_path / "a.xlsx")


def test_missing_column_lists_the_columns(tmp_path):
    path = write_csv(tmp_path / "a.csv", [{"review": "x", "label": "a"}])
    with pytest.raises(DataError, match=r"no column 'text'; the columns found are 'review', 'label'"):
        load_examples(path)
    path = write_jsonl(tmp_path / "a.jsonl", [{"review": "x", "sentiment": "a"}])
    with pytest.raises(DataError, match=r"no column 'text', 'label'; the columns found are 'review', 'sentiment'"):
        load_examples(path)


def test_empty_text_names_lines_and_drop_empty_skips(tmp_path):
    rows = make_rows(8)
    rows[2]["text"] = ""
    rows[5]["text"] = "   "
    rows[6]["label"] = ""
    path = write_csv(tmp_path / "a.csv", rows)
    with pytest.raises(DataError, match=r"empty or missing 'text' / 'label' on lines 4, 7, 8; .*--drop-empty"):
        load_examples(path)
    assert len(load_examples(path, drop_empty=True)) == 5
    rows = [{"text": None, "label": "a"}, {"label": "b"}, {"text": "x", "label": "b"}]
    jsonl = write_jsonl(tmp_path / "a.jsonl", rows)
    with pytest.raises(DataError, match="lines 1, 2;"):
        load_examples(jsonl)


def test_many_bad_lines_are_summarised(tmp_path):
    rows = [{"text": "" if i % 2 else "x", "label": "a"} for i in range(40)]
    with pytest.raises(DataError, match=r"lines 3, 5, 7, 9, 11 and 15 more"):
        load_examples(write_csv(tmp_path / "a.csv", rows))


def test_single_class_refused(tmp_path):
    examples = load_examples(write_csv(tmp_path / "a.csv", [{"text": "x", "label": "pos"}] * 3))
    with pytest.raises(DataError, match="every row has the label 'pos'; a classifier needs at least two classes"):
        label_order(examples)


def test_eval_label_unseen_in_training(tmp_path):
    evaluation = load_examples(write_csv(tmp_path / "e.csv", [{"text": "x", "label": "neutral"}]))
    with pytest.raises(DataError, match=r"e.csv: label 'neutral' on line 2 is unknown to the model"):
        check_known_labels(evaluation, ["negative", "positive"])


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "gbk.csv"
    path.write_bytes(b"text,label\nok,pos\n" + "很好,pos\n".encode("gbk"))
    with pytest.raises(DataError, match=r"gbk.csv line 3: not valid UTF-8 .*iconv -f GBK"):
        load_examples(path)


def test_malformed_jsonl_names_the_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n\n{"text": "b", "label": }\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"a.jsonl line 3: malformed JSON"):
        load_examples(path)
    path.write_text('["a", "x"]\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 1: expected a JSON object, got list"):
        load_examples(path)
    path.write_text('{"text": ["a"], "label": "x"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 1: 'text' is a list, expected a string"):
        load_examples(path)


def test_unquoted_delimiter_is_caught(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("text,label\n很好,但是贵,pos\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 2: 3 fields but the header has 2; quote texts"):
        load_examples(path)


def test_split_is_stratified_seeded_and_disjoint(tmp_path):
    rows = [{"text": f"t{i}", "label": "a" if i % 4 else "b"} for i in range(200)]
    examples = load_examples(write_csv(tmp_path / "a.csv", rows))
    train, val = split_examples(examples, 0.1, seed=7)
    assert Counter(val.labels) == {"a": 15, "b": 5}
    assert not set(train.texts) & set(val.texts) and len(train) + len(val) == 200
    assert split_examples(examples, 0.1, seed=7)[1].texts == val.texts
    assert split_examples(examples, 0.1, seed=8)[1].texts != val.texts


def test_sample_keeps_class_shares(tmp_path):
    rows = [{"text": f"t{i}", "label": "a" if i % 4 else "b"} for i in range(200)]
    sample = sample_examples(load_examples(write_csv(tmp_path / "a.csv", rows)), 41, seed=0)
    assert len(sample) == 41 and Counter(sample.labels) == {"a": 31, "b": 10}
