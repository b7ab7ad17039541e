"""lm-eval path: generated offline tasks keep lm-eval's prompts; ARC accuracy equals an independent
log-likelihood computation; MMLU's per-category and overall numbers aggregate a hand-made result set as lm-eval
does (size-weighted); a missing benchmark directory or file says which and how to provide it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from lm_eval.api.model import LM

from eval.lm_eval_runner import evaluate_lm
from eval.lm_tasks import lm_eval_tasks_dir, write_task_configs
from recipes.evaluation import LmEvalTask
from stagekit.io import StageError


def _load_generated(path: Path) -> dict:
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: ("function", loader.construct_scalar(node)))
    return yaml.load(path.read_text(), Loader=Loader)  # noqa: S506 - our own file, SafeLoader subclass


def _lm_eval_config(relative: str) -> dict:
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(lm_eval_tasks_dir() / relative, resolve_func=False)


def test_generated_tasks_keep_lm_eval_prompts_and_read_local_files(tmp_path, benchmarks_dir):
    info = write_task_configs(benchmarks_dir, tmp_path / "tasks", ["arc_challenge", "mmlu"])
    ours, theirs = (
        _load_generated(tmp_path / "tasks/arc_challenge.yaml"),
        _lm_eval_config("arc/arc_challenge.yaml"),
    )
    for key in (
        "doc_to_text",
        "doc_to_choice",
        "doc_to_target",
        "metric_list",
        "output_type",
        "test_split",
        "training_split",
    ):
        assert ours[key] == theirs[key], key
    assert "dataset_path" not in ours and ours["custom_dataset"] == ("function", "eval.lm_tasks.load_local")
    assert ours["dataset_kwargs"]["files"]["test"] == str(benchmarks_dir / "arc_challenge/test.jsonl")
    ours, theirs = (
        _load_generated(tmp_path / "tasks/mmlu/mmlu_anatomy.yaml"),
        _lm_eval_config("mmlu/default/mmlu_anatomy.yaml"),
    )
    for key in (
        "doc_to_text",
        "doc_to_choice",
        "description",
        "fewshot_split",
        "fewshot_config",
        "tag",
        "task",
    ):
        assert ours[key] == theirs[key], key
    assert ours["dataset_kwargs"]["subject"] == "anatomy"
    assert len(list((tmp_path / "tasks/mmlu").glob("mmlu_*.yaml"))) == 57
    assert set(info) == {"arc_challenge", "mmlu"} and len(info["mmlu"]["config_sha256"]) == 64


def _choice_loglikelihoods(model, tokenizer, context: str, choices: list[str]) -> list[float]:
    """log p(" choice" | context), scoring the continuation tokens of tokenize(context + continuation)."""
    import torch

    out = []
    ctx_ids = tokenizer(context).input_ids
    for choice in choices:
        ids = tokenizer(context + " " + choice).input_ids
        with torch.no_grad():
            logprobs = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
        out.append(sum(logprobs[pos - 1, ids[pos]].item() for pos in range(len(ctx_ids), len(ids))))
    return out


def test_arc_accuracy_equals_independent_loglikelihood_choice(tmp_path, tiny_model, benchmarks_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    limit = 12
    manifests = evaluate_lm(tiny_model, [LmEvalTask("arc_easy", 0, limit)], tmp_path, benchmarks_dir=benchmarks_dir,
                            batch_size=5, device="cpu", label="tiny")  # fmt: skip
    result = json.loads((tmp_path / "arc_easy-0shot.json").read_text())
    samples = {s["doc_id"]: s for s in map(json.loads, open(tmp_path / "arc_easy-0shot.samples.jsonl"))}
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype="float32").eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    rows = [
        json.loads(line) for line in (benchmarks_dir / "arc_easy/test.jsonl").read_text().splitlines()[:limit]
    ]
    acc = acc_norm = 0
    for i, row in enumerate(rows):
        choices = row["choices"]["text"]
        lls = _choice_loglikelihoods(model, tokenizer, f"Question: {row['question']}\nAnswer:", choices)
        gold = row["choices"]["label"].index(row["answerKey"])
        acc += max(range(len(lls)), key=lambda j: lls[j]) == gold
        acc_norm += max(range(len(lls)), key=lambda j: lls[j] / len(choices[j])) == gold
        assert samples[i]["loglikelihoods"] == pytest.approx(lls, abs=1e-3)
    assert result["metrics"]["acc"] == pytest.approx(acc / limit)
    assert result["metrics"]["acc_norm"] == pytest.approx(acc_norm / limit)
    assert result["documents"] == limit and result["shots"] == 0 and result["limit"] == limit
    assert result["lm_eval_version"] and len(result["task_config_sha256"]) == 64
    assert manifests["arc_easy-0shot"]["inputs"][str(tiny_model)] == result["model_sha256"]


def _mmlu_subjects() -> dict[str, str]:
    """{subject: category group} read from lm-eval's own MMLU task files."""
    from lm_eval.tasks._yaml_loader import load_yaml

    out = {}
    for path in sorted((lm_eval_tasks_dir() / "mmlu/default").glob("mmlu_*.yaml")):
        cfg = load_yaml(path, resolve_func=False)
        out[cfg["dataset_name"]] = cfg["tag"].removesuffix("_tasks")
    return out


