"""Markdown tables and the issue-11 target check for a `bench/fewshot.py` result JSON."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

STEPS = ("0", "1", "2", "5", "10")
REF = "multitask"
# The step counts a checkpoint (fewshot_train.VAL_STEPS) and a recipe are chosen at; kept here
# because this module loads without torch (result keys are strings).
CHOOSING_STEPS = ("1", "2", "5")


def clean(x: Any) -> Any:
    """JSON-able: str keys, floats (no inf/nan: None), lists."""
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple | set):
        return [clean(v) for v in (sorted(x) if isinstance(x, set) else x)]
    if hasattr(x, "tolist"):
        return clean(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, np.generic):
        return clean(x.item())
    return x


def _ci(o: dict | None, digits: int = 2) -> str:
    if not o or o.get("mean") is None:
        return "-"
    if (o.get("n") or 0) <= 3 or o.get("lo") is None:
        return f"{o['mean']:+.{digits}f} (n={o.get('n')})"
    return f"{o['mean']:+.{digits}f} [{o['lo']:+.{digits}f}, {o['hi']:+.{digits}f}]"


def _mean(o: dict | None) -> str:
    if not o or o.get("mean") is None:
        return "-"
    return f"{o['mean']:.3f}"


GROUPS = ("seen script", "unseen script")


def _at(d: dict, step: str, group: str) -> dict | None:
    """The paired summary over languages of `group` after `step` steps, if there is one."""
    return ((d.get(step) or {}).get(group) or {}).get("overall")


def targets(rep: dict, method: str = "recipe") -> list[tuple[str, bool, str]]:
    """Issue 11's targets for `method`: (target, met, figures). Every comparison is judged
    per script group: a pooled mean hid the unseen-script languages, where every trained
    init is worse than random init at step 0 (bench/RESULTS.md, round 7)."""
    out = []
    summ = rep["summary"]
    for k in summ:
        d = summ[k].get(method, {}).get("delta", {})
        for s in ("1", "2", "5"):
            o = _at(d, s, "seen script")
            ok = bool(o and o.get("hi") is not None and o["hi"] < 0)
            out.append((f"K={k} seen script, {s} steps: beats multitask (CI < 0)", ok, _ci(o)))
        o = _at(d, "10", "seen script")
        ok = bool(o and o.get("lo") is not None and o["lo"] <= 0)
        out.append((f"K={k} seen script, 10 steps: not worse (CI low <= 0)", ok, _ci(o)))
        bad = [s for s in STEPS if (_at(d, s, "unseen script") or {}).get("lo", -1) > 0]
        figs = ", ".join(f"{s}: {_ci(_at(d, s, 'unseen script'))}" for s in STEPS)
        out.append((f"K={k} unseen script: not worse at any step", not bad, figs))
        vs = summ[k].get(method, {}).get("vs_random", {})
        worse = [
            f"{g} at {s}: {_ci(o)}"
            for s in STEPS
            for g in GROUPS
            if (o := _at(vs, s, g)) and o.get("lo", -1) > 0
        ]
        out.append(
            (
                f"K={k}: never worse than random init (per group, CI low <= 0)",
                bool(vs) and not worse,
                "; ".join(worse) if worse else ("ok at every step" if vs else "-"),
            )
        )
        step0 = {g: o for g in GROUPS if (o := _at(d, "0", g))}
        out.append(
            (
                f"K={k}: step-0 bpb <= multitask's (per group, mean)",
                bool(step0) and all(o["mean"] <= 0 for o in step0.values()),
                "; ".join(f"{g} {_ci(o)}" for g, o in step0.items()) or "-",
            )
        )
    return out


def render(rep: dict, recipe: str = "recipe") -> str:
    """Every table of a result JSON; the per-language rows and issue 11's targets are for the
    method named `recipe` (a variant's label, e.g. `pm25`, for a round that named it so)."""
    a = rep["args"]
    lines = [
        f"budget {a['steps']} outer steps x {a['meta_batch']} tasks x "
        f"{a['train_k']}+{a['train_q']} words; GRU {a['hidden']}; folds "
        f"{a.get('run_folds') or 'all'}; seeds {a['seeds']}; {a['episodes']} test "
        f"episodes/language; wall {rep.get('wall_s', 0) / 60:.1f} min; scored "
        + ("under the support-fitted floor" if a.get("support_floor") else "by the plain softmax")
    ]
    lines += validation_table(rep)
    lines += _tables(rep["summary"])
    methods = next(iter(rep["summary"].values()))
    if recipe in methods:
        lines += _per_language(rep, recipe)
        lines += _targets_table(rep, f"**Targets ({recipe})**", recipe)
    else:
        lines += ["", f"(no method named {recipe!r}: --recipe NAME picks one of {list(methods)})"]
    ext = rep.get("external")
    if ext:
        lines += ["", f"## External languages: {ext['source']}"]
        lines += _tables(ext["summary"])
        if recipe in next(iter(ext["summary"].values())):
            title = f"**Targets ({recipe}) on the external languages**"
            lines += _targets_table(ext, title, recipe)
    return "\n".join(lines)


def validation_scores(rep: dict) -> dict[str, dict[str, float]]:
    """The choosing score of every method: its validation bpb (inner lr tuned on the fold's
    validation languages) averaged over `CHOOSING_STEPS` and then over fold-seeds, per K,
    plus step 0 as `"<K>@0"`. The test languages play no part in it."""
    acc: dict[str, dict[str, list[float]]] = {}
    for info in rep["info"].values():
        for m, v in info.items():
            for k, per in v.get("val_tuned", {}).items():
                got = acc.setdefault(m, {})
                got.setdefault(k, []).append(float(np.mean([per[s] for s in CHOOSING_STEPS])))
                got.setdefault(f"{k}@0", []).append(float(per["0"]))
    return {m: {k: float(np.mean(v)) for k, v in per.items()} for m, per in acc.items()}


def validation_table(rep: dict) -> list[str]:
    scores = validation_scores(rep)
    if not scores:
        return []
    ks = [k for k in next(iter(scores.values())) if "@" not in k]
    head = " | ".join(f"K={k}" for k in ks) + " | " + " | ".join(f"step 0, K={k}" for k in ks)
    lines = [
        "",
        "**Validation** (the choosing score: mean bpb after "
        + ", ".join(CHOOSING_STEPS)
        + f" steps over the folds' validation languages, {len(rep['info'])} fold-seeds)",
        "",
        f"| method | {head} |",
        "|---" * (1 + 2 * len(ks)) + "|",
    ]
    for m, per in scores.items():
        cells = [f"{per[k]:.3f}" for k in ks] + [f"{per[f'{k}@0']:.3f}" for k in ks]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def _targets_table(rep: dict, title: str, method: str) -> list[str]:
    lines = ["", title, "", "| target | met | figures |", "|---|---|---|"]
    for t, ok, fig in targets(rep, method):
        lines.append(f"| {t} | {'yes' if ok else 'NO'} | {fig} |")
    return lines


def _tables(summ: dict) -> list[str]:
    """Per shot count: mean bpb per method, then paired differences against multitask."""
    lines: list[str] = []
    for k, res in summ.items():
        n = next(iter(res.values()))["mean"]["0"]["n_tasks"]
        lines += [
            "",
            f"**K={k}: bits per byte on query words (mean over {n} languages)**",
            "",
            "| method | " + " | ".join(f"{s} steps" for s in STEPS) + " |",
            "|---|" + "---:|" * len(STEPS),
        ]
        for m, r in res.items():
            lines.append(f"| {m} | " + " | ".join(_mean(r["mean"].get(s)) for s in STEPS) + " |")
        lines += [
            "",
            f"**K={k}: method - multitask+FT, paired per language, mean [95% CI over languages]**",
            "",
            "| method | languages | " + " | ".join(f"{s} steps" for s in STEPS) + " |",
            "|---|---|" + "---:|" * len(STEPS),
        ]
        for m, r in res.items():
            if m == REF or not r["delta"]:
                continue
            for g in ("all", "seen script", "unseen script"):
                cells = [_ci((r["delta"].get(s) or {}).get(g, {}).get("overall")) for s in STEPS]
                nl = ((r["delta"].get("1") or {}).get(g, {}).get("overall") or {}).get("n")
                lines.append(f"| {m} | {g} ({nl}) | " + " | ".join(cells) + " |")
    return lines


def _per_language(rep: dict, method: str = "recipe") -> list[str]:
    summ = rep["summary"]
    shots = [k for k in summ if method in summ[k] and summ[k][method]["delta"]]
    if not shots:
        return []
    seen = set(rep["groups"].get("seen script", []))
    head = [f"K={k} {s}" for k in shots for s in STEPS]
    lines = [
        "",
        f"**Per language: {method} - multitask+FT (bpb; mean over episodes)**",
        "",
        "| language | script seen | multitask K=8 1 step | " + " | ".join(head) + " |",
        "|---|---|---:|" + "---:|" * len(head),
    ]
    langs = sorted(summ[shots[0]][method]["delta"]["1"]["all"]["tasks"])
    for lang in langs:
        mt = summ[shots[0]][REF]["mean"]
        cells = []
        for k in shots:
            for s in STEPS:
                t = summ[k][method]["delta"][s]["all"]["tasks"].get(lang)
                cells.append(f"{t['mean']:+.2f}" if t else "-")
        raw_mt = rep["raw"][REF][shots[0]]["1"].get(lang)
        base = f"{np.mean(raw_mt):.2f}" if raw_mt else _mean(mt.get("1"))
        lines.append(
            f"| {lang} | {'yes' if lang in seen else 'no'} | {base} | " + " | ".join(cells) + " |"
        )
    return lines
