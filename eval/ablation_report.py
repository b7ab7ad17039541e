"""runs/<recipe>/ablation.md + ablation/{summary.json, <label>.png}: the data ablation's tables, intervals and
conclusion, computed from the per-item files the runs wrote (eval/<label>/bpb.jsonl, pass@k samples).

Uncertainty (two levels, one bootstrap): each replicate resamples the items (problems or held-out documents,
with replacement, the same draw for every arm, so arm differences are paired over items) and, per arm, the
seeds (with replacement). An arm's value in a replicate is the mean over its drawn seeds of the pooled metric
(bits per byte = sum of NLL / sum of bytes over the drawn items). Intervals are percentile intervals; a
difference is "outside noise" when its interval excludes zero.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stagekit.io import StageError, atomic_path, read_jsonl, read_manifest, write_json

LN2 = math.log(2)


@dataclass
class Table:
    """One metric for every arm: num[arm] is [seeds, items]; the metric is sum(num) / sum(den) over items."""

    label: str  # checkpoint (pretrain / finetune)
    name: str  # item set, e.g. humaneval, heldout/code_raw, pass@1/humaneval
    unit: str
    items: list[str]
    den: np.ndarray  # [items]
    num: dict[str, np.ndarray]


# ---- reading the per-item files -----------------------------------------------------------------------------


def bpb_tables(runs, label: str) -> list[Table]:
    """Bits-per-byte tables of one checkpoint label, from every run's eval/<label>/bpb.jsonl."""
    per_set: dict[str, dict] = {}
    for run in runs:
        path = run.recipe.run_path / "eval" / label / "bpb.jsonl"
        rows: dict[str, list[dict]] = {}
        for record in read_jsonl(path, required=("set", "id", "nll", "bytes")):
            rows.setdefault(record["set"], []).append(record)
        for name, records in rows.items():
            entry = per_set.setdefault(
                name, {"ids": [r["id"] for r in records], "bytes": [r["bytes"] for r in records], "num": {}}
            )
            if [r["id"] for r in records] != entry["ids"]:
                raise StageError(f"{path}: set '{name}' holds other items than the other runs' files")
            entry["num"].setdefault(run.arm.name, []).append([r["nll"] / LN2 for r in records])
    return [
        Table(
            label,
            name,
            "bits/byte",
            e["ids"],
            np.array(e["bytes"], float),
            {a: np.array(v) for a, v in e["num"].items()},
        )
        for name, e in per_set.items()
    ]


def pass_tables(runs, label: str) -> list[Table]:
    """pass@1 tables (greedy run) from the code harness's samples files, when ablation.pass_at_k ran."""
    tables = []
    for bench in ("humaneval", "mbpp"):
        per_arm: dict[str, list[list[float]]] = {}
        ids = None
        for run in runs:
            path = run.recipe.run_path / "eval" / label / f"{bench}.samples.jsonl"
            if not path.is_file():
                return tables
            passed: dict[str, list[bool]] = {}
            for r in read_jsonl(path, required=("task_id", "passed")):
                if r.get("run", "greedy") == "greedy":
                    passed.setdefault(r["task_id"], []).append(bool(r["passed"]))
            ids = ids or sorted(passed)
            per_arm.setdefault(run.arm.name, []).append([float(np.mean(passed[t])) for t in ids])
        tables.append(
            Table(
                label,
                f"pass@1/{bench}",
                "pass@1",
                ids,
                np.ones(len(ids)),
                {a: np.array(v) for a, v in per_arm.items()},
            )
        )
    return tables


# ---- bootstrap ----------------------------------------------------------------------------------------------


def point(num: np.ndarray, den: np.ndarray) -> float:
    """The arm's estimate: the pooled metric per seed, averaged over seeds."""
    return float((num.sum(1) / den.sum()).mean())


def replicates(
    num: np.ndarray, den: np.ndarray, item_draws: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """[B] bootstrap values: items drawn by item_draws [B, N] (shared by arms), seeds drawn here with replacement."""
    ratio = num[:, item_draws].sum(-1) / den[item_draws].sum(-1)  # [seeds, B]
    seeds = rng.integers(0, num.shape[0], size=(item_draws.shape[0], num.shape[0]))  # [B, seeds drawn]
    return ratio[seeds, np.arange(item_draws.shape[0])[:, None]].mean(1)


def interval(values: np.ndarray, confidence: float) -> list[float]:
    tail = (1 - confidence) / 2 * 100
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]


