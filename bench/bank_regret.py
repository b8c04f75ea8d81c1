"""The memory bank judged by regret (issue 11, section 3), in-process (no Ray), 2 cores.

    flock /tmp/metaray-heavy.lock .venv/bin/python bench/bank_regret.py \\
        --cache /tmp/bankwork/cache --out bench/results/bank_regret.json
    .venv/bin/python bench/bank_regret.py --render bench/results/bank_regret.json

Setup (`bench/warmstart.py`'s, reused through its cache): a byte GRU meta-trained on 30 TRAIN
languages' even-ranked words; a bank of 30 entries, each TRAIN language adapted on K=256 even
words for 20 steps. Then at each support size K (default 8 and 32):

1. TRAIN only (leave one language out: its own entry removed from the bank), even words:
   the raw and the calibrated similarity of each episode's best hit, labelled "a related task
   is stored" (same branch AND same script among the other 29); one threshold per similarity,
   pooled over the K values, chosen by F1. Every bank variant is also run on these episodes,
   and the default is the variant with the lowest mean regret over K x {1, 2 steps} HERE,
   not on held-out. Also on TRAIN, with every stored language of the query's script removed
   ("leave-script-out": the case `bank.fallback` is for), which decided the fallback.
2. Held-out (odd-ranked words, never in meta-training or bank fill): recurring (TRAIN
   languages again), related-novel and unrelated-novel languages. Each episode is adapted
   from every start below, query bits per byte after `--steps` inner steps:
   meta-init; every stored entry (their mean = the expected random entry, their minimum = the
   hindsight-best entry); the uniform average of the entries; the similarity-weighted top-3
   blend; and the bank variants (`VARIANTS`).
Statistics: per language the mean over its episodes, then mean and 95% t-interval over
languages (a task = a language); also over episodes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import warmstart as ws
from bank_regret_report import choose_threshold, rounded

from pipeline import config
from pipeline.bank.service import BankService
from pipeline.bank.warm_start import (
    flatten_batched,
    unflatten,
    warm_start,
    with_entry_support,
)
from pipeline.config import BankConfig
from pipeline.data import episodes as ep
from pipeline.data.sources.languages import LANGUAGES
from pipeline.meta import outer
from pipeline.meta.inner import adapt_then_score, adapt_then_score_with_fallback
from pipeline.meta.losses import LN2, support_floored_loss
from pipeline.models import build_model

FILL_SUPPORT = 256
BASE = {"descriptor": "ngram", "capacity": 1000}
# name -> BankConfig overrides; "thr" is replaced by the threshold chosen on TRAIN
VARIANTS = {
    "bank: old default (raw 0.8, nearest)": dict(
        similarity="raw", threshold=0.8, top_k=1, select="similarity"
    ),
    "bank: calibrated, nearest": dict(
        similarity="calibrated", threshold="thr", top_k=1, select="similarity"
    ),
    "bank: calibrated, probe@0 top-3": dict(
        similarity="calibrated",
        threshold="thr",
        top_k=3,
        select="probe",
        probe_split=True,
        probe_steps=0,
        probe_gate=True,
    ),
    "bank: calibrated, probe@1 top-3": dict(
        similarity="calibrated",
        threshold="thr",
        top_k=3,
        select="probe",
        probe_split=True,
        probe_steps=1,
        probe_gate=True,
    ),
    # no novelty gate: the probe alone decides between the meta-init and the top-3
    "bank: probe@1 top-3, no gate": dict(
        similarity="calibrated",
        threshold="thr",
        top_k=3,
        select="probe",
        probe_split=True,
        probe_steps=1,
        probe_gate=False,
    ),  # run 2 had threshold=-1.0 here: the same candidates (every calibrated sim is > -1)
    # the probe scored at the step counts users evaluate at (mean after 1, 2 and 5 steps)
    "bank: probe@1+2+5 top-3, no gate": dict(
        similarity="calibrated",
        threshold="thr",
        top_k=3,
        select="probe",
        probe_split=True,
        probe_steps=(1, 2, 5),
        probe_gate=False,
    ),
    # more candidates, and candidates scored on the whole support (probe_split=False): a
    # diagnostic showed the full-support loss after t steps ranks all stored starts of unseen
    # scripts well, where a 4-word half cannot
    "bank: probe@1 top-10, no gate": dict(
        similarity="calibrated",
        threshold="thr",
        top_k=10,
        select="probe",
        probe_split=True,
        probe_steps=1,
    ),
    "bank: fit@1 top-10, no gate": dict(
        similarity="calibrated",
        threshold="thr",
        top_k=10,
        select="probe",
        probe_steps=1,
        probe_split=False,
    ),
    "bank: fit@1+2+5 top-10, no gate": dict(
        similarity="calibrated",
        threshold="thr",
        top_k=10,
        select="probe",
        probe_steps=(1, 2, 5),
        probe_split=False,
    ),
    "bank: fit@1 top-3, no gate": dict(
        similarity="calibrated",
        threshold="thr",
        top_k=3,
        select="probe",
        probe_steps=1,
        probe_split=False,
    ),
}
# variants also run with `bank.fallback` (the meta-init's trajectory beside the warm one, the
# lower support loss at each count kept): "<name> + fallback" in the report
FALLBACK = ("bank: probe@1 top-3, no gate", "bank: fit@1 top-3, no gate")
BLEND3 = dict(similarity="raw", threshold=-1.0, top_k=3, blend="weighted", select="similarity")


# The meta-init of the first runs: second-order MAML, 1 inner step (bench/warmstart.py's run B)
MAML_SETUP = [
    "inner.algorithm=maml",
    "inner.steps=1",
    "inner.lr=0.1",
    "model.hidden=64",
    "model.embed=16",
    "data.k_support=16",
    "data.k_query=16",
    "outer.meta_batch=8",
    "outer.steps=300",
    "outer.lr=0.003",
]
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def recipe_configs(sizes: list[str], total: int):
    """The shipped recipe as the quickstart configs state it (the model sizes are the same as
    MAML_SETUP's): stage 1 (`quickstart-pretrain.yaml`, multitask) for its share of `total`
    outer steps, then stage 2 (`quickstart.yaml`) from stage 1's parameters, as
    `checkpoint.init_from` starts it. Returns stage 2's config and the two-stage trainer."""
    one = config.load(os.path.join(CONFIGS, "quickstart-pretrain.yaml"), sizes)
    two = config.load(os.path.join(CONFIGS, "quickstart.yaml"), sizes)
    n1 = round(total * one.outer.steps / (one.outer.steps + two.outer.steps))
    one = one.model_copy(update={"outer": one.outer.model_copy(update={"steps": n1})})
    two = two.model_copy(update={"outer": two.outer.model_copy(update={"steps": total - n1})})

    def train(cfg, model, even, log):
        pre, hist1 = ws.meta_train(one, model, even, log)
        state, hist2 = ws.meta_train(two, model, even, log, params=pre.params)
        return state, [{**h, "stage": 1} for h in hist1] + [{**h, "stage": 2} for h in hist2]

    return two, train


def related_stored(lang: str, keys) -> bool:
    """The label of the novelty decision: the language itself, or a same-branch language in
    the same script, is among the stored keys (bytes of another script share nothing)."""
    s = LANGUAGES[lang].script
    return any(k == lang or (ws.same_branch(lang, k) and LANGUAGES[k].script == s) for k in keys)


def make_bank(rows, meta_init, exclude=()) -> tuple[BankService, list[str]]:
    keys = sorted(k for k in rows if k not in exclude)
    bank = BankService(BankConfig(**BASE))
    ws.put_rows(bank, rows, keys, "ngram", meta_init, support=np.full(len(keys), FILL_SUPPORT))
    return bank, keys


def curves(
    model, starts, owner, b, steps, lrs, trainable, floor=False, fallback=None
) -> np.ndarray:
    """Query bpb `[len(steps), R]` of R task-batched starts, row r on episode owner[r]
    (`floor`: scored as `metaray evaluate` does, under the support-fitted floor; `fallback`:
    the meta-init's trajectory beside each, as `bank.fallback` runs it)."""
    idx = torch.as_tensor(owner, dtype=torch.long)
    sel = lambda s: type(s)(*(a.index_select(0, idx) for a in s))  # noqa: E731
    sup, qry = sel(b.support), sel(b.query)
    if floor:
        score = lambda p, q: (support_floored_loss(model, p, sup, q) / LN2).numpy()  # noqa: E731
    else:
        score = lambda p, q: ws.bpb(model, p, q)  # noqa: E731
    kw = dict(model=model, steps=steps, lrs=lrs, trainable=trainable, score=score)
    if fallback is None:
        out = adapt_then_score(starts, sup, qry, **kw)
    else:
        out, _ = adapt_then_score_with_fallback(starts, fallback, sup, qry, **kw)
    return np.stack([out[s] for s in steps])


def fallback_curves(ctx, starts, b, n) -> dict[str, np.ndarray]:
    """ "<variant> + fallback" -> query bpb `[steps, n]` for the FALLBACK variants that warm
    started any episode (the others are the meta-init's own curve, filled in by the caller)."""
    model, state, args = ctx["model"], ctx["state"], ctx["args"]
    out = {}
    for name in (m for m in FALLBACK if starts[m] is not None):
        out[f"{name} + fallback"] = curves(
            model,
            unflatten(starts[name], state.params),
            np.arange(n),
            b,
            args.steps,
            state.lrs,
            ctx["trainable"],
            bool(args.support_floor),
            fallback=state.params,
        )
    return out


def one_language(ctx, lang, eps, bank, keys, thr) -> list[dict]:
    """Every start for one language's episodes (one bank); a record per episode."""
    model, state, rows, args = ctx["model"], ctx["state"], ctx["rows"], ctx["args"]
    b = ep.to_torch(ep.collate([e for _, e in eps]))
    n = len(eps)
    q = with_entry_support(bank)
    starts, sources, sims = {}, {}, {}
    for name, over in {**VARIANTS, "blend top-3": BLEND3}.items():
        over = {k: (thr if v == "thr" else v) for k, v in over.items()}
        cfg = BankConfig(**{**BASE, "attenuation_power": ctx["power"], **over})
        p, info = warm_start(
            model,
            state.params,
            b.support,
            cfg=cfg,
            query=q,
            lrs=state.lrs,
            trainable=ctx["trainable"],
        )
        starts[name] = flatten_batched(p) if any(info.warm) else None
        sources[name] = info.sources
        sims[over["similarity"]] = (
            info.best_sims if over["similarity"] == "raw" else (info.calibrated_sims)
        )
    flat_meta = ws.flatten_batched({k: v[None] for k, v in state.params.items()})[0]
    entries = np.stack([rows[k]["params"] for k in keys])
    names = ["meta-init", "uniform average"] + list(starts)
    per_ep = [flat_meta, entries.mean(0)]
    rows_ = [np.tile(r, (n, 1)) for r in per_ep]
    rows_ += [s if s is not None else np.tile(flat_meta, (n, 1)) for s in starts.values()]
    flat = np.concatenate(rows_ + [np.tile(entries, (n, 1))])  # entries: episode-major
    owner = np.concatenate([np.arange(n)] * len(names) + [np.repeat(np.arange(n), len(keys))])
    bpb = curves(
        model,
        unflatten(flat, state.params),
        owner,
        b,
        args.steps,
        state.lrs,
        ctx["trainable"],
        bool(args.support_floor),
    )
    extra = fallback_curves(ctx, starts, b, n)
    named = bpb[:, : n * len(names)].reshape(len(args.steps), len(names), n)
    ent = bpb[:, n * len(names) :].reshape(len(args.steps), n, len(keys))
    out = []
    for e in range(n):
        rec = {
            "lang": lang,
            "bpb": {m: named[:, j, e].tolist() for j, m in enumerate(names)}
            | {f"{m} + fallback": named[:, 0, e].tolist() for m in FALLBACK}  # if never warm
            | {m: v[:, e].tolist() for m, v in extra.items()},
            "random entry": ent[:, e].mean(1).tolist(),
            "hindsight-best": ent[:, e].min(1).tolist(),
            "best key": [keys[int(i)] for i in ent[:, e].argmin(1)],
            "sources": {m: sources[m][e] for m in sources},
            "sim raw": sims["raw"][e],
            "sim calibrated": sims["calibrated"][e],
            "related stored": related_stored(lang, keys),
        }
        if lang in keys:
            rec["own entry"] = ent[:, e, keys.index(lang)].tolist()
        same = [j for j, k in enumerate(keys) if LANGUAGES[k].script == LANGUAGES[lang].script]
        if same:  # a stricter "random entry": one of the query's own script
            rec["random same-script entry"] = ent[:, e, same].mean(1).tolist()
        if "en" in keys:  # the "a bank holding a single English entry"
            rec["English entry"] = ent[:, e, keys.index("en")].tolist()
        for m in sources:  # rank of the chosen entry among the stored ones (1 = best)
            src = sources[m][e]
            if src.startswith("bank:") and "," not in src:
                j = keys.index(src[5:])
                rec.setdefault("chosen rank", {})[m] = (
                    1 + (ent[:, e] < ent[:, e, j : j + 1]).sum(1)
                ).tolist()
        out.append(rec)
    return out


def similarities(ctx, lang, eps, bank, keys) -> list[dict]:
    """Only the best hit's raw and calibrated similarity per episode (no adaptation)."""
    b = ep.to_torch(ep.collate([e for _, e in eps]))
    cfg = BankConfig(**BASE, threshold=2.0, top_k=1, select="similarity")  # never warm
    _, info = warm_start(
        ctx["model"], ctx["state"].params, b.support, cfg=cfg, query=with_entry_support(bank)
    )
    lab = related_stored(lang, keys)
    return [
        {"lang": lang, "sim raw": r, "rel": q, "related stored": lab}
        for r, q in zip(info.best_sims, info.reliability, strict=True)
    ]


def fit_power(sims: dict[int, list[dict]]) -> float:
    """The attenuation power that makes each TRAIN language's mean calibrated similarity the
    same at the smallest and the largest K (mean absolute gap over languages, grid 0.5-1.5)."""
    lo, hi = min(sims), max(sims)

    def gap(p: float) -> float:
        m = lambda k, g: np.mean([r["sim raw"] / r["rel"] ** p for r in sims[k] if r["lang"] == g])  # noqa: E731
        return float(np.mean([abs(m(lo, g) - m(hi, g)) for g in {r["lang"] for r in sims[lo]}]))

    return float(min(np.round(np.arange(0.5, 1.501, 0.05), 2), key=gap))


def left_out(lang: str, loo: bool | str) -> tuple[str, ...]:
    """The stored languages a query of `lang` must not see: itself (`loo=True`), every stored
    language of its script (`loo="script"`: a training-side stand-in for an unseen script)."""
    if loo == "script":
        return tuple(k for k in ws.TRAIN if LANGUAGES[k].script == LANGUAGES[lang].script)
    return (lang,) if loo else ()


def scenario(ctx, langs, src_rows, k, n_eps, seed, thr, loo, sims_only=False) -> list[dict]:
    args, recs = ctx["args"], []
    full = make_bank(ctx["rows"], ctx["state"].params)
    for li, lang in enumerate(langs):
        eps = ws.episodes(
            src_rows, [lang], k, args.k_query, args.max_len, n_eps, seed=seed + 101 * li
        )
        out = left_out(lang, loo)
        bank, keys = make_bank(ctx["rows"], ctx["state"].params, exclude=out) if out else full
        if sims_only:
            recs += similarities(ctx, lang, eps, bank, keys)
        else:
            recs += one_language(ctx, lang, eps, bank, keys, thr)
    return recs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--render", help="print the markdown tables of a report JSON and exit")
    ap.add_argument("--compact", help="with --render: only these ';'-separated variants")
    ap.add_argument("--cache", default="/tmp/bankwork/cache")
    ap.add_argument("--shots", default="8,32")
    ap.add_argument("--steps", default="0,1,2,5")
    ap.add_argument("--episodes", type=int, default=6)
    ap.add_argument("--calib-episodes", type=int, default=2, help="TRAIN LOO, full runs")
    ap.add_argument("--calib-sim-episodes", type=int, default=8, help="TRAIN LOO, similarities")
    ap.add_argument("--recurring", type=int, default=10)
    ap.add_argument("--k-query", type=int, default=32)
    ap.add_argument("--max-len", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results/bank_regret.json")
    ap.add_argument(
        "--recipe",
        type=int,
        default=0,
        help="1: the meta-init from the shipped recipe as configs/quickstart{-pretrain,}.yaml "
        "state it (25%% multitask, then Meta-SGD per-parameter lrs with the init on the "
        "multitask loss) instead of MAML_SETUP; give it its own --cache",
    )
    ap.add_argument(
        "--support-floor",
        type=int,
        default=0,
        help="1: score queries as metaray evaluate does by default (support-fitted floor)",
    )
    args = ap.parse_args()
    if args.render:
        from bank_regret_report import compact, render

        with open(args.render) as f:
            rep = json.load(f)
        print(compact(rep, tuple(args.compact.split(";"))) if args.compact else render(rep))
        return
    args.shots = [int(x) for x in args.shots.split(",")]
    args.steps = [int(x) for x in args.steps.split(",")]
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    log = lambda m: print(f"[{time.perf_counter() - t0:7.1f}s] {m}", flush=True)  # noqa: E731
    sizes = [f"data.max_len={args.max_len}", f"outer.seed={args.seed}"]
    if args.recipe:
        cfg, train = recipe_configs(sizes, total=300)
    else:
        cfg, train = config.load(None, [*sizes, *MAML_SETUP]), None
    even, odd = ws.load_rows(ws.TRAIN + ws.RELATED + ws.UNRELATED, 1000)
    model = build_model(cfg.model, cfg.data)
    trainable = outer.trainable_names(model, cfg.inner)
    cache = argparse.Namespace(
        cache=args.cache, fill_shots=FILL_SUPPORT, fill_steps=20, max_len=args.max_len
    )
    state, _, rows = ws.cached(cache, cfg, model, even, trainable, log, train=train)
    ctx = {"model": model, "state": state, "rows": rows, "args": args, "trainable": trainable}
    # 1. TRAIN only: similarities and the threshold (variants run with a provisional one first)
    sims = {
        k: scenario(ctx, ws.TRAIN, even, k, args.calib_sim_episodes, 11, 0.0, True, True)
        for k in args.shots
    }
    ctx["power"] = power = fit_power(sims)
    for r in (r for k in args.shots for r in sims[k]):
        r["sim calibrated"] = r["sim raw"] / r["rel"] ** power
    log(f"TRAIN-fitted attenuation power {power}")
    pooled = [r for k in args.shots for r in sims[k]]
    thr = choose_threshold(pooled, "sim calibrated")
    thr_raw = choose_threshold(pooled, "sim raw")
    log(f"TRAIN-chosen thresholds: calibrated {thr}, raw {thr_raw}")
    calib = {
        k: scenario(ctx, ws.TRAIN, even, k, args.calib_episodes, 11, thr, True) for k in args.shots
    }
    log("TRAIN leave-one-out done")
    script_out = {  # every stored language of the query's script removed (the fallback's case)
        k: scenario(ctx, ws.TRAIN, even, k, args.calib_episodes, 11, thr, "script")
        for k in args.shots
    }
    log("TRAIN leave-script-out done")
    rng = np.random.default_rng(0)
    recurring = sorted(rng.choice(ws.TRAIN, size=args.recurring, replace=False).tolist())
    scen = {"recurring": recurring, "related-novel": ws.RELATED, "unrelated-novel": ws.UNRELATED}
    held = {}
    for k in args.shots:
        for name, langs in scen.items():
            held[f"{name} K={k}"] = scenario(
                ctx, langs, odd, k, args.episodes, args.seed, thr, False
            )
            log(f"{name} K={k} done")
    report = {
        "args": vars(args),
        "thresholds": {"calibrated": thr, "raw": thr_raw},
        "attenuation_power": power,
        "train_loo": {str(k): v for k, v in calib.items()},
        "train_script_out": {str(k): v for k, v in script_out.items()},
        "train_loo_sims": {str(k): v for k, v in sims.items()},
        "held_out": held,
        "stored_bpb": {k: rows[k]["loss"] for k in rows},
        "wall_s": time.perf_counter() - t0,
        "load": os.getloadavg(),
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(rounded(report), f)
    os.replace(tmp, args.out)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
