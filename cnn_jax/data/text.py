"""Texts as datasets of token ids, for 1-D convolutions over words (Kim 2014's sentence CNN): tokenizing, the
vocabulary, encoding, and local text files.

A text becomes lower-case tokens (`tokenize`), each token an id through the
vocabulary of the training texts: id 0 is padding (`PAD`), id 1 every
unknown word (`UNKNOWN`), then the words seen at least `min_count` times,
most frequent first (ties in alphabetical order), `vocab_size` ids in all.
Each text is `max_length` ids, padded with 0 or truncated at its end. A run
saves its vocabulary (`write_vocabulary`, one word a line) and a resumed run,
or a tool reading a trained one, reuses it (`read_vocabulary`).

Local text files (`dataset`=text, `load_text_files`), one text and its label a record:

    FILE.csv  FILE.tsv  FILE.jsonl (or .json)   a deterministic `test_fraction` of each class is held out
    DIR/train.<suffix>  DIR/test.<suffix>       (or DIR/val.<suffix>, DIR/validation.<suffix>)

CSV and TSV files have a header row naming the columns (`text_column`,
`label_column`); a JSON-lines file holds one object a line with those keys.
Class names are the distinct labels of the training texts, sorted (as
numbers if they are all integers).
"""

import collections
import csv
import dataclasses
import json
import os
import re
import tempfile
from collections.abc import Iterator, Sequence

import numpy as np

from cnn_jax.data.dataset import TOKENS, DataError, Dataset
from cnn_jax.data.folder import TEST_FOLDERS, held_out

NAME = "text"  # The `dataset` setting for local text files.
PAD, UNKNOWN = "<pad>", "<unk>"  # The words of ids 0 and 1; `tokenize` never makes them.
VOCABULARY_FILE = "vocabulary.txt"
SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")  # .json: JSON lines too.
TEST_STEMS = TEST_FOLDERS  # The test file of a folder: test.<suffix>, else val.<suffix>, else validation.<suffix>.
_TOKEN = re.compile(r"\w+(?:'\w+)?|[^\w\s]")


@dataclasses.dataclass(frozen=True)
class TextSettings:
    """How texts become token ids (the defaults are `cnn_jax.training.config.Config`'s).

    `text_column`, `label_column`: the CSV/TSV columns (or JSON keys) of a
    text and its label; `text_column` also chooses the text feature of a
    tensorflow-datasets text dataset. `vocab_size`: ids in all, padding and
    unknown included. `min_count`: training words seen fewer times are
    unknown. `max_length`: ids per text; 0: the longest training text's
    token count.
    """

    text_column: str
    label_column: str
    vocab_size: int
    min_count: int
    max_length: int


def tokenize(text: str) -> list[str]:
    """The lower-case tokens of `text`: words (runs of letters, digits and underscores, with at most one inner
    apostrophe: "don't", "o'clock") and every other non-space character as a token of its own ("!", "<")."""
    return _TOKEN.findall(text.lower())


def build_vocabulary(token_lists: Sequence[Sequence[str]], vocab_size: int, min_count: int) -> tuple[str, ...]:
    """`PAD`, `UNKNOWN`, then the words of `token_lists` seen at least `min_count` times, most frequent first
    (ties alphabetical): `vocab_size` words at most in all."""
    counts = collections.Counter()
    for tokens in token_lists:
        counts.update(tokens)
    words = sorted((word for word, count in counts.items() if count >= min_count), key=lambda w: (-counts[w], w))
    return (PAD, UNKNOWN, *words[: max(vocab_size - 2, 0)])


def encode(token_lists: Sequence[Sequence[str]], vocabulary: Sequence[str], max_length: int) -> np.ndarray:
    """int32 `[texts, max_length]`: each text's token ids in `vocabulary` (1 for a word not in it), padded with 0
    or truncated at the end."""
    index = dict(zip(vocabulary[2:], range(2, len(vocabulary))))
    ids = np.zeros((len(token_lists), max_length), np.int32)
    for row, tokens in zip(ids, token_lists):
        kept = [index.get(token, 1) for token in tokens[:max_length]]
        row[: len(kept)] = kept
    return ids


