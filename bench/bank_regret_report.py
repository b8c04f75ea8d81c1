"""Statistics, targets and markdown tables for `bench/bank_regret.py`'s JSON.

    .venv/bin/python bench/bank_regret.py --render bench/results/bank_regret.json

A task is a language: per language the mean over its episodes, then the mean and a 95%
t-interval over languages. Differences are paired within a language.
"""

from __future__ import annotations

import numpy as np

from pipeline.eval.stats import t975


def ci(x) -> dict:
    x = np.asarray(x, np.float64)
    n = x.size
    half = float(t975(n - 1) * x.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    m = float(x.mean())
    return {"mean": m, "lo": m - half, "hi": m + half, "n": n}


def series(rec: dict, name: str) -> list[float]:
    return rec["bpb"][name] if name in rec["bpb"] else rec[name]


def per_language(recs, fn) -> np.ndarray:
    """`[languages, steps]`: the per-language mean of fn(record) (a per-step list)."""
    langs = sorted({r["lang"] for r in recs})
    return np.stack([np.mean([fn(r) for r in recs if r["lang"] == g], axis=0) for g in langs])


def bank_names(recs) -> list[str]:
    return [m for m in recs[0]["bpb"] if m.startswith("bank")]


def _started(variant: str) -> str:
    """The variant whose start a "<variant> + fallback" row began from (its sources)."""
    return variant.removesuffix(" + fallback")


def group_stats(recs, steps) -> dict:
    """Per method bpb, and per bank variant: gain vs random entry, regret, vs meta-init."""
    d = lambda a, b: per_language(recs, lambda r: np.subtract(series(r, a), series(r, b)))  # noqa: E731
    methods = list(recs[0]["bpb"]) + ["random entry", "hindsight-best"]
    extra = ("random same-script entry", "English entry", "own entry")
    methods += [m for m in extra if all(m in r for r in recs)]
    out = {"languages": len({r["lang"] for r in recs}), "episodes": len(recs), "bpb": {}}
    for m in methods:
        v = per_language(recs, lambda r, m=m: series(r, m))
        out["bpb"][m] = {s: ci(v[:, i]) for i, s in enumerate(steps)}
    room = d("meta-init", "hindsight-best")
    for b in bank_names(recs) + ["blend top-3", "uniform average"]:
        gain, reg, vs = d(b, "random entry"), d(b, "hindsight-best"), d(b, "meta-init")
        out[b] = {
            s: {
                "gain": ci(gain[:, i]),
                "regret": ci(reg[:, i]),
                "vs_meta": ci(vs[:, i]),
                "room": ci(room[:, i]),
                "regret_frac": float(reg[:, i].mean() / max(room[:, i].mean(), 1e-9)),
                "warm": float(
                    np.mean([r["sources"].get(_started(b), "x") != "meta-init" for r in recs])
                ),
            }
            for i, s in enumerate(steps)
        }
    if "own entry" in recs[0]:
        for b in bank_names(recs):
            ratio = per_language(recs, lambda r, b=b: [r["bpb"][b][0] / r["own entry"][0]])[:, 0]
            out[b]["step0_vs_own"] = {"mean": float(ratio.mean()), "max": float(ratio.max())}
    return out


def pr(recs, key: str, thr: float) -> dict:
    """Precision and recall of "a related task is stored" decided as `r[key] >= thr`."""
    lab = np.array([r["related stored"] for r in recs])
    dec = np.array([r[key] >= thr for r in recs])
    tp = int((lab & dec).sum())
    p, rc = tp / max(int(dec.sum()), 1), tp / max(int(lab.sum()), 1)
    return {
        "f1": 2 * p * rc / max(p + rc, 1e-12),
        "precision": p,
        "recall": rc,
        "warm": int(dec.sum()),
        "related": int(lab.sum()),
        "n": len(recs),
    }


def choose_threshold(recs, key: str) -> float:
    """The threshold (to 0.001) with the best F1; ties: the higher one."""
    vals = np.unique(np.round([r[key] for r in recs], 3))
    return float(max(vals, key=lambda t: (pr(recs, key, t)["f1"], t)))


def rounded(x, digits: int = 4):
    """The report with floats to `digits` decimals (bpb to 0.0001: far below any CI)."""
    if isinstance(x, float):
        return round(x, digits)
    if isinstance(x, dict):
        return {k: rounded(v, digits) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [rounded(v, digits) for v in x]
    return x


def targets(groups: dict, name: str, shots) -> list[str]:
    """The issue's four targets for one bank variant, per K: 'met'/'NOT met' with figures."""
    lines = []
    f = lambda c: f"{c['mean']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}]"  # noqa: E731
    for k in shots:
        rel, unr, rec = (
            groups[f"{s} K={k}"][name] for s in ("related-novel", "unrelated-novel", "recurring")
        )
        for s in (1, 2):
            g = rel[str(s)]["gain"] if str(s) in rel else rel[s]["gain"]
            ok = g["hi"] < 0
            lines.append(
                f"K={k} related-novel gain vs random entry at {s} steps < 0, CI excl. 0: "
                f"{'met' if ok else 'NOT met'} ({f(g)} bpb)"
            )
        for s, row in rel.items():
            if s == "step0_vs_own":
                continue
            ok = row["regret_frac"] <= 0.25
            lines.append(
                f"K={k} related-novel regret <= 25% of (meta-init - best) at {s} steps: "
                f"{'met' if ok else 'NOT met'} (regret {f(row['regret'])}, room "
                f"{row['room']['mean']:+.3f}, {row['regret_frac']:.0%})"
            )
        worst = [(s, row["vs_meta"]) for s, row in unr.items() if s != "step0_vs_own"]
        ok = all(c["lo"] <= 0 for _, c in worst)
        strict = all(c["mean"] <= 0 for _, c in worst)
        lines.append(
            f"K={k} unrelated-novel never worse than meta-init (CI): "
            f"{'met' if ok else 'NOT met'}{'' if strict or not ok else ' (CI only: a mean > 0)'} ("
            + ", ".join(f"{s}: {f(c)}" for s, c in worst)
            + ")"
        )
        r0 = rec["step0_vs_own"]
        lines.append(
            f"K={k} recurring step 0 within 5% of the stored entry: "
            f"{'met' if r0['max'] <= 1.05 else 'NOT met'} (bank/own mean {r0['mean']:.3f}, "
            f"worst language {r0['max']:.3f})"
        )
    return lines


def summarise(report: dict) -> dict:
    steps, shots = report["args"]["steps"], report["args"]["shots"]
    groups = {g: group_stats(recs, steps) for g, recs in report["held_out"].items()}
    loo = {k: group_stats(recs, steps) for k, recs in report["train_loo"].items()}
    lso = {k: group_stats(recs, steps) for k, recs in report.get("train_script_out", {}).items()}
    thr = report["thresholds"]
    nov = {}
    for k in shots:
        held = [r for g, recs in report["held_out"].items() if g.endswith(f"K={k}") for r in recs]
        loo_s = report["train_loo_sims"][str(k)]
        nov[k] = {
            f"{where} {lab}": pr(recs, key, t)
            for where, recs in (("TRAIN-LOO", loo_s), ("held-out", held))
            for lab, key, t in (
                ("raw >= 0.8", "sim raw", 0.8),
                (f"raw >= {thr['raw']}", "sim raw", thr["raw"]),
                (f"calibrated >= {thr['calibrated']}", "sim calibrated", thr["calibrated"]),
            )
        }
    return {
        "groups": groups,
        "train_loo": loo,
        "train_script_out": lso,
        "novelty": nov,
        "shots": shots,
        "steps": steps,
    }


def render(report: dict) -> str:
    s = summarise(report)
    f = lambda c: f"{c['mean']:.3f}"  # noqa: E731
    fc = lambda c: f"{c['mean']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}]"  # noqa: E731
    out = [f"thresholds chosen on TRAIN (F1, pooled K): {report['thresholds']}", ""]
    for g, gs in s["groups"].items():
        out += [f"**{g}** ({gs['languages']} languages, {gs['episodes']} episodes)", ""]
        names = list(gs["bpb"])
        out += ["| steps | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for st_ in s["steps"]:
            out.append(f"| {st_} | " + " | ".join(f(gs["bpb"][m][st_]) for m in names) + " |")
        out += [
            "",
            "| start | steps | warm | bank - random entry | regret (bank - best) | "
            "regret / (meta - best) | bank - meta-init |",
            "|---|---|---|---|---|---|---|",
        ]
        for b in [m for m in gs if m.startswith("bank")] + ["blend top-3", "uniform average"]:
            for st_ in s["steps"]:
                r = gs[b][st_]
                out.append(
                    f"| {b} | {st_} | {r['warm']:.0%} | {fc(r['gain'])} | "
                    f"{fc(r['regret'])} | {r['regret_frac']:.0%} | {fc(r['vs_meta'])} |"
                )
        out.append("")
    out += [
        "**novelty decision** (related = same branch and script, or the language itself, is "
        "stored)",
        "",
        "| K | where | rule | precision | recall | warm / related / n |",
        "|---|---|---|---|---|---|",
    ]
    for k, rows in s["novelty"].items():
        for lab, r in rows.items():
            where, rule = lab.split(" ", 1)
            out.append(
                f"| {k} | {where} | {rule} | {r['precision']:.2f} | {r['recall']:.2f} | "
                f"{r['warm']} / {r['related']} / {r['n']} |"
            )
    out += ["", "**TRAIN leave-one-out (choice of the default)**: regret at 1 / 2 steps", ""]
    for k, gs in s["train_loo"].items():
        for b in [m for m in gs if m.startswith("bank")]:
            out.append(f"- K={k} {b}: {fc(gs[b][1]['regret'])} / {fc(gs[b][2]['regret'])}")
    if s["train_script_out"]:
        out += ["", "**TRAIN leave-script-out** (the query's script removed): regret at 1/2/5", ""]
        for k, gs in s["train_script_out"].items():
            for b in [m for m in gs if m.startswith("bank")]:
                cells = " / ".join(fc(gs[b][t]["regret"]) for t in (1, 2, 5) if t in gs[b])
                out.append(f"- K={k} {b}: {cells}")
    out += ["", "**targets**", ""]
    for b in [m for m in s["groups"][next(iter(s["groups"]))] if m.startswith("bank")]:
        out += [f"*{b}*", ""] + [f"- {t}" for t in targets(s["groups"], b, s["shots"])] + [""]
    return "\n".join(out)


def compact(report: dict, variants: tuple[str, ...]) -> str:
    """The RESULTS.md table: per group and K, bpb (0/1/2/5 steps) of the references and the
    given bank variants, then gain and regret with CIs."""
    s = summarise(report)
    fc = lambda c: f"{c['mean']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}]"  # noqa: E731
    steps = s["steps"]
    head = "| group | start | " + " | ".join(f"bpb @{x}" for x in steps) + " |"
    out = [head, "|---" * (len(steps) + 2) + "|"]
    refs = (
        "meta-init",
        "random entry",
        "random same-script entry",
        "English entry",
        "uniform average",
        "blend top-3",
        "hindsight-best",
        "own entry",
    )
    for g, gs in s["groups"].items():
        for m in (*refs, *variants):
            if m in gs["bpb"]:
                vals = " | ".join(f"{gs['bpb'][m][x]['mean']:.3f}" for x in steps)
                out.append(f"| {g} | {m} | {vals} |")
    out += [
        "",
        "| group | bank variant | steps | warm | bank - random entry | regret (bank - best) "
        "| regret / (meta - best) | bank - meta-init |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for g, gs in s["groups"].items():
        for b in variants:
            for x in steps:
                r = gs[b][x]
                out.append(
                    f"| {g} | {b} | {x} | {r['warm']:.0%} | {fc(r['gain'])} | "
                    f"{fc(r['regret'])} | {r['regret_frac']:.0%} | {fc(r['vs_meta'])} |"
                )
    return "\n".join(out)
