"""The run/stage contract shared by data_pipeline, train and eval (DESIGN.md, "A stage").

- `stagekit.io`: strict JSONL reading (errors name file:line), atomic writes, manifests, freshness.
- `stagekit.cli`: the command-line shape of a stage and the one error path (`run_cli`).
- `stagekit.shards`: the packed token-shard format written by data_pipeline and read by train.
- `stagekit.assets`: offline assets (the SmolLM2 teacher weights) found and cached once.

It depends on `recipes` only; `modeling` depends on nothing here.
"""
