"""Texts as token ids: the tokenizer, the vocabulary, encoding, local text files and their one-line errors, and
tensorflow-datasets text datasets (`tfds.testing.mock_data`, offline)."""

import csv
import json

import numpy as np
import pytest

from cnn_jax.data import text
from cnn_jax.data.dataset import TOKENS, DataError

SETTINGS = text.TextSettings(text_column="text", label_column="label", vocab_size=20000, min_count=1, max_length=0)


def one_line_error(match: str, load, *args, **kwargs) -> str:
    """The message of the DataError `load(*args, **kwargs)` raises, checked to be one line matching `match`."""
    with pytest.raises(DataError, match=match) as error:
        load(*args, **kwargs)
    assert "\n" not in str(error.value)
    return str(error.value)


def write_csv(path, rows, header=("text", "label"), delimiter=","):
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def reviews(per_class=10):
    """`per_class` texts of each class: 'pos' texts say good, 'neg' texts say bad."""
    return [(f"Review {i}: {'good' if label == 'pos' else 'bad'} film, {i} stars!", label)
            for i in range(per_class) for label in ("pos", "neg")]


def test_tokens_are_lower_case_words_and_single_punctuation_marks():
    assert text.tokenize("Don't PANIC, it's 42...  (really)") == [
        "don't", "panic", ",", "it's", "42", ".", ".", ".", "(", "really", ")"]
    assert text.tokenize("<br />ok") == ["<", "br", "/", ">", "ok"]
    assert text.tokenize("   ") == []


def test_encoding_then_decoding_gives_back_the_tokens():
    texts = ["The cat sat on the mat.", "A dog, a CAT!", "don't stop"]
    tokens = [text.tokenize(t) for t in texts]
    vocabulary = text.build_vocabulary(tokens, vocab_size=100, min_count=1)
    ids = text.encode(tokens, vocabulary, max_length=8)
    for row, t in zip(ids, texts):
        assert text.decode(row, vocabulary) == " ".join(text.tokenize(t))


def test_vocabulary_is_padding_unknown_then_words_by_frequency_ties_alphabetical():
    tokens = [["b", "a", "c", "a"], ["c", "a", "d", "e"], ["b"]]  # a 3, b 2, c 2, d 1, e 1.
    assert text.build_vocabulary(tokens, vocab_size=100, min_count=1) == ("<pad>", "<unk>", "a", "b", "c", "d", "e")
    assert text.build_vocabulary(tokens, vocab_size=100, min_count=2) == ("<pad>", "<unk>", "a", "b", "c")
    assert text.build_vocabulary(tokens, vocab_size=4, min_count=1) == ("<pad>", "<unk>", "a", "b")


def test_encoding_pads_and_truncates_at_the_end_and_marks_unknown_words_1():
    vocabulary = ("<pad>", "<unk>", "the", "cat")
    ids = text.encode([["the", "cat"], ["the", "dog", "the", "cat", "sat"], []], vocabulary, max_length=4)
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(ids, [[2, 3, 0, 0], [2, 1, 2, 3], [0, 0, 0, 0]])
    assert text.decode(ids[1], vocabulary) == "the <unk> the cat"


def test_a_written_vocabulary_reads_back_and_a_malformed_one_is_a_one_line_error(tmp_path):
    path = str(tmp_path / text.VOCABULARY_FILE)
    vocabulary = ("<pad>", "<unk>", "the", "don't", "é", "!")
    text.write_vocabulary(path, vocabulary)
    assert text.read_vocabulary(path) == vocabulary
    assert [p.name for p in tmp_path.iterdir()] == [text.VOCABULARY_FILE]  # No temporary file left behind.
    (tmp_path / "bad.txt").write_text("the\n<unk>\ncat\n")
    one_line_error("does not start with the lines <pad> and <unk>", text.read_vocabulary, str(tmp_path / "bad.txt"))
    (tmp_path / "bad.txt").write_text("<pad>\n<unk>\ncat\n\ndog\n")
    one_line_error("line 4 of vocabulary file .* is empty", text.read_vocabulary, str(tmp_path / "bad.txt"))
    one_line_error("does not exist", text.read_vocabulary, str(tmp_path / "missing.txt"))


