"""Phi-1's educational-value filter (Gunasekar et al. 2023, Sec. 2.1), in three stages.

1. `edu-annotate`: the teacher judges a seeded sample of the corpus with Phi-1's framing ("determine its
   educational value for a student whose goal is to learn basic coding concepts"), answering yes or no.
   Answers are parsed strictly; one without a clear yes/no is retried with a new seed and a higher
   temperature, and after `retries` it is counted as unparseable and left out, never guessed.
2. `edu-classifier`: a random forest on document embeddings learns the teacher's labels; stratified
   cross-validation gives held-out accuracy / AUC / correlation (against the majority-class baseline),
   then the forest is refit on all labels and saved (joblib) so later runs score without re-annotating.
3. `edu-filter`: score every document (P(educational)), keep those above a threshold or the top
   `keep_fraction`, and record `edu_score` in each kept record.

A small teacher gives noisy labels; the manifests say how noisy (label balance, unparseable count, CV
metrics) rather than hide it.
"""

from __future__ import annotations

import functools
import json
import random
import re
import time
from collections import Counter
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np

from data_pipeline.curation.common import FilterWriter, fresh, work_dir
from data_pipeline.curation.corpus import read_input
from data_pipeline.curation.embed import Embedder
from data_pipeline.curation.executor import DocumentWorker, read_part, run_parts
from data_pipeline.teachers.base import Sampling
from recipes import Recipe, to_dict
from stagekit.io import (
    StageError,
    atomic_path,
    read_jsonl,
    sha256_file,
    write_json,
    write_jsonl,
    write_manifest,
)

ANNOTATE, CLASSIFY, FILTER = "edu-annotate", "edu-classifier", "edu-filter"
VERSION = "1"
PROMPT = (
    "Here is the beginning of a Python file:\n\n```python\n{code}\n```\n\n"
    "Determine its educational value for a student whose goal is to learn basic coding concepts. "
    "Is it educational? Answer yes or no."
)
_ANSWER = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def parse_answer(text: str) -> int | None:
    """1 for yes, 0 for no; None when the answer has neither, or both without a leading one."""
    found = [m.lower() for m in _ANSWER.findall(text)]
    if not found:
        return None
    leading = re.match(r"\W*(yes|no)\b", text, re.IGNORECASE)
    if leading:
        return int(leading.group(1).lower() == "yes")
    return int(found[0] == "yes") if len(set(found)) == 1 else None


def sample_records(path: Path, k: int, seed: int) -> list[dict]:
    """A seeded sample of k records (two streaming passes; only indices are held in memory)."""
    total = sum(1 for _ in read_input(path, ("text",)))
    chosen = set(random.Random(seed).sample(range(total), min(k, total)))
    return [r for i, (_, r) in enumerate(read_input(path, ("text",))) if i in chosen]


