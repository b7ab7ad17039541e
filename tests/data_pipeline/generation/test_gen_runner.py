"""Runner: prompt validation, ids, journal/resume, quality stats, the generate stage and its CLI."""

import json

import pytest
from generation_helpers import main, minimal_recipe, read_ids, write_prompts

from data_pipeline.generation.runner import load_prompts, parts_dir, prompt_id, quality_stats, run_prompts
from data_pipeline.teachers import Sampling
from stagekit.io import StageError, read_manifest

S = Sampling(max_new_tokens=4, temperature=0.0, seed=0)


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "ok"}\n\n{"prompt": "ok 2"}\n{"prompt": broken\n')
    with pytest.raises(StageError, match=rf"{path}:4: malformed JSON"):
        load_prompts([path], S)


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"text": "no prompt"}', "needs a non-empty 'prompt'"),
        ('{"prompt": "   "}', "needs a non-empty 'prompt'"),
        ('{"messages": [{"role": "user"}]}', "'messages' must be"),
        ('{"messages": []}', "'messages' must be"),
    ],
)
def test_bad_records_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "fine"}\n\n' + line + "\n")
    with pytest.raises(StageError, match=rf"{path}:3: .*{message}"):
        load_prompts([path], S)


def test_duplicate_ids_are_rejected(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "same"}\n{"prompt": "same"}\n')
    with pytest.raises(StageError, match=rf"{path}:2: duplicate id .* \(first at {path}:1\)"):
        load_prompts([path], S)


def test_ids_hash_prompt_and_sampling_and_keep_metadata(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(
        '{"prompt": "Hi", "topic": "t"}\n{"id": 7, "messages": [{"role": "user", "content": "Yo"}]}\n'
    )
    a, b = load_prompts([path], S)
    assert a["id"] == prompt_id([{"role": "user", "content": "Hi"}], S) and a["topic"] == "t"
    assert b["id"] == "7"
    assert prompt_id(a["messages"], S) != prompt_id(
        a["messages"], Sampling(max_new_tokens=5, temperature=0.0)
    )


def test_quality_stats():
    rec = lambda text, finish="stop": {"completion": text, "finish_reason": finish, "completion_tokens": 3}  # noqa: E731
    stats = quality_stats(
        [
            rec("Once upon a time there was a cat."),
            rec("Have you ever wondered why?", "length"),
            rec("Plants make food from light in their leaves."),
            rec("Plants make food from light in their leaves, roots"),
            {"completion": "", "finish_reason": "error", "error": "x", "completion_tokens": 0},
        ]
    )
    assert stats["completions"] == 4
    assert (
        stats["hit_max_tokens"] == 0.25
        and stats["banned_opener"] == 0.5
        and stats["duplicate_prefix"] == 0.25
    )


@pytest.mark.slow
def test_journal_resume_skips_done_and_cuts_torn_line(teacher, tmp_path):
    prompts = [{"id": f"q{i}", "prompt": f"Say the number {i}."} for i in range(4)]
    journal = tmp_path / "out.jsonl.partial"
    first, stats = run_prompts(prompts[:2], teacher, S, batch_size=2, journal=journal, progress=False)
    assert stats.done == 2
    with open(journal, "a") as f:
        f.write('{"id": "q2", "completion": "torn')  # a kill -9 in the middle of a write
    out, stats = run_prompts(prompts, teacher, S, batch_size=2, journal=journal, progress=False)
    assert [r["id"] for r in out] == ["q0", "q1", "q2", "q3"]
    assert stats.resumed == 2 and stats.done == 4 and stats.failed == 0
    assert out[:2] == first  # reused, not regenerated
    lines = journal.read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["q0", "q1", "q2", "q3"]
    for r in out:
        assert r["teacher"] == teacher.name and r["sampling"] == S.to_dict()
        assert 0 < r["completion_tokens"] <= 4 and r["finish_reason"] in ("stop", "length")


@pytest.mark.slow
def test_generate_cli_end_to_end(tmp_path, capsys):
    prompts, output = tmp_path / "prompts.jsonl", tmp_path / "gen.jsonl"
    ids = write_prompts(prompts, 3)
    argv = [
        "generate",
        "--recipe",
        str(minimal_recipe(tmp_path)),
        "--input",
        str(prompts),
        "--output",
        str(output),
    ]
    argv += ["--max-new-tokens", "6", "--batch-size", "2"]
    assert main([*argv, "data.generation.teacher.threads=1"]) == 0
    assert read_ids(output) == ids and not parts_dir(output).exists()
    manifest = read_manifest(output)
    assert manifest["counts"]["done"] == 3 and manifest["counts"]["failed"] == 0
    assert manifest["params"]["sampling"]["max_new_tokens"] == 6
    assert manifest["teacher"] == "transformers:smollm2-135m-instruct"
    assert manifest["throughput"]["tokens_per_s"] > 0 and "hit_max_tokens" in manifest["quality"]
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert manifest["counts"]["completion_tokens"] == sum(r["completion_tokens"] for r in records)
    assert all(r["method"] == "custom" and r["messages"][0]["role"] == "user" for r in records)
    # unchanged inputs and parameters: skipped, not regenerated
    assert main([*argv, "data.generation.teacher.threads=1"]) == 0
    assert "up to date" in capsys.readouterr().err


def test_generate_cli_bad_input_exits_2(tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a"}\n{"prompt": 5}\n')
    recipe = str(minimal_recipe(tmp_path))
    code = main(
        ["generate", "--recipe", recipe, "--input", str(prompts), "--output", str(tmp_path / "o.jsonl")]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and f"{prompts}:2" in err
    assert not (tmp_path / "o.jsonl").exists()


def test_unknown_recipe_key_exits_2(tmp_path, capsys):
    recipe = str(minimal_recipe(tmp_path))
    code = main(
        ["prompts", "--recipe", recipe, "--method", "cosmopedia", "data.generation.cosmopedia.bogus=1"]
    )
    assert code == 2 and "data.generation.cosmopedia.bogus" in capsys.readouterr().err


def test_unreachable_server_cli_exits_2_and_keeps_journal(tmp_path, capsys):
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    prompts, output = tmp_path / "p.jsonl", tmp_path / "o.jsonl"
    write_prompts(prompts, 2)
    code = main(
        ["generate", "--recipe", str(minimal_recipe(tmp_path)), "--input", str(prompts), "--output", str(output),
         "--teacher", "openai", "--base-url", url,
         "--model", "m", "--retries", "1", "data.generation.teacher.backoff_s=0.01"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "error: generate: 2 of 2 prompts failed after the teacher's retries" in err
    assert "failed after 2 attempts" in err and "ClientConnectorError" in err  # connection refused
    assert not output.exists()
    assert [
        json.loads(line)["error"] is not None
        for line in (parts_dir(output) / "part-00000.jsonl.partial").read_text().splitlines()
    ] == [True, True]


def test_repeated_ids_counted_on_disk_as_a_set_counts_them(tmp_path):
    import random

    from data_pipeline.generation.runner import RepeatedIds

    rng = random.Random(0)
    values = [rng.getrandbits(64) for _ in range(20000)]
    values += rng.sample(values, 300) + [values[0]] * 3  # repeats spread over every bucket, one id four times
    rng.shuffle(values)
    ids = RepeatedIds(tmp_path / "ids")
    for v in values:
        ids.add(v)
    assert ids.count() == len(values) - len(set(values)) == 303
