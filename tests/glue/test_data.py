"""GLUE data: every task's TSV layout, csv/json files, and every kind of bad input."""

import json
import random

import pytest

from sparse_transfer.glue import GLUE_TASKS, GlueDataError, get_task, load_glue_data, read_glue_tsv
from sparse_transfer.glue.data import find_task_dir, parse_label

from .conftest import GLUE_DIRS, TEXT_LABELS, glue_rows, write_tsv


@pytest.mark.parametrize("task", sorted(GLUE_TASKS))
def test_every_task_reads_from_the_glue_layout(glue_dir, task):
    t = get_task(task)
    data = load_glue_data(t, data_dir=str(glue_dir), max_eval_samples=None)
    assert len(data.train) == 48
    assert list(data.evals) == (["matched", "mismatched"] if task == "mnli" else ["validation"])
    assert all(len(ds) == 24 for ds in data.evals.values())
    expected_columns = ["text_a", "text_b", "label"] if len(t.text_columns) == 2 else ["text_a", "label"]
    assert data.train.column_names == expected_columns
    # Labels as in nyu-mll/glue: re-read the raw file and map by hand.
    folder = glue_dir / GLUE_DIRS[task]
    raw = (folder / "train.tsv").read_text(encoding="utf-8-sig").splitlines()
    if task != "cola":
        raw = raw[1:]
    rows = [line.split("\t") for line in raw]
    if task == "cola":
        expected, texts = [int(r[1]) for r in rows], [r[3] for r in rows]
    elif task == "stsb":
        expected, texts = [float(r[-1]) for r in rows], [r[7] for r in rows]
    elif task in TEXT_LABELS:
        expected = [TEXT_LABELS[task].index(r[-1]) for r in rows]
        texts = [r[8] if task == "mnli" else r[1] for r in rows]
    elif task == "mrpc":
        expected, texts = [int(r[0]) for r in rows], [r[3] for r in rows]
    elif task == "qqp":
        expected, texts = [int(r[-1]) for r in rows], [r[3] for r in rows]
    elif task == "sst2":
        expected, texts = [int(r[1]) for r in rows], [r[0] for r in rows]
    else:  # wnli
        expected, texts = [int(r[-1]) for r in rows], [r[1] for r in rows]
    assert data.train["text_a"] == texts
    assert data.train["label"] == pytest.approx(expected) if task == "stsb" else data.train["label"] == expected