def analyse(table: Table, pairs: list[tuple[str, str]], samples: int, confidence: float, seed: int) -> dict:
    """Point estimates, per-seed values, intervals per arm and for each pair's difference (a - b)."""
    rng = np.random.default_rng([seed, len(table.items)])
    draws = rng.integers(0, len(table.items), size=(samples, len(table.items)))
    reps = {arm: replicates(num, table.den, draws, rng) for arm, num in table.num.items()}
    arms = {
        arm: {
            "value": point(num, table.den),
            "per_seed": (num.sum(1) / table.den.sum()).tolist(),
            "ci": interval(reps[arm], confidence),
        }
        for arm, num in table.num.items()
    }
    diffs = []
    for a, b in pairs:
        ci = interval(reps[a] - reps[b], confidence)
        diffs.append(
            {
                "a": a,
                "b": b,
                "diff": arms[a]["value"] - arms[b]["value"],
                "ci": ci,
                "outside_noise": ci[0] > 0 or ci[1] < 0,
            }
        )
    return {
        "label": table.label,
        "set": table.name,
        "unit": table.unit,
        "items": len(table.items),
        "arms": arms,
        "differences": diffs,
    }


# ---- the report ---------------------------------------------------------------------------------------------


def compute(runs) -> dict:
    """Per-arm tokens, FLOPs and unique data from the runs' export and shard manifests."""
    from modeling import ModelConfig

    out: dict[str, dict] = {}
    for run in runs:
        stage = run.recipe.ablation.stage
        export = run.recipe.run_path / stage / "export"
        manifest = read_manifest(export) or {}
        if "counts" not in manifest:
            raise StageError(f"{export}: no export manifest; train the arm first")
        section = run.recipe.train.section(stage)
        config = ModelConfig.from_hf_config(json.loads((export / "config.json").read_text()))
        tokens = manifest["counts"]["tokens"]
        entry = out.setdefault(run.arm.name, {"tokens": [], "flops": [], "params": config.num_params()})
        entry["tokens"].append(tokens)
        entry["flops"].append(tokens * config.flops_per_token(section.seq_len))
        dirs = [Path(section.shards)] + [Path(p.shards) for p in section.phases[1:]]
        shards = [read_manifest(d) or {} for d in dirs]
        entry["unique_tokens"] = sum(m.get("counts", {}).get("train", {}).get("tokens", 0) for m in shards)
        entry["train_documents"] = sum(
            m.get("counts", {}).get("train", {}).get("documents", 0) for m in shards
        )
        entry["mixture"] = [
            {k: c[k] for k in ("name", "weight", "documents", "train_documents", "train_share")}
            for m in shards
            for c in m.get("mixture", [])
        ]
    return out


def comparison_pairs(cfg) -> list[tuple[str, str]]:
    names = [a.name for a in cfg.arms]
    base = cfg.baseline or names[0]
    pairs = [(a, base) for a in names if a != base]
    extra = [tuple(p.split(":")) for p in cfg.comparisons]
    return pairs + [p for p in extra if p not in pairs]


def _fmt(x: float) -> str:
    return f"{x:.3f}" if abs(x) < 100 else f"{x:.4g}"


def _ci(ci: list[float]) -> str:
    return f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"


