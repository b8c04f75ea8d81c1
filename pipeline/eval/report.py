"""The evaluation report: summaries, paired differences and groups as one JSON-able dict,
the terminal table, and PNG plots (matplotlib Agg canvas, atomic writes)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.data.episodes import UNIFORM_BPB
from pipeline.eval import stats as st
from pipeline.tracking.redact import dumps  # valid JSON (no NaN), no credentials

REFERENCE = "meta-init"  # paired differences are reference minus each other method
BASELINE = "multitask"  # the verdict compares the meta-init against multitask + fine-tuning
MIN_CI_TASKS = st.MIN_CI_TASKS


def build(
    raw: Mapping[str, Mapping[int, Mapping[int, Mapping[str, Sequence[float]]]]],
    *,
    kind: str,
    metric: str,
    higher_is_better: bool,
    groups: Mapping[str, Sequence[str]] | None = None,
    info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """`raw[method][shot][step][task] = [metric per episode]` -> the report dict."""
    methods = list(raw)
    shots = sorted({k for m in raw.values() for k in m})
    steps = sorted({s for m in raw.values() for per in m.values() for s in per})
    groups = {g: list(ts) for g, ts in (groups or {}).items() if ts}
    rep: dict[str, Any] = {
        "kind": kind,
        "metric": metric,
        "higher_is_better": higher_is_better,
        "methods": methods,
        "shots": shots,
        "steps": steps,
        "groups": groups,
        **dict(info or {}),
        "results": {},
        "paired": {},
        "by_group": {},
        "per_episode": {},
    }
    for k in shots:
        rep["results"][str(k)] = {
            m: {str(s): st.summarize(raw[m][k][s]) for s in steps} for m in methods
        }
        rep["paired"][str(k)] = {
            f"{REFERENCE} - {m}": {
                str(s): st.paired(raw[REFERENCE][k][s], raw[m][k][s]) for s in steps
            }
            for m in _others(raw)
        }
        rep["by_group"][str(k)] = {
            g: _group(raw, k, steps, set(tasks)) for g, tasks in groups.items()
        }
        rep["per_episode"][str(k)] = {
            m: {str(s): {t: list(map(float, v)) for t, v in raw[m][k][s].items()} for s in steps}
            for m in methods
        }
    if REFERENCE in raw and BASELINE in raw:
        rep["verdict"] = verdict(rep)
    return rep


def _others(raw: Mapping[str, Any]) -> list[str]:
    """The methods the reference is paired against (none without a reference)."""
    return [m for m in raw if m != REFERENCE] if REFERENCE in raw else []


def _group(
    raw: Mapping[str, Any], k: int, steps: Sequence[int], chosen: set[str]
) -> dict[str, Any]:
    """One task group's overall summary per method and its paired differences, at K=k."""
    out: dict[str, Any] = {
        m: {str(s): st.summarize(st.subset(raw[m][k][s], chosen))["overall"] for s in steps}
        for m in raw
    }
    for m in _others(raw):
        out[f"{REFERENCE} - {m}"] = {
            str(s): st.paired(
                st.subset(raw[REFERENCE][k][s], chosen), st.subset(raw[m][k][s], chosen)
            )["overall"]
            for s in steps
        }
    return out


def _row(label: str, cells: Sequence[str], width: int) -> str:
    # Cells are cut to fit their column so that a long method name never merges two columns.
    return f"{label:<30}" + "".join(f"{c[: width - 1]:>{width}}" for c in cells)