def test_mrpc_bom_and_quotes_are_text(tmp_path):
    # GLUE's files quote nothing: a lone " is part of the sentence (csv.QUOTE_NONE).
    path = write_tsv(
        tmp_path / "dev.tsv",
        ["\ufeffQuality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
        [["1", "1", "2", 'He said "yes', "no\" it's fine"], ["0", "3", "4", "a", "b"]],
    )
    cols = read_glue_tsv(path, get_task("mrpc"))
    assert cols == {"text_a": ['He said "yes', "a"], "text_b": ["no\" it's fine", "b"], "label": [1, 0]}


def test_task_dir_is_found_in_several_spellings(tmp_path):
    rng = random.Random(0)
    for folder in ("sst2", "SST-2"):
        root = tmp_path / folder.replace("-", "_")
        header, rows = glue_rows("sst2", 3, rng)
        write_tsv(root / folder / "train.tsv", header, rows)
        assert find_task_dir(root, get_task("sst2")) == root / folder
        assert find_task_dir(root / folder, get_task("SST-2")) == root / folder


def test_csv_and_json_files(tmp_path):
    t = get_task("rte")
    (tmp_path / "train.csv").write_text('sentence1,sentence2,label\n"a, b",c,entailment\nd,e,1\n', encoding="utf-8")
    lines = [{"sentence1": "x", "sentence2": "y", "label": 0}, {"sentence1": "z", "sentence2": "w", "label": "not_entailment"}]
    (tmp_path / "dev.json").write_text("\n".join(json.dumps(r) for r in lines), encoding="utf-8")
    data = load_glue_data(t, train_file=str(tmp_path / "train.csv"), validation_file=str(tmp_path / "dev.json"))
    assert data.train["text_a"] == ["a, b", "d"] and data.train["label"] == [0, 1]
    assert data.evals["validation"]["label"] == [0, 1]


def test_subsets_are_seeded(glue_dir):
    t = get_task("rte")
    a = load_glue_data(t, data_dir=str(glue_dir), max_train_samples=10, max_eval_samples=5, seed=1)
    b = load_glue_data(t, data_dir=str(glue_dir), max_train_samples=10, max_eval_samples=5, seed=1)
    assert len(a.train) == 10 and len(a.evals["validation"]) == 5
    assert a.train["text_a"] == b.train["text_a"]
    with pytest.raises(GlueDataError, match="max_train_samples must be a positive"):
        load_glue_data(t, data_dir=str(glue_dir), max_train_samples=0)


# ------------------------------------------------------------------------------------------ bad input
def test_labels_outside_the_label_set():
    with pytest.raises(GlueDataError, match=r"label 'maybe' is not in the rte label set: 0 \(entailment\), 1 \(not_entailment\)"):
        parse_label("maybe", get_task("rte"), "f, line 3")
    with pytest.raises(GlueDataError, match="label '2' is not in the cola label set"):
        parse_label("2", get_task("cola"), "f")
    with pytest.raises(GlueDataError, match=r"label '5.5' is not an stsb score in \[0, 5\]"):
        parse_label("5.5", get_task("stsb"), "f")
    assert parse_label("contradiction", get_task("mnli"), "f") == 2
    assert parse_label(1, get_task("wnli"), "f") == 1 and parse_label("4.2", get_task("stsb"), "f") == 4.2


@pytest.mark.parametrize(
    "task, content, message",
    [
        ("rte", "index\tsentence1\tlabel\n0\ta\tentailment\n", r"missing column 'sentence2'"),
        ("rte", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tyes\n", r"line 2: label 'yes' is not in the rte label set"),
        ("rte", "", r"is empty"),
        ("rte", "index\tsentence1\tsentence2\tlabel\n", r"holds no examples"),
        ("rte", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\n", r"line 3: 2 tab-separated fields, expected 4"),
        ("cola", "gj04\t1\t\tok\ngj04\t1\tshort\n", r"line 2: 3 tab-separated fields, expected 4 \(no header row"),
        ("cola", "source\tlabel\toriginal\tsentence\n", r"line 1: label 'label' is not in the cola label set"),
        ("mnli", "index\tsentence1\tsentence2\tgold_label\n0\ta\tb\t-\n", r"label '-' is not in the mnli label set"),
        ("stsb", "sentence1\tsentence2\tscore\na\tb\tx\n", r"label 'x' is not an stsb score"),
    ],
)
def test_bad_tsv_files(tmp_path, task, content, message):
    path = tmp_path / "train.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(GlueDataError, match=message):
        read_glue_tsv(path, get_task(task))


def test_bad_data_arguments(tmp_path):
    t = get_task("rte")
    with pytest.raises(GlueDataError, match="No RTE/train.tsv under"):
        load_glue_data(t, data_dir=str(tmp_path))
    with pytest.raises(GlueDataError, match="is not a directory"):
        load_glue_data(t, data_dir=str(tmp_path / "nope"))
    with pytest.raises(GlueDataError, match="Pass both --train_file and --validation_file"):
        load_glue_data(t, train_file="a.csv")
    (tmp_path / "train.csv").write_text("sentence1,label\na,0\n", encoding="utf-8")
    (tmp_path / "empty.csv").write_text("", encoding="utf-8")
    with pytest.raises(GlueDataError, match=r"missing column\(s\) \['sentence2'\]"):
        load_glue_data(t, train_file=str(tmp_path / "train.csv"), validation_file=str(tmp_path / "train.csv"))
    with pytest.raises(GlueDataError, match="empty.csv is empty"):
        load_glue_data(t, train_file=str(tmp_path / "empty.csv"), validation_file=str(tmp_path / "train.csv"))
    (tmp_path / "train.txt").write_text("sentence1\tsentence2\tlabel\n", encoding="utf-8")
    with pytest.raises(GlueDataError, match="use a .csv or .json"):
        load_glue_data(t, train_file=str(tmp_path / "train.txt"), validation_file=str(tmp_path / "train.txt"))
    (tmp_path / "RTE").mkdir()
    write_tsv(tmp_path / "RTE" / "train.tsv", *glue_rows("rte", 2, random.Random(0)))
    with pytest.raises(GlueDataError, match="no dev.tsv"):
        load_glue_data(t, data_dir=str(tmp_path))


def test_hub_offline_message(monkeypatch):
    import datasets

    from sparse_transfer.glue import data as data_module

    monkeypatch.setattr(data_module, "hub_unreachable", lambda timeout=3.0: "huggingface.co:443 is unreachable (gaierror)")
    with pytest.raises(GlueDataError, match=r"huggingface.co:443 is unreachable.*pass --data_dir DIR .*DIR/RTE/train.tsv"):
        load_glue_data(get_task("rte"))

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(data_module, "hub_unreachable", lambda timeout=3.0: None)
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(GlueDataError, match=r"ConnectionError: Couldn't reach .*--train_file and --validation_file"):
        load_glue_data(get_task("mnli"))