def markdown(recipe, runs, results: list[dict], compute_: dict, wall_seconds: float) -> str:
    cfg = recipe.ablation
    section = runs[0].recipe.train.section(cfg.stage)
    level = f"{cfg.confidence:.0%}"
    lines = [
        f"# Data ablation: {recipe.name}",
        "",
        f"{len(cfg.arms)} arms x {len(cfg.seeds)} seeds ({', '.join(map(str, cfg.seeds))}); model `{recipe.model.preset}` "
        f"({next(iter(compute_.values()))['params']:,} parameters); {cfg.stage} {section.max_steps} steps x "
        f"{section.global_batch_size} x {section.seq_len} tokens, {section.schedule} schedule, lr {section.lr}. "
        f"Arms differ only in data. Intervals: {level} bootstrap over items and seeds ({cfg.bootstrap_samples} "
        f"replicates). Wall time of this run (including reused stages): {wall_seconds:.0f} s.",
        "",
        "## Arms",
        "",
        "| arm | data | tokens trained | FLOPs | unique train tokens (docs) | epochs | mixture (train share) |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm in cfg.arms:
        c = compute_[arm.name]
        tokens = sorted(set(c["tokens"]))
        mix = ", ".join(f"{m['name']} x{m['weight']:.3g} ({m['train_share']:.0%})" for m in c["mixture"])
        epochs = c["tokens"][0] / c["unique_tokens"] if c["unique_tokens"] else float("nan")
        lines.append(
            f"| {arm.name} | {arm.description} | {'/'.join(f'{t:,}' for t in tokens)} | {c['flops'][0]:.3g} | "
            f"{c['unique_tokens']:,} ({c['train_documents']}) | {epochs:.2f} | {mix} |"
        )
    for result in results:
        lines += [
            "",
            f"## {result['label']}: {result['set']} ({result['unit']}, {result['items']} items; lower is better)"
            if result["unit"] == "bits/byte"
            else f"## {result['label']}: {result['set']} ({result['items']} problems; higher is better)",
            "",
        ]
        lines += [
            f"| arm | {result['unit']} | {level} CI | per seed | vs | difference | {level} CI | outside noise |",
            "|---|---|---|---|---|---|---|---|",
        ]
        diffs = {d["a"]: d for d in result["differences"] if d["b"] == (cfg.baseline or cfg.arms[0].name)}
        for arm, r in result["arms"].items():
            d = diffs.get(arm)
            tail = (
                f"{d['b']} | {d['diff']:+.3f} | {_ci(d['ci'])} | {'yes' if d['outside_noise'] else 'no'}"
                if d
                else "| | |"
            )
            lines.append(
                f"| {arm} | {_fmt(r['value'])} | {_ci(r['ci'])} | {', '.join(_fmt(v) for v in r['per_seed'])} | {tail} |"
            )
        others = [d for d in result["differences"] if d["a"] not in diffs or diffs[d["a"]] is not d]
        for d in others:
            lines.append(
                f"| {d['a']} | | | | {d['b']} | {d['diff']:+.3f} | {_ci(d['ci'])} | {'yes' if d['outside_noise'] else 'no'} |"
            )
    lines += ["", "## Conclusion", "", *conclusion(results, len(cfg.seeds)), ""]
    plots = sorted({r["label"] for r in results})
    lines += [f"![{p}](ablation/{p}.png)" for p in plots]
    return "\n".join(lines) + "\n"


def conclusion(results: list[dict], num_seeds: int) -> list[str]:
    """One line per compared pair: where a is better or worse outside noise, and where it is inside noise."""
    verdicts: dict[tuple[str, str], dict[str, list[str]]] = {}
    for r in results:
        for d in r["differences"]:
            lower_is_better = r["unit"] == "bits/byte"
            kind = (
                "inside"
                if not d["outside_noise"]
                else "better"
                if (d["diff"] < 0) == lower_is_better
                else "worse"
            )
            where = f"{r['set']} ({d['diff']:+.3f} {_ci(d['ci'])})" if kind != "inside" else r["set"]
            verdicts.setdefault((d["a"], d["b"]), {"better": [], "worse": [], "inside": []})[kind].append(
                where
            )
    out = []
    for (a, b), v in verdicts.items():
        parts = [f"{k} on {', '.join(v[k])}" for k in ("better", "worse") if v[k]]
        inside = f"inside noise on {', '.join(v['inside'])}" if v["inside"] else "no metric inside noise"
        out.append(f"- **{a} vs {b}**: {'; '.join(parts) or 'no difference outside noise'}; {inside}.")
    if num_seeds < 3:
        out.append(
            f"- Only {num_seeds} seed(s) per arm: the seed part of each interval rests on {num_seeds} value(s), so "
            "the intervals understate seed-to-seed variation (with 1 seed they are item-sampling intervals only)."
        )
    return out


def plot(results: list[dict], label: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [r for r in results if r["label"] == label]
    fig, axes = plt.subplots(1, len(chosen), figsize=(3.2 * len(chosen), 3.4), squeeze=False)
    for ax, r in zip(axes[0], chosen):
        arms = list(r["arms"])
        values = [r["arms"][a]["value"] for a in arms]
        errors = np.array(
            [[v - r["arms"][a]["ci"][0], r["arms"][a]["ci"][1] - v] for a, v in zip(arms, values)]
        ).T
        ax.bar(arms, values, yerr=errors, capsize=3, color="tab:blue", alpha=0.8)
        low = min(r["arms"][a]["ci"][0] for a in arms)
        ax.set_ylim(bottom=max(0.0, low - 0.1 * abs(low)))
        ax.set_title(r["set"], fontsize=9)
        ax.set_ylabel(r["unit"])
        ax.tick_params(axis="x", rotation=60, labelsize=7)
    fig.suptitle(f"{label}: arms with {label} intervals", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_report(recipe, runs, *, wall_seconds: float) -> Path:
    """Analyse every run's per-item files and write ablation.md, ablation/summary.json and the plots."""
    cfg = recipe.ablation
    pairs = comparison_pairs(cfg)
    tables = []
    for label in runs[0].labels:
        tables += bpb_tables(runs, label) + pass_tables(runs, label)
    results = [analyse(t, pairs, cfg.bootstrap_samples, cfg.confidence, recipe.seed) for t in tables]
    compute_ = compute(runs)
    out_dir = recipe.run_path / "ablation"
    for label in runs[0].labels:
        plot(results, label, out_dir / f"{label}.png")
    write_json(
        out_dir / "summary.json",
        {"recipe": recipe.name, "compute": compute_, "results": results, "wall_seconds": wall_seconds},
    )
    report = recipe.run_path / "ablation.md"
    with atomic_path(report) as tmp:
        tmp.write_text(markdown(recipe, runs, results, compute_, wall_seconds), encoding="utf-8")
    return report