def decode(ids: Sequence[int], vocabulary: Sequence[str]) -> str:
    """The words of the non-padding `ids` (`[length]`), joined by spaces; unknown words are `UNKNOWN`."""
    return " ".join(vocabulary[k] for k in np.asarray(ids).tolist() if k != 0)


def encode_texts(texts: Sequence[str], dataset: Dataset) -> np.ndarray:
    """int32 `[texts, length]`: `texts` as token ids of `dataset` (a dataset of texts), through its vocabulary and at
    its length, as its own texts were made."""
    return encode([tokenize(t) for t in texts], dataset.vocabulary, dataset.image_shape[0])


def write_vocabulary(path: str, vocabulary: Sequence[str]) -> None:
    """Writes `vocabulary` to the file `path`, word k on line k + 1, atomically (a reader sees the old file or the
    new one, never part of it)."""
    directory = os.path.dirname(os.path.abspath(path))
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", newline="\n", dir=directory, prefix=".vocabulary-",
                                     delete=False) as file:
        file.write("".join(f"{word}\n" for word in vocabulary))
    os.replace(file.name, path)


def read_vocabulary(path: str) -> tuple[str, ...]:
    """The vocabulary in the file `path` (`write_vocabulary`'s); DataError if it is missing or malformed."""
    try:
        with open(path, encoding="utf-8", newline="") as file:
            content = file.read()
    except FileNotFoundError:
        raise DataError(f"vocabulary file {path} does not exist; a run of texts writes it next to its "
                        "checkpoints") from None
    except UnicodeDecodeError as e:
        raise DataError(f"vocabulary file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    words = content.split("\n")
    if words[-1] == "":
        words.pop()  # The last word's newline.
    if tuple(words[:2]) != (PAD, UNKNOWN):
        raise DataError(f"vocabulary file {path} does not start with the lines {PAD} and {UNKNOWN}: it is not a "
                        "vocabulary cnn_jax wrote")
    seen = {}
    for line, word in enumerate(words, 1):
        if not word or word != word.strip():
            raise DataError(f"line {line} of vocabulary file {path} is {'empty' if not word else repr(word)}: "
                            "each line must be one word, without spaces")
        if word in seen:
            raise DataError(f"line {line} of vocabulary file {path} repeats the word {word!r} of line {seen[word]}")
        seen[word] = line
    return tuple(words)


def text_dataset(name: str, source: str, train_texts: Sequence[str], train_labels: np.ndarray,
                 test_texts: Sequence[str], test_labels: np.ndarray, class_names: Sequence[str],
                 settings: TextSettings, vocabulary: Sequence[str] | None = None) -> Dataset:
    """The dataset (kind `TOKENS`) of the texts and their int labels: token ids `[texts, max_length]` through
    `vocabulary`, else the vocabulary built from the training texts; `max_length` is `settings.max_length`, else
    the longest training text's token count (at least 1)."""
    train_tokens, test_tokens = [tokenize(t) for t in train_texts], [tokenize(t) for t in test_texts]
    if vocabulary is None:
        vocabulary = build_vocabulary(train_tokens, settings.vocab_size, settings.min_count)
    max_length = settings.max_length or max([1, *map(len, train_tokens)])
    return Dataset(name, source, encode(train_tokens, vocabulary, max_length), np.asarray(train_labels, np.int32),
                   encode(test_tokens, vocabulary, max_length), np.asarray(test_labels, np.int32),
                   tuple(class_names), kind=TOKENS, vocabulary=tuple(vocabulary))


# Local text files.

Record = tuple[int, str, str]  # (the line its record starts on, text, label)


def _listed(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _column(path: str, header: list[str], column: str, what: str, setting: str) -> int:
    if column not in header:
        raise DataError(f"{path} has no column '{column}' (its header names {_listed(header) or 'no columns'}); "
                        f"name the column of the {what} with `{setting}`")
    return header.index(column)


def _csv_records(path: str, file, delimiter: str, settings: TextSettings) -> Iterator[Record]:
    reader, kind = csv.reader(file, delimiter=delimiter), "TSV" if delimiter == "\t" else "CSV"

    def next_row():
        line = reader.line_num + 1  # The line the record starts on: a quoted field may hold newlines.
        try:
            return line, next(reader, None)
        except csv.Error as e:
            raise DataError(f"line {line} of {path} is not {kind} ({e})") from None

    header = next_row()[1]
    if header is None:
        return
    header = [name.strip() for name in header]
    text_at = _column(path, header, settings.text_column, "texts", "text_column")
    label_at = _column(path, header, settings.label_column, "labels", "label_column")
    while True:
        line, row = next_row()
        if row is None:
            return
        if not any(field.strip() for field in row):  # A blank line, or a spreadsheet's empty row.
            continue
        if len(row) != len(header):
            fields = f"{len(row)} field" + "s" * (len(row) != 1)
            raise DataError(f"line {line} of {path} has {fields} where the header has {len(header)}; quote a field "
                            "that holds the delimiter or a newline")
        yield line, row[text_at], row[label_at]


def _json_records(path: str, file, settings: TextSettings) -> Iterator[Record]:
    keys = {settings.text_column: ("texts", "text_column"), settings.label_column: ("labels", "label_column")}
    for line, content in enumerate(file, 1):
        if not content.strip():
            continue
        try:
            record = json.loads(content)
        except json.JSONDecodeError as e:
            raise DataError(f"line {line} of {path} is not JSON ({e.msg} at column {e.colno}); a JSON-lines file "
                            "holds one object a line") from None
        if not isinstance(record, dict):
            raise DataError(f"line {line} of {path} is a JSON {type(record).__name__}, not an object; a JSON-lines "
                            f"file holds one object a line, with keys '{settings.text_column}' and "
                            f"'{settings.label_column}'")
        for key, (what, setting) in keys.items():
            if key not in record:
                raise DataError(f"line {line} of {path} has no key '{key}' (its keys: "
                                f"{_listed(list(record)) or 'none'}); name the key of the {what} with `{setting}`")
        text, label = record[settings.text_column], record[settings.label_column]
        if not isinstance(text, str):
            raise DataError(f"line {line} of {path}: '{settings.text_column}' is a JSON {type(text).__name__}, not "
                            "a string")
        if isinstance(label, bool) or not isinstance(label, (str, int)):
            raise DataError(f"line {line} of {path}: '{settings.label_column}' is {json.dumps(label)[:40]}; a label "
                            "is a string or an integer")
        yield line, text, str(label)


def _read_records(path: str, settings: TextSettings) -> list[Record]:
    """Every (line, text, label) of the text file `path`; DataError for a record or file it cannot use."""
    suffix = os.path.splitext(path)[1].lower()
    try:
        with open(path, encoding="utf-8-sig", newline="") as file:
            if suffix in (".csv", ".tsv"):
                records = list(_csv_records(path, file, "\t" if suffix == ".tsv" else ",", settings))
            else:
                records = list(_json_records(path, file, settings))
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None
    if not records:
        raise DataError(f"{path} holds no texts; give it a header row and one record a line"
                        if suffix in (".csv", ".tsv") else f"{path} holds no texts; give it one JSON object a line")
    for line, text, label in records:
        if not text.strip():
            raise DataError(f"line {line} of {path} has an empty text; remove the record or give it a text")
        if not label.strip():
            raise DataError(f"line {line} of {path} has an empty label; remove the record or give it a label")
    return [(line, text, label.strip()) for line, text, label in records]


def _class_names(path: str, records: list[Record]) -> tuple[str, ...]:
    """The distinct labels of `records`, sorted (as numbers if they are all integers); DataError for one."""
    names = set(label for _, _, label in records)
    if len(names) == 1:
        raise DataError(f"{path} has one label ('{names.pop()}'); a classifier needs at least two classes")
    integers = all(re.fullmatch(r"[-+]?\d+", name) for name in names)
    return tuple(sorted(names, key=(lambda name: (int(name), name)) if integers else None))


def _labels(path: str, records: list[Record], class_names: Sequence[str], train_path: str) -> np.ndarray:
    index = {name: k for k, name in enumerate(class_names)}
    for line, _, label in records:
        if label not in index:
            raise DataError(f"line {line} of {path} has the label '{label}', which no text of {train_path} has (its "
                            f"labels: {_listed(class_names)}); correct it or remove the record")
    return np.asarray([index[label] for _, _, label in records], np.int32)


def _file(path: str) -> str:
    """`path` if it is a text file of a known suffix, else DataError."""
    if os.path.splitext(path)[1].lower() not in SUFFIXES:
        raise DataError(f"`data_dir`={path} is not a text file of a known kind: use a file (or train and test "
                        f"files) ending in {', '.join(SUFFIXES)} (.json: JSON lines)")
    return path


def _split_files(directory: str) -> tuple[str, str]:
    """The training and test files of `directory`; DataError when they are missing or ambiguous."""
    names = set(os.listdir(directory))

    def found(stem):
        return [stem + suffix for suffix in SUFFIXES if stem + suffix in names]

    train = found("train")
    if not train:
        raise DataError(f"folder {directory} holds no {' or '.join('train' + suffix for suffix in SUFFIXES)}: put "
                        "the training texts in one and the test texts in test.<suffix>, or give `data_dir` one file "
                        "to hold a share of each class out of")
    if len(train) > 1:
        raise DataError(f"folder {directory} holds {' and '.join(train)}: keep one training file")
    test = next((found(stem) for stem in TEST_STEMS if found(stem)), None)
    if not test:
        raise DataError(f"folder {directory} holds {train[0]} but no test file: add the test texts as "
                        f"{' or '.join(stem + '.<suffix>' for stem in TEST_STEMS)}")
    return os.path.join(directory, train[0]), os.path.join(directory, test[0])


def load_text_files(data_dir: str | None, test_fraction: float, settings: TextSettings,
                    vocabulary: Sequence[str] | None = None) -> Dataset:
    """The dataset of the text file `data_dir`, `test_fraction` of each class held out for testing (by a fixed
    seed, never the run's), or of the train and test files in the folder `data_dir` (see the module docstring);
    through `vocabulary`, else the one built from the training texts. DataError for a file it cannot use."""
    if not data_dir:
        raise DataError("`dataset`=text needs `data_dir`: a text file (" + ", ".join(SUFFIXES) + ") or a folder "
                        "holding train.<suffix> and test.<suffix>")
    if not os.path.exists(data_dir):
        raise DataError(f"`data_dir`={data_dir} does not exist")
    if os.path.isdir(data_dir):
        train_path, test_path = _split_files(data_dir)
        train, test = _read_records(train_path, settings), _read_records(test_path, settings)
        class_names = _class_names(train_path, train)
        train_labels = _labels(train_path, train, class_names, train_path)
        test_labels = _labels(test_path, test, class_names, train_path)
        source = f"text files in {data_dir} ({os.path.basename(train_path)} / {os.path.basename(test_path)})"
    else:
        records = _read_records(_file(data_dir), settings)
        class_names = _class_names(data_dir, records)
        labels = _labels(data_dir, records, class_names, data_dir)
        held = held_out(labels, test_fraction)
        for k, name in enumerate(class_names):
            if held[labels == k].all():
                raise DataError(f"holding out `test_fraction`={test_fraction} of the {np.sum(labels == k)} texts of "
                                f"class '{name}' in {data_dir} leaves none to train on; lower it or add texts")
        if not held.any():
            raise DataError(f"holding out `test_fraction`={test_fraction} of each class of {data_dir} leaves no "
                            "texts to test on; raise it or give a folder of train and test files")
        train = [record for record, out in zip(records, held) if not out]
        test = [record for record, out in zip(records, held) if out]
        train_labels, test_labels = labels[~held], labels[held]
        source = f"{data_dir} ({test_fraction * 100:g}% of each class held out)"
    return text_dataset(NAME, source, [text for _, text, _ in train], train_labels, [text for _, text, _ in test],
                        test_labels, class_names, settings, vocabulary)