def test_a_csv_file_holds_out_a_fraction_of_each_class_the_same_every_time(tmp_path):
    path = write_csv(tmp_path / "reviews.csv", reviews(10))
    dataset = text.load_text_files(path, 0.2, SETTINGS)
    assert dataset.kind == TOKENS and dataset.name == text.NAME
    assert dataset.class_names == ("neg", "pos")
    assert np.bincount(dataset.test_labels).tolist() == [2, 2] and np.bincount(dataset.train_labels).tolist() == [8, 8]
    assert dataset.source == f"{path} (20% of each class held out)"
    assert dataset.vocabulary[:2] == ("<pad>", "<unk>") and dataset.train_images.dtype == np.int32
    assert dataset.train_images.shape == (16, 9)  # Every text 9 tokens: "review 3 : good film , 3 stars !".
    for ids, label in zip(dataset.test_images, dataset.test_labels):  # Each text is its label's.
        assert ("good" if dataset.class_names[label] == "pos" else "bad") in text.decode(ids, dataset.vocabulary)
    again = text.load_text_files(path, 0.2, SETTINGS)
    np.testing.assert_array_equal(again.test_images, dataset.test_images)


def test_a_folder_of_train_and_test_tsv_files_with_quoted_newlines_names_record_lines(tmp_path):
    rows = [("good\tfilm", "2"), ("bad film", "1"), ("two\nlines", "10")]  # Classes sort as numbers: 1, 2, 10.
    write_csv(tmp_path / "train.tsv", rows, delimiter="\t")
    write_csv(tmp_path / "val.tsv", [("good", "2"), ("bad", "1")], delimiter="\t")
    dataset = text.load_text_files(str(tmp_path), 0.2, SETTINGS)
    assert dataset.class_names == ("1", "2", "10") and dataset.train_labels.tolist() == [1, 0, 2]
    assert dataset.test_labels.tolist() == [1, 0]
    assert dataset.source == f"text files in {tmp_path} (train.tsv / val.tsv)"
    assert text.decode(dataset.train_images[2], dataset.vocabulary) == "two lines"
    write_csv(tmp_path / "val.tsv", [("ok", "1"), ("first\nsecond", "2"), ("fine", "3")], delimiter="\t")
    message = one_line_error("line 5 of .*val.tsv has the label '3', which no text of .*train.tsv has",
                             text.load_text_files, str(tmp_path), 0.2, SETTINGS)
    assert message.endswith("(its labels: 1, 2, 10); correct it or remove the record")


def test_a_json_lines_file_with_integer_labels(tmp_path):
    path = tmp_path / "texts.jsonl"
    lines = [json.dumps({"body": t, "stars": 5 if label == "pos" else 1}) for t, label in reviews(5)]
    path.write_text("\n".join(lines) + "\n")
    settings = text.TextSettings("body", "stars", vocab_size=5, min_count=1, max_length=3)
    dataset = text.load_text_files(str(path), 0.2, settings)
    assert dataset.class_names == ("1", "5") and dataset.train_images.shape == (8, 3)
    assert len(dataset.vocabulary) == 5 and sorted(dataset.test_labels.tolist()) == [0, 1]


@pytest.mark.parametrize("name, content, match", [
    ("a.csv", "body,label\nhi,1\n", r"a.csv has no column 'text' \(its header names body, label\); name the column "
                                    "of the texts with `text_column`"),
    ("a.csv", "text,label\nfine,1\n\"  \",2\n", "line 3 of .*a.csv has an empty text"),
    ("a.csv", "text,label\nfine,1\nok,2,3\n", "line 3 of .*a.csv has 3 fields where the header has 2"),
    ("a.csv", "text,label\nfine,1\nok,1\n", "a.csv has one label .'1'.; a classifier needs at least two classes"),
    ("a.csv", "", "a.csv holds no texts"),
    ("a.jsonl", '{"text": "fine", "label": 1}\n\n{"txt": "no", "label": 2}\n',
     r"line 3 of .*a.jsonl has no key 'text' \(its keys: txt, label\); name the key of the texts with `text_column`"),
    ("a.jsonl", '{"text": "fine", "label": 1}\n["text", 2]\n', "line 2 of .*a.jsonl is a JSON list, not an object"),
    ("a.jsonl", '{"text": "fine", "label": 1}\n{"text": "no",\n', "line 2 of .*a.jsonl is not JSON"),
    ("a.txt", "fine\t1\n", r"`data_dir`=.*a.txt is not a text file of a known kind: use a file .or train and test "
                           r"files. ending in .csv, .tsv, .jsonl, .json"),
])
def test_each_bad_text_file_is_a_one_line_error_naming_the_file_and_line(tmp_path, name, content, match):
    (tmp_path / name).write_text(content)
    one_line_error(match, text.load_text_files, str(tmp_path / name), 0.2, SETTINGS)


