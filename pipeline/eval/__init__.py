"""Few-shot evaluation: inputs, methods and baselines, statistics, the report, the run."""
