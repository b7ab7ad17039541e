"""Self-Instruct (Wang et al. 2022, "Self-Instruct: Aligning Language Models with Self-Generated Instructions").

Bootstrapping from a seed-task file (the 175-task schema: instruction, instances [{input, output}],
is_classification), every round:
1. instruction generation: 8 in-context instructions per prompt, 6 from the seeds and 2 from the
   tasks generated so far (seeds fill in while there are fewer than 2), sec. 2.2;
2. filtering: 3-150 words, no keyword a text-only model cannot act on (image, graph, ...), no leading
   punctuation, and max ROUGE-L F to the whole pool < 0.7, sec. 2.2;
3. classification identification, few-shot from seed tasks of both kinds, sec. 2.2;
4. instance generation: output-first for classification tasks (a label, then an input for it),
   input-first otherwise, sec. 2.2; tasks without a usable instance are dropped.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

from data_pipeline.generation.runner import run_prompts
from data_pipeline.generation.sources import DEFAULT_SEED_TASKS, chat
from data_pipeline.teachers.base import Sampling, Teacher
from stagekit.io import StageError, read_jsonl_numbered, sha256_text


def load_seed_tasks(path: str | Path | None = None) -> list[dict]:
    """Seed tasks in the Self-Instruct schema; a malformed one names file:line."""
    path = Path(path or DEFAULT_SEED_TASKS)
    tasks = []
    for lineno, record in read_jsonl_numbered(
        path, required=("instruction", "instances", "is_classification")
    ):
        instances = record["instances"]
        ok = (
            isinstance(instances, list)
            and instances
            and all(
                isinstance(i, dict) and isinstance(i.get("input"), str) and isinstance(i.get("output"), str)
                for i in instances
            )
        )
        if not isinstance(record["instruction"], str) or not record["instruction"].strip() or not ok:
            raise StageError(
                f"{path}:{lineno}: expected a non-empty 'instruction' and 'instances' as a list of {{input, output}} strings"
            )
        if not isinstance(record["is_classification"], bool):
            raise StageError(f"{path}:{lineno}: 'is_classification' must be true or false")
        tasks.append(record)
    if not tasks:
        raise StageError(f"{path}: no seed tasks")
    return tasks


# --- 1. instruction generation -------------------------------------------------------------------------


def instruction_prompt(instructions: list[str]) -> str:
    numbered = "".join(f"Task {i}: {text}\n" for i, text in enumerate(instructions, 1))
    return (
        "Come up with a series of new and diverse tasks. Write each task as one instruction, numbered like the "
        f"examples.\n\n{numbered}Task {len(instructions) + 1}:"
    )


TASK_SPLIT = re.compile(r"(?:^|\n)\s*(?:Task\s*\d+\s*:|\d+\s*[.)])\s*", re.I)


def parse_instructions(completion: str) -> list[str]:
    """The numbered instructions the teacher continued with (one per 'Task N:' or 'N.' item)."""
    found = []
    for piece in TASK_SPLIT.split(completion):
        text = " ".join(piece.strip().split("\n\n")[0].split())
        if text:
            found.append(text)
    return found


# --- 2. filtering ----------------------------------------------------------------------------------------


class RougeL:
    """ROUGE-L F-measure (Lin 2004) with rouge-score's tokenizer, as the Self-Instruct code uses."""

    def __init__(self) -> None:
        from rouge_score import rouge_scorer

        self._scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)

    def __call__(self, a: str, b: str) -> float:
        return self._scorer.score(a, b)["rougeL"].fmeasure

    def max_to(self, candidate: str, pool: list[str]) -> float:
        return max((self(candidate, p) for p in pool), default=0.0)


def rejection(instruction: str, pool: list[str], rouge: RougeL, cfg) -> str | None:
    """The first filter rule `instruction` fails (None: keep). `cfg` is a SelfInstructSection."""
    words = len(instruction.split())
    if words < cfg.min_words or words > cfg.max_words:
        return "length"
    lowered = instruction.lower()
    if any(re.search(rf"\b{re.escape(k.lower())}\b", lowered) for k in cfg.blocked_keywords):
        return "keyword"
    if not instruction[0].isascii() or not instruction[0].isalnum():
        return "format"
    if rouge.max_to(instruction, pool) >= cfg.rouge_threshold:
        return "similar"
    return None


# --- 3. classification identification -------------------------------------------------------------------


def classification_prompt(instruction: str, examples: list[dict]) -> str:
    shots = "".join(
        f"Task: {t['instruction']}\nIs it classification? {'Yes' if t['is_classification'] else 'No'}\n\n"
        for t in examples
    )
    return (
        "Can the following task be regarded as a classification task with finite output labels? Answer Yes or No.\n\n"
        f"{shots}Task: {instruction}\nIs it classification?"
    )


def parse_yes(completion: str) -> bool:
    return completion.strip().lower().startswith("yes")


# --- 4. instance generation -------------------------------------------------------------------------------


def instance_prompt(instruction: str, is_classification: bool, examples: list[dict]) -> str:
    if is_classification:  # output-first: a label, then an input that has it (avoids one-label skew)
        head = (
            "Given the classification task definition and the class labels, generate an input that corresponds to "
            "each of the class labels. If the task needs no input, just generate the possible class labels.\n\n"
        )
        shots = "".join(
            f"Task: {t['instruction']}\n"
            + "".join(f"Class label: {i['output']}\nInput: {i['input']}\n" for i in t["instances"])
            + "\n"
            for t in examples
        )
    else:  # input-first
        head = (
            "Come up with examples for the following tasks. Try to generate multiple examples when possible. "
            "If the task doesn't require additional input, you can generate the output directly.\n\n"
        )
        shots = "".join(
            f"Task: {t['instruction']}\n"
            + "".join(
                (f"Input: {i['input']}\n" if i["input"] else "") + f"Output: {i['output']}\n"
                for i in t["instances"]
            )
            + "\n"
            for t in examples
        )
    return f"{head}{shots}Task: {instruction}\n"