def test_a_folder_without_split_files_or_a_missing_path_is_a_one_line_error(tmp_path):
    one_line_error("holds no train.csv or train.tsv or train.jsonl or train.json", text.load_text_files,
                   str(tmp_path), 0.2, SETTINGS)
    write_csv(tmp_path / "train.csv", reviews(2))
    one_line_error("holds train.csv but no test file: add the test texts as test.<suffix> or val.<suffix> or "
                   "validation.<suffix>", text.load_text_files, str(tmp_path), 0.2, SETTINGS)
    one_line_error("does not exist", text.load_text_files, str(tmp_path / "none.csv"), 0.2, SETTINGS)


def test_a_given_vocabulary_is_used_as_it_is(tmp_path):
    path = write_csv(tmp_path / "reviews.csv", reviews(10))
    vocabulary = ("<pad>", "<unk>", "good", "bad")
    dataset = text.load_text_files(path, 0.2, SETTINGS, vocabulary=vocabulary)
    assert dataset.vocabulary == vocabulary
    for ids, label in zip(dataset.train_images, dataset.train_labels):
        word = "good" if dataset.class_names[label] == "pos" else "bad"
        assert text.decode(ids, vocabulary) == f"<unk> <unk> <unk> {word} <unk> <unk> <unk> <unk> <unk>"


# tensorflow-datasets' real text builders, their examples made up by `tfds.testing.mock_data` (no download).

@pytest.mark.slow  # TensorFlow's import (10 s); the next test reads TFDS texts in the everyday suite.
def test_tfds_imdb_reviews_becomes_token_ids_of_its_text_feature():
    import tensorflow_datasets as tfds

    from cnn_jax.data.tfds import load_tfds_dataset

    with tfds.testing.mock_data(num_examples=6):
        dataset = load_tfds_dataset("imdb_reviews", None, text=SETTINGS)
        with pytest.raises(ValueError, match="needs its `text` settings"):
            load_tfds_dataset("imdb_reviews", None)
    assert dataset.kind == TOKENS and dataset.class_names == ("neg", "pos")
    assert dataset.train_images.shape[0] == 6 and dataset.train_images.dtype == np.int32
    assert dataset.vocabulary[:2] == ("<pad>", "<unk>") and dataset.source.startswith("tensorflow-datasets (")
    np.testing.assert_array_equal(dataset.test_images, dataset.train_images)  # mock_data's splits are alike.
    assert 1 not in dataset.test_images  # min_count 1: every training word is in the vocabulary.


def test_tfds_unlabelled_test_split_gives_way_to_validation_unless_asked_for():
    """glue/sst2's test split has labels -1; ag_news_subset's texts are its title and description."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from cnn_jax.data.tfds import load_tfds_dataset

    def as_dataset(builder, split, **kwargs):
        texts = [f"{split} text {i}" for i in range(4)]
        labels = [-1] * 4 if (builder.name, split) == ("glue", "test") else [0, 1, 1, 0]
        if builder.name == "ag_news_subset":
            return tf.data.Dataset.from_tensor_slices({"title": texts, "description": ["news"] * 4, "label": labels})
        return tf.data.Dataset.from_tensor_slices({"sentence": texts, "label": labels, "idx": list(range(4))})

    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        sst2 = load_tfds_dataset("glue/sst2", None, text=SETTINGS)
        message = one_line_error("split 'test' of dataset 'glue/sst2' has no labels .label -1.; choose another with "
                                 "`eval_split`", load_tfds_dataset, "glue/sst2", None, eval_split="test",
                                 text=SETTINGS)
        news = load_tfds_dataset("ag_news_subset", None, text=SETTINGS)
    assert sst2.class_names == ("negative", "positive") and sst2.test_labels.tolist() == [0, 1, 1, 0]
    assert text.decode(sst2.test_images[1], sst2.vocabulary) == "<unk> text 1"  # The validation texts.
    assert sst2.source.endswith(", trained on train, evaluated on validation)") and message
    assert news.class_names == ("World", "Sports", "Business", "Sci/Tech")
    assert text.decode(news.train_images[2], news.vocabulary) == "train text 2 news"  # Title, then description.
