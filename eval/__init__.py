"""Evaluation: HumanEval / MBPP (generation + sandboxed execution, pass@k), MMLU / ARC through lm-eval, and the
report. See eval/README.md. Python entry points, one per stage, each returning manifests:

    evaluate_code(benchmark, cfg, output, *, model_dir | samples, ...) -> dict     # eval.code_eval
    evaluate_lm(model_dir, tasks, out_dir, *, benchmarks_dir, ...) -> {name: dict}  # eval.lm_eval_runner
    evaluate_recipe(recipe, *, force=False) -> {label: {name: dict}}              # eval.suite
    write_report(recipe, *, force=False) -> dict                                  # eval.report
"""