_END = r"(?=\n\s*(?:Input|Output|Class label|Task)\s*:|\Z)"
INPUT_FIRST = re.compile(rf"(?:Input:\s*(.*?)\s*)?Output:\s*(.*?){_END}", re.S)
OUTPUT_FIRST = re.compile(rf"Class label:\s*(.*?)\s*Input:\s*(.*?){_END}", re.S)


def parse_instances(completion: str, is_classification: bool) -> list[dict]:
    """{input, output} pairs, de-duplicated, without empty outputs or one input with two outputs."""
    text = completion.split("\nTask:")[0]
    if is_classification:
        pairs = [(inp, out) for out, inp in OUTPUT_FIRST.findall(text)]
    else:
        pairs = INPUT_FIRST.findall(text)
    instances, outputs = [], {}
    for inp, out in pairs:
        inp, out = inp.strip(), out.strip()
        if not out or outputs.setdefault(inp, out) != out or {"input": inp, "output": out} in instances:
            continue
        instances.append({"input": inp, "output": out})
    return instances


# --- the bootstrap loop -----------------------------------------------------------------------------------


def bootstrap(
    seeds: list[dict],
    teacher: Teacher,
    sampling: Sampling,
    cfg,
    *,
    seed: int,
    batch_size: int = 8,
    progress: bool = True,
) -> tuple[list[dict], Counter]:
    """Generate `cfg.num_instructions` new tasks; returns them and the drop counts per rule."""
    rng = random.Random(seed)
    rouge = RougeL()
    pool = [t["instruction"] for t in seeds]
    new: list[dict] = []
    drops: Counter = Counter()
    cls_shots = [t for t in seeds if t["is_classification"]][:4] + [
        t for t in seeds if not t["is_classification"]
    ][:4]

    def ask(prompts: list[str], step: str, round_no: int, max_new_tokens: int | None = None) -> list[str]:
        call = replace(
            sampling, seed=sampling.seed + round_no, max_new_tokens=max_new_tokens or sampling.max_new_tokens
        )
        records = [{"id": f"r{round_no}-{step}-{i}", "prompt": p} for i, p in enumerate(prompts)]
        desc = f"self-instruct r{round_no} {step}"
        out, _ = run_prompts(records, teacher, call, batch_size=batch_size, desc=desc, progress=progress)
        return [r["completion"] for r in out]  # a failed request (error) reads as an empty completion

    for round_no in range(1, cfg.max_rounds + 1):
        if len(new) >= cfg.num_instructions:
            break
        prompts = []
        for _ in range(cfg.prompts_per_round):
            machine = rng.sample(new, min(cfg.generated_in_context, len(new)))
            human = rng.sample(
                seeds, min(len(seeds), cfg.seed_in_context + cfg.generated_in_context - len(machine))
            )
            shown = [t["instruction"] for t in human + machine]
            rng.shuffle(shown)
            prompts.append(instruction_prompt(shown))
        accepted = []
        for completion in ask(prompts, "instructions", round_no):
            for instruction in parse_instructions(completion):
                reason = rejection(instruction, pool, rouge, cfg)
                if reason:
                    drops[reason] += 1
                    continue
                pool.append(instruction)
                accepted.append(instruction)
        if not accepted:
            continue
        # a Yes/No answer: Self-Instruct capped this call at 3 tokens
        labels = ask([classification_prompt(i, cls_shots) for i in accepted], "classify", round_no, 3)
        kinds = [parse_yes(a) for a in labels]
        prompts = []
        for instruction, is_cls in zip(accepted, kinds):
            same = [t for t in seeds if t["is_classification"] == is_cls]
            prompts.append(instance_prompt(instruction, is_cls, rng.sample(same, min(3, len(same)))))
        for instruction, is_cls, completion in zip(accepted, kinds, ask(prompts, "instances", round_no)):
            instances = parse_instances(completion, is_cls)
            if not instances:
                drops["no_instances"] += 1
                continue
            new.append(
                {
                    "id": "si-" + sha256_text(instruction)[:12],
                    "method": "self-instruct",
                    "instruction": instruction,
                    "instances": instances,
                    "is_classification": is_cls,
                    "round": round_no,
                    "text": render(instruction, instances),
                }
            )
    return new[: cfg.num_instructions], drops


def render(instruction: str, instances: list[dict]) -> str:
    """The training text: the instruction, then each instance's input (when any) and output, in the
    "Task: / Input: / Output:" layout Self-Instruct finetunes on (sec. 3; the prompts above use it too)."""
    shown = "".join(
        (f"Input: {i['input']}\n" if i["input"] else "") + f"Output: {i['output']}\n" for i in instances
    )
    return f"Task: {instruction}\n{shown}".rstrip() + "\n"


def round_one_prompts(seeds: list[dict], cfg, seed: int) -> list[dict]:
    """The first round's instruction-generation prompts (seeds only), for running on a fleet."""
    rng = random.Random(seed)
    k = min(len(seeds), cfg.seed_in_context + cfg.generated_in_context)
    return [
        {
            "method": "self-instruct",
            "messages": chat(instruction_prompt([t["instruction"] for t in rng.sample(seeds, k)])),
        }
        for _ in range(cfg.prompts_per_round)
    ]
