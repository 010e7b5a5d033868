"""Evaluation: MT-Bench (FastChat's single-answer grading) and AlpacaEval (alpaca_eval's weighted
pairwise protocol), with the judges behind one interface.

Modules (each with its launch command in its docstring):
- `mtbench_data`: fetch FastChat's MT-Bench files (sha256-checked).
- `mtbench`: judge prompts, score parsing, judgment/answer files, per-model scores.
- `alpaca`: pairwise annotation, annotation/model-output files, leaderboard via alpaca_eval.
- `judges`: the `Judge` interface and the OpenAI-compatible client (retries, cache, concurrency).
"""