def table(rep: Mapping[str, Any], *, full: int | None = None) -> str:
    """The table: per shot count, methods x inner steps and paired differences; script groups
    and per-task figures at the last step for the first `full` shot counts (all when None;
    the console shows one in full, eval_table.txt all of them)."""
    steps = [str(s) for s in rep["steps"]]
    lines: list[str] = []
    shots = list(map(str, rep["shots"]))
    for i, k in enumerate(shots):
        lines += _shot_block(rep, k, steps, detail=full is None or i < full)
    if full is not None and len(shots) > full:
        lines += ["", f"(K={', '.join(shots[full:])}: groups and per-task rows in eval_table.txt)"]
    if rep.get("verdict"):
        lines += ["", "Verdict (paired 95% CIs over held-out tasks, not over episodes):"]
        lines += [f"  {v}" for v in rep["verdict"]]
    return "\n".join(lines).lstrip("\n")


def _shot_block(rep: Mapping[str, Any], k: str, steps: list[str], *, detail: bool) -> list[str]:
    w = 17
    res = rep["results"][k]
    any_m = next(iter(res.values()))[steps[0]]["overall"]
    better = "higher" if rep["higher_is_better"] else "lower"
    uniform = f"; {UNIFORM_BPB:.2f} = a uniform guess over bytes"
    scale = uniform if rep["metric"] == "bits per byte" else ""
    lines = [
        "",
        f"K={k} shots · {rep['metric']} ({better} is better{scale}) · mean ± 95% CI over "
        f"{any_m['ci_over']} ({any_m['n_tasks']} tasks, {any_m['n_episodes']} task-episodes)",
        _row("method \\ inner steps", steps, w),
    ]
    for m, per in res.items():
        label = m + (f" (lr {rep['lrs'][m]:g})" if m in rep.get("lrs", {}) else "")
        lines.append(_row(label, [st.fmt(per[s]["overall"]) for s in steps], w))
    for name, per in rep["paired"][k].items():
        lines.append(_row("Δ " + name, [st.fmt(per[s]["overall"]) for s in steps], w))
    if not detail:
        return lines
    for g, per_g in rep["by_group"][k].items():
        lines.append(f"  {g}: {', '.join(rep['groups'][g])}")
        for name, per in per_g.items():
            label = ("  Δ " if " - " in name else "  ") + name
            lines.append(_row(label, [_group_cell(per[s]) for s in steps], w))
    last = steps[-1]
    lines.append(f"  per task after {last} steps:")
    tasks = sorted(next(iter(res.values()))[last]["tasks"])
    deltas = ["Δ vs " + name.split(" - ", 1)[1] for name in rep["paired"][k]]
    lines.append(_row("  task", list(res) + deltas, w))
    for t in tasks:
        cells = [st.fmt(res[m][last]["tasks"][t]) for m in res]
        cells += [st.fmt(p[last]["tasks"][t]) for p in rep["paired"][k].values()]
        lines.append(_row(f"  {t}", cells, w))
    return lines


def _group_cell(stat: Mapping[str, Any]) -> str:
    if stat.get("n_tasks", 0) < MIN_CI_TASKS and stat.get("n"):
        return f"{stat['mean']:.3f} (n={stat['n_tasks']})"
    return st.fmt(stat)


def _steps_word(s: int) -> str:
    return f"{s} step" + ("" if s == 1 else "s")


def verdict(rep: Mapping[str, Any], *, baseline: str = BASELINE) -> list[str]:
    """Plain sentences, derived from the paired 95% CIs over held-out tasks, saying whether
    the meta-init beats `baseline` fine-tuning after each inner-step count (> 0) and shot
    count: over all held-out tasks, then per task group (seen / unseen script), where a
    pooled CI can hide a group that wins and one that loses. A CI over fewer than
    `MIN_CI_TASKS` tasks decides nothing and says so."""
    key = f"{REFERENCE} - {baseline}"
    out: list[str] = []
    for k in map(str, rep["shots"]):
        per = rep["paired"].get(k, {}).get(key)
        if per is None:
            out.append(f"K={k}: no {baseline} baseline in this evaluation: no verdict")
            continue
        steps = [s for s in rep["steps"] if s > 0]
        out += [_judge(rep, per[str(s)]["overall"], s, k, baseline) for s in steps]
        for g, by in rep.get("by_group", {}).get(k, {}).items():
            if key not in by:
                continue
            n = by[key][str(steps[0])].get("n_tasks", 0) if steps else 0
            if n < MIN_CI_TASKS:  # one line for the group, not one "cannot decide" per step
                out.append(
                    f"{g}: {n} {_held_out(rep)} at K={k} cannot decide (need {MIN_CI_TASKS}+)"
                )
                continue
            out += [_judge(rep, by[key][str(s)], s, k, baseline, f"{g}: ") for s in steps]
    return out