def run_annotate(recipe: Recipe, input: Path, output: Path, *, force: bool = False) -> dict:
    """Teacher labels for a sample of `input` -> `output` JSONL ({id, text, label, answer, attempts})."""
    from data_pipeline.generation.runner import prepare, run_prompts
    from data_pipeline.teachers import build_teacher

    cfg = recipe.data.curation.classifier
    teacher_cfg = recipe.data.generation.teacher
    params = {
        "sample_size": cfg.sample_size,
        "prompt_chars": cfg.prompt_chars,
        "max_new_tokens": cfg.max_new_tokens,
        "temperature": cfg.temperature,
        "retries": cfg.retries,
        "seed": recipe.seed,
        "prompt": PROMPT,
        "teacher": to_dict(teacher_cfg),
    }
    if manifest := fresh(output, stage=ANNOTATE, version=VERSION, params=params, inputs=[input], force=force):
        return manifest
    started = time.time()
    docs = sample_records(Path(input), cfg.sample_size, recipe.seed)
    if not docs:
        raise StageError(f"[{ANNOTATE}] {input} is empty; nothing to annotate")
    located = []
    for i, d in enumerate(docs):
        prompt = PROMPT.format(code=d["text"][: cfg.prompt_chars])
        located.append((f"{input}#{i}", {"id": str(d.get("id", i)), "prompt": prompt}))
    prompts = prepare(located, Sampling())
    teacher = build_teacher(teacher_cfg)
    labels: dict[str, tuple[int | None, str, int]] = {}
    todo = prompts
    try:
        for attempt in range(cfg.retries + 1):
            sampling = Sampling(
                max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature + 0.3 * attempt,
                top_p=1.0,
                seed=recipe.seed + attempt,
            )
            results, _ = run_prompts(
                todo, teacher, sampling, batch_size=cfg.batch_size, desc=f"{ANNOTATE}#{attempt}"
            )
            for r in results:
                labels[r["id"]] = (
                    None if r.get("error") else parse_answer(r["completion"]),
                    r["completion"],
                    attempt + 1,
                )
            todo = [p for p in todo if labels[p["id"]][0] is None]
            if not todo:
                break
    finally:
        teacher.close()
    records = []
    for doc, prompt in zip(docs, prompts):
        label, answer, attempts = labels[prompt["id"]]
        records.append(
            {"id": prompt["id"], "text": doc["text"], "label": label, "answer": answer, "attempts": attempts}
        )
    write_jsonl(output, records)
    counts = Counter(
        "unparseable" if r["label"] is None else ("yes" if r["label"] else "no") for r in records
    )
    return write_manifest(
        output,
        stage=ANNOTATE,
        version=VERSION,
        params=params,
        inputs=[input],
        counts={"sampled": len(records), **counts, "retried": sum(r["attempts"] > 1 for r in records)},
        started=started,
        extra={"note": "labels from a small teacher are noisy; see edu-classifier's cross-validated metrics"},
    )


def _cv_metrics(labels: np.ndarray, proba: np.ndarray) -> dict:
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, roc_auc_score

    predicted = (proba >= 0.5).astype(int)
    majority = max(labels.mean(), 1 - labels.mean())
    return {
        "accuracy": round(float(accuracy_score(labels, predicted)), 4),
        "majority_baseline_accuracy": round(float(majority), 4),
        "roc_auc": round(float(roc_auc_score(labels, proba)), 4),
        "pearson": round(float(pearsonr(proba, labels)[0]), 4) if proba.std() > 0 else 0.0,
        "spearman": round(float(spearmanr(proba, labels)[0]), 4) if proba.std() > 0 else 0.0,
    }


def run_train_classifier(recipe: Recipe, input: Path, output: Path, *, force: bool = False) -> dict:
    """Fit the random forest on the annotations `input`; saves `output`/{model.joblib, classifier.json}."""
    import joblib
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    cfg = recipe.data.curation.classifier
    params = {
        k: getattr(cfg, k) for k in ("embedder", "embed_chars", "n_estimators", "max_depth", "cv_folds")
    }
    params["seed"] = recipe.seed
    if manifest := fresh(output, stage=CLASSIFY, version=VERSION, params=params, inputs=[input], force=force):
        return manifest
    started = time.time()
    rows = [r for r in read_jsonl(input, ["text", "label"]) if r["label"] is not None]
    labels = np.array([int(r["label"]) for r in rows])
    minority = int(min((labels == 0).sum(), (labels == 1).sum())) if len(rows) else 0
    if minority < 2:
        raise StageError(
            f"[{CLASSIFY}] {input}: the teacher's labels have {int(labels.sum())} yes / {len(labels) - int(labels.sum())} "
            "no; a classifier needs at least 2 of each (raise classifier.sample_size or disable classifier.enabled)"
        )
    embedder = Embedder(cfg.embedder, max_chars=cfg.embed_chars, batch_size=cfg.embed_batch_size)
    features = embedder.encode([r["text"] for r in rows])
    forest = RandomForestClassifier(
        n_estimators=cfg.n_estimators,
        max_depth=cfg.max_depth or None,
        class_weight="balanced",  # small teachers say "yes" far more often than "no"
        random_state=recipe.seed,
        n_jobs=1,
    )
    folds = StratifiedKFold(n_splits=min(cfg.cv_folds, minority), shuffle=True, random_state=recipe.seed)
    proba = cross_val_predict(forest, features, labels, cv=folds, method="predict_proba")[:, 1]
    metrics = _cv_metrics(labels, proba)
    forest.fit(features, labels)
    info = {
        "embedder": cfg.embedder,
        "embed_chars": cfg.embed_chars,
        "labels": {"1": "educational (teacher said yes)", "0": "not educational"},
        "num_annotations": len(rows),
        "label_balance": {"yes": int(labels.sum()), "no": int(len(labels) - labels.sum())},
        "cross_validation": {"folds": folds.get_n_splits(), **metrics},
    }
    with atomic_path(output) as tmp:
        tmp.mkdir()
        joblib.dump(forest, tmp / "model.joblib")
        write_json(tmp / "classifier.json", info)
    return write_manifest(
        output,
        stage=CLASSIFY,
        version=VERSION,
        params=params,
        inputs=[input],
        counts={
            "annotations": len(rows),
            "yes": info["label_balance"]["yes"],
            "no": info["label_balance"]["no"],
        },
        started=started,
        extra={"metrics": info["cross_validation"]},
    )