class AlwaysA(LM):
    """An lm-eval LM that prefers the answer " A" everywhere: on MMLU, correct exactly when answer == 0."""

    def loglikelihood(self, requests):
        return [(0.0 if r.args[1].strip() == "A" else -1.0, False) for r in requests]

    def loglikelihood_rolling(self, requests):
        raise NotImplementedError

    def generate_until(self, requests):
        raise NotImplementedError


def test_mmlu_aggregation_on_a_hand_made_result_set(tmp_path, tiny_model):
    """Subject i has 1 + i % 3 questions whose answers are chosen so the model gets a known number right;
    lm-eval's category and overall accuracies must be the size-weighted means of those."""
    subjects = _mmlu_subjects()
    bench = tmp_path / "bench" / "mmlu"
    bench.mkdir(parents=True)
    rows, correct = [], {}
    for i, subject in enumerate(sorted(subjects)):
        n = 1 + i % 3
        answers = [0 if j < (i % (n + 1)) else 1 + j % 3 for j in range(n)]  # the first i % (n+1) are "A"
        correct[subject] = (sum(a == 0 for a in answers), n)
        rows += [{"subject": subject, "question": f"{subject} q{j}?", "choices": ["w", "x", "y", "z"], "answer": a}
                 for j, a in enumerate(answers)]  # fmt: skip
    for split in ("test", "dev", "validation"):
        (bench / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    evaluate_lm(
        tiny_model,
        [LmEvalTask("mmlu", 0)],
        tmp_path / "out",
        benchmarks_dir=tmp_path / "bench",
        lm=AlwaysA(),
        label="fake",
    )
    result = json.loads((tmp_path / "out/mmlu-0shot.json").read_text())

    for subject, (c, n) in correct.items():
        assert result["subjects"][f"mmlu_{subject}"]["acc"] == pytest.approx(c / n), subject
        assert result["subjects"][f"mmlu_{subject}"]["documents"] == n
    for category in ("mmlu_stem", "mmlu_humanities", "mmlu_social_sciences", "mmlu_other"):
        members = [correct[s] for s, cat in subjects.items() if cat == category]
        expected = sum(c for c, _ in members) / sum(n for _, n in members)
        assert result["categories"][category]["acc"] == pytest.approx(expected), category
    total_c, total_n = sum(c for c, _ in correct.values()), sum(n for _, n in correct.values())
    assert result["metrics"]["acc"] == pytest.approx(total_c / total_n)
    assert result["metrics"]["acc_subject_mean"] == pytest.approx(
        sum(c / n for c, n in correct.values()) / 57
    )
    assert result["documents"] == total_n


def test_missing_benchmark_dir_or_file_says_which_and_how(tmp_path, tiny_model):
    with pytest.raises(StageError, match="TEXTBOOKS_BENCHMARKS") as info:
        evaluate_lm(
            tiny_model, [LmEvalTask("arc_easy", 0, 1)], tmp_path / "out", benchmarks_dir=tmp_path / "none"
        )
    assert str(tmp_path / "none") in str(info.value)
    (tmp_path / "bench" / "arc_easy").mkdir(parents=True)
    with pytest.raises(StageError, match=r"arc_easy/train\.jsonl: arc_easy train split not found"):
        evaluate_lm(
            tiny_model, [LmEvalTask("arc_easy", 0, 1)], tmp_path / "out", benchmarks_dir=tmp_path / "bench"
        )


class Recorder(LM):
    """An lm-eval LM that keeps the context of every request, per (task, document): what a model would see."""

    def __init__(self):
        super().__init__()
        self.contexts: dict[tuple[str, int], str] = {}

    def loglikelihood(self, requests):
        for r in requests:
            self.contexts.setdefault((r.task_name, r.doc_id), r.args[0])
        return [(0.0, False)] * len(requests)

    def loglikelihood_rolling(self, requests):
        raise NotImplementedError

    def generate_until(self, requests):
        raise NotImplementedError


@pytest.mark.slow
def test_mmlu_5shot_prompt_equals_lm_eval_stock_task(tmp_path, tiny_model, benchmarks_dir):
    """One rendered 5-shot MMLU prompt, through our runner and generated task, equals what lm-eval's own
    stock `mmlu_anatomy` task renders when pointed at the same local rows (HF `json` builder, no code of ours)."""
    import lm_eval.tasks
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    ours = Recorder()
    evaluate_lm(tiny_model, [LmEvalTask("mmlu", 5, 1)], tmp_path / "out", benchmarks_dir=benchmarks_dir,
                lm=ours, label="recorder")  # fmt: skip

    stock_dir = tmp_path / "stock"
    stock_dir.mkdir()
    files = {}
    for split in ("test", "dev"):
        rows = (benchmarks_dir / "mmlu" / f"{split}.jsonl").read_text().split("\n")  # JSON may hold U+2028
        files[split] = stock_dir / f"anatomy_{split}.jsonl"
        files[split].write_text(
            "".join(r + "\n" for r in rows if r and json.loads(r)["subject"] == "anatomy")
        )
    stock_yaml = Path(lm_eval.tasks.__file__).parent / "mmlu/default/mmlu_anatomy.yaml"
    (stock_dir / "stock_anatomy.yaml").write_text(yaml.safe_dump({
        "include": str(stock_yaml), "task": "stock_mmlu_anatomy", "dataset_path": "json", "dataset_name": None,
        "dataset_kwargs": {"data_files": {split: str(path) for split, path in files.items()}},
    }))  # fmt: skip
    theirs = Recorder()
    simple_evaluate(model=theirs, tasks=["stock_mmlu_anatomy"], num_fewshot=5, limit=1,
                    task_manager=TaskManager(include_path=str(stock_dir), include_defaults=False))  # fmt: skip

    prompt = ours.contexts[("mmlu_anatomy", 0)]
    assert prompt == theirs.contexts[("stock_mmlu_anatomy", 0)]
    dev = [json.loads(line) for line in files["dev"].read_text().split("\n") if line]
    first_test = json.loads(files["test"].read_text().split("\n")[0])
    assert prompt.count("\nAnswer:") == 6  # five solved dev examples, then the question
    assert (
        all(row["question"].strip() in prompt for row in dev[:5]) and first_test["question"].strip() in prompt
    )
    assert len([k for k in ours.contexts if k[0].startswith("mmlu_")]) == 57  # one document per subject
