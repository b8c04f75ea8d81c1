"""The MLflow run of `metaray evaluate`: opened when evaluation starts, nested under the
training run it evaluates (same experiment), results as a table and CIs as metrics.

Metric names: `eval/k<K>/<method>` (the mean after each number of inner steps, the step axis
being inner steps), `eval/k<K>/<method>/ci_lo|ci_hi`, and the paired differences
`eval/k<K>/meta_init_minus_<method>` with theirs; per task group (seen / unseen script) the
paired differences again, `eval/k<K>/<group>/meta_init_minus_<method>`: the numbers of the
verdict's per-group lines. Methods and groups are written with `_` for spaces.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from pipeline.config import TrackingConfig

_OPEN: list[Any] = []  # runs opened and not ended: `fail_open` closes them on an error


def _slug(name: str) -> str:
    return name.replace(" - ", "_minus_").replace("-", "_").replace(" ", "_")


def training_run_id(cfg: TrackingConfig, run_name: str) -> str | None:
    """The newest training run named `run_name` in the experiment, if the store has one."""
    try:
        from mlflow import MlflowClient

        from pipeline.tracking.factory import resolve_uri

        client = MlflowClient(resolve_uri(cfg))
        exp = client.get_experiment_by_name(cfg.experiment)
        if exp is None:
            return None
        runs = client.search_runs(
            [exp.experiment_id],
            filter_string=f"tags.`metaray.kind` = 'train' and attributes.run_name = '{run_name}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0].info.run_id if runs else None
    except Exception:  # no store yet, or unreachable: the evaluation is logged unlinked
        return None


def open_run(
    cfg: TrackingConfig,
    run_name: str,
    train_run_name: str,
    params: Mapping,
    *,
    dataset: Mapping[str, str] | None = None,
) -> Any:
    """Start the evaluation's tracker now (its duration is the evaluation's). `dataset`: the
    shard set evaluated on (`describe.dataset_input`), logged as the run's input with context
    "evaluation": the training run's input has the same digest when it is the same shards."""
    from pipeline.tracking.factory import make_tracker

    parent = training_run_id(cfg, train_run_name)
    tracker = make_tracker(cfg.model_copy(update={"enabled": True, "parent_run_id": parent}))
    tags = _tags()
    if parent:
        tags["metaray.training_run_id"] = parent
    tracker.start(run_name, dict(params), tags=tags)
    if dataset is not None:
        tracker.log_dataset(dataset, context="evaluation")
    _OPEN.append(tracker)
    return tracker


def _tags() -> dict[str, str]:
    from pipeline.tracking.describe import command_tags

    tags = command_tags("evaluate")  # the same source, user and commit as a training run's
    command = tags["metaray.command"]
    tags["mlflow.note.content"] = f"metaray evaluate: few-shot evaluation.\n\nCommand: `{command}`"
    return tags


def fail_open() -> None:
    """End every evaluation run still open as FAILED (the command raised)."""
    while _OPEN:
        _OPEN.pop().end("FAILED")


def _metrics(rep: Mapping[str, Any]) -> dict[int, dict[str, float]]:
    """step -> {metric name: value}."""
    out: dict[int, dict[str, float]] = {}

    def add(base: str, per: Mapping[str, Any]) -> None:
        for s in map(str, rep["steps"]):
            o = per[s].get("overall", per[s])  # a group's summaries are overall already
            vals = {base: o["mean"], f"{base}/ci_lo": o["lo"], f"{base}/ci_hi": o["hi"]}
            good = {n: float(v) for n, v in vals.items() if v is not None and math.isfinite(v)}
            out.setdefault(int(s), {}).update(good)

    for k in map(str, rep["shots"]):
        pairs = rep["paired"].get(k, {})
        for name, per in {**rep["results"][k], **pairs}.items():
            add(f"eval/k{k}/{_slug(name)}", per)
        for g, by in rep.get("by_group", {}).get(k, {}).items():
            for name in (n for n in by if n in pairs):
                add(f"eval/k{k}/{_slug(g)}/{_slug(name)}", by[name])
    return out


def table_rows(rep: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per shot count, method (or paired difference) and inner steps."""
    rows = []
    for k in map(str, rep["shots"]):
        series = {**rep["results"][k], **rep["paired"].get(k, {})}
        for name, per in series.items():
            for s in map(str, rep["steps"]):
                o = per[s]["overall"]
                rows.append(
                    {
                        "shots": int(k),
                        "method": name,
                        "inner_steps": int(s),
                        "mean": o["mean"],
                        "ci_lo": o["lo"],
                        "ci_hi": o["hi"],
                        "n_tasks": o.get("n_tasks"),
                        "metric": rep["metric"],
                    }
                )
    return rows


def log_report(
    tracking: Any,
    rep: Mapping[str, Any],
    text: str,
    files: list[Any],
    *,
    run_name: str = "evaluate",
    log: Callable[[str], None] = print,
) -> str | None:
    """Log the report to `tracking` (an open run from `open_run`, or a TrackingConfig: a run
    is opened now) and end it; prints where to look. Returns the run id."""
    from pipeline.tracking.describe import where_to_look

    if isinstance(tracking, TrackingConfig):
        params = {k: rep.get(k) for k in ("checkpoint", "shards", "bank", "algorithm", "k_query")}
        tracking = open_run(tracking, run_name, run_name.removeprefix("evaluate-"), params)
    for step, metrics in sorted(_metrics(rep).items()):
        tracking.log_metrics(metrics, step)
    tracking.log_table(table_rows(rep), "evaluation/results.json")
    tracking.log_text(text, "evaluation/eval_table.txt")
    for f in files:
        tracking.log_artifact(f, "evaluation")
    tracking.end("FINISHED")
    if tracking in _OPEN:
        _OPEN.remove(tracking)
    uri = getattr(tracking, "uri", "")
    log(f"logged the evaluation to MLflow run {tracking.run_id}")
    if uri:
        log("next: " + where_to_look(uri, tracking.experiment_id, tracking.run_id))
    return tracking.run_id