@dataclass
class EduScorer(DocumentWorker):
    classifier_dir: str
    classifier_sha256: str  # part of the fingerprint: a refit classifier invalidates cached scores
    batch_size: int

    def setup(self) -> None:
        import joblib

        info = json.loads((Path(self.classifier_dir) / "classifier.json").read_text(encoding="utf-8"))
        self._forest = joblib.load(Path(self.classifier_dir) / "model.joblib")
        self._embedder = Embedder(info["embedder"], max_chars=info["embed_chars"], batch_size=self.batch_size)

    def process(self, records: list[dict]) -> list[float]:
        features = self._embedder.encode([r["text"] for r in records])
        return [round(float(p), 6) for p in self._forest.predict_proba(features)[:, 1]]


def run_edu_filter(
    recipe: Recipe, input: Path, output: Path, *, classifier: Path, force: bool = False
) -> dict:
    """Score `input` with the saved classifier and keep the educational part; adds `edu_score`."""
    cfg = recipe.data.curation.classifier
    classifier = Path(classifier)
    if not (classifier / "model.joblib").is_file():
        raise StageError(f"{classifier}: no saved classifier (run edu-classifier first)")
    params = {
        "threshold": cfg.threshold,
        "keep_fraction": cfg.keep_fraction,
        "embed_batch_size": cfg.embed_batch_size,
    }
    inputs = [Path(input), classifier]
    if manifest := fresh(output, stage=FILTER, version=VERSION, params=params, inputs=inputs, force=force):
        return manifest
    started = time.time()
    worker = EduScorer(str(classifier), sha256_file(classifier / "model.joblib"), cfg.embed_batch_size)
    # The tasks write scores only; the driver needs them all for the keep_fraction cut before it decides.
    parts = run_parts(
        input,
        worker,
        recipe.data.curation.executor,
        work_dir(output),
        cfg.embed_batch_size,
        ("text",),
        functools.partial(run_edu_filter, recipe, input, output, classifier=classifier, force=True),
    )
    scores = np.fromiter(chain.from_iterable(read_part(p) for p in parts), dtype=np.float64)
    if cfg.keep_fraction > 0 and len(scores):
        # The k-th highest score; ties at the cut are all kept (deterministic, no order dependence).
        k = max(1, round(cfg.keep_fraction * len(scores)))
        cut = float(np.sort(scores)[::-1][k - 1])
    else:
        cut = cfg.threshold
    writer = FilterWriter(FILTER, output, started, input)
    decisions = (
        (shard, {**record, "edu_score": float(score)}, None if score >= cut else "low_edu_score")
        for (shard, record), score in zip(read_input(input, ("text",)), scores, strict=True)
    )
    writer.write(decisions)
    hist = np.histogram(scores, bins=10, range=(0, 1))[0].tolist() if len(scores) else []
    return writer.manifest(
        version=VERSION,
        params=params,
        inputs=inputs,
        extra={
            "score_cut": cut,
            "score_histogram_0_1": hist,
            "mean_score": round(float(scores.mean()), 4) if len(scores) else None,
        },
    )