def _held_out(rep: Mapping[str, Any]) -> str:
    return "held-out " + ("languages" if rep.get("family") == "wordlang" else "tasks")


def _judge(
    rep: Mapping[str, Any], o: Mapping[str, Any], s: int, k: str, baseline: str, label: str = ""
) -> str:
    """One verdict sentence from one paired difference `o` (meta-init minus baseline)."""
    lower = not rep["higher_is_better"]
    unit = {"bits per byte": " bpb", "accuracy": ""}.get(rep["metric"], "")
    n, after = o.get("n_tasks", 0), f"after {_steps_word(s)} at K={k}"
    what = _held_out(rep)
    if o.get("ci_over") != "tasks" or n < MIN_CI_TASKS:
        return f"{label}{after}: {n} {what} cannot decide (need {MIN_CI_TASKS}+)"
    gain = -o["mean"] if lower else o["mean"]
    lo, hi = sorted((-o["hi"], -o["lo"]) if lower else (o["lo"], o["hi"]))
    ci = f"95% CI {lo:.2f} to {hi:.2f}, {n} {what}"
    if lo > 0:
        return f"{label}meta-init beats {baseline} fine-tuning {after} by {gain:.2f}{unit} ({ci})"
    if hi < 0:
        return (
            f"{label}meta-init is WORSE than {baseline} fine-tuning {after} by "
            f"{-gain:.2f}{unit} (95% CI {-hi:.2f} to {-lo:.2f}, {n} {what})"
        )
    return (
        f"{label}meta-init does not measurably beat {baseline} fine-tuning {after} "
        f"(gain {gain:+.2f}{unit}, {ci})"
    )


def write_json(rep: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(dumps(rep, indent=1), encoding="utf-8")
    os.replace(tmp, out)
    return out


def plots(rep: Mapping[str, Any], outdir: str | os.PathLike[str]) -> list[Path]:
    """One PNG per shot count (`pipeline.tracking.plots.eval_plots`)."""
    from pipeline.tracking.plots import eval_plots

    return eval_plots(rep, outdir)


def publish(
    rep: Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    *,
    json_path: str | os.PathLike[str] | None = None,
    tracking: Any = None,
    run_name: str = "evaluate",
    log: Callable[[str], None] = print,
    extra_artifacts: Sequence[str | os.PathLike[str]] = (),
) -> dict[str, Any]:
    """Print the table; write JSON, the table as text and the PNGs under `out_dir`; with a
    `tracking` config slice, log them to an MLflow run (metric curves against inner steps)."""
    out = Path(out_dir)
    jpath = Path(json_path) if json_path else out / "eval.json"
    text = table(rep)
    log(table(rep, full=1))  # the first shot count in full, the others summarised
    write_json(rep, jpath)
    pngs = plots(rep, out)
    (out / "eval_table.txt").write_text(text + "\n", encoding="utf-8")
    log(f"wrote {jpath}, {out / 'eval_table.txt'}, {', '.join(map(str, pngs))}")
    result: dict[str, Any] = {"json": jpath, "pngs": pngs, "run_id": None}
    if tracking is None:
        return result
    from pipeline.tracking.evaluation import log_report

    # `tracking`: the run opened when evaluation started (or a config slice: opened now);
    # extra: e.g. the bank's descriptor map
    files = [jpath, *pngs, *extra_artifacts]
    result["run_id"] = log_report(tracking, rep, text, files, run_name=run_name, log=log)
    return result
