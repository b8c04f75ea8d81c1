"""Does the memory-bank warm start help? An honest, reduced study on wordfreq languages.

    .venv/bin/python bench/warmstart.py --out bench/warmstart.json      # ~15-25 min, 2 cores

1. Meta-train a small byte GRU on TRAIN languages (even-ranked words only).
2. Fill a bank: each TRAIN language adapted with a large support (K=256, even words).
3. Choose the descriptor and the similarity threshold on TRAIN languages only (leave one
   language out: does the nearest OTHER language's stored params beat the meta-init at step 0?).
4. Evaluate on odd-ranked words (never seen in training or bank fill), three scenarios:
   recurring (TRAIN languages again, few-shot), novel related (held out, a same-branch relative
   in TRAIN), novel unrelated (held out, no relative in TRAIN or an unseen script).
   Methods: meta-init, bank warm start, random init; bits per byte after 0,1,2,5,10 steps.
   Paired differences bank - meta-init per episode, mean with 95% CI (t).
5. Retrieval precision@1 (same branch for related; same language for recurring) per descriptor.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline import config
from pipeline.bank.service import BankService
from pipeline.bank.warm_start import flatten, flatten_batched, unflatten, warm_start
from pipeline.config import BankConfig
from pipeline.data import episodes as ep
from pipeline.data.sources.languages import BRANCH, LANGUAGES
from pipeline.data.sources.wordlang import top_words
from pipeline.meta import outer
from pipeline.meta.descriptor import KINDS, describe
from pipeline.meta.inner import adapt
from pipeline.meta.losses import LN2, model_loss
from pipeline.models import build_model

RELATED = ["uk", "sk", "ca", "nb", "ms", "pt"]  # ru/bg/mk, cs/pl, es/it/fr, da/sv, id, es
UNRELATED = ["ko", "ta", "el", "he", "vi", "tr"]  # no same-branch language in TRAIN
TRAIN = sorted(set(LANGUAGES) - set(RELATED) - set(UNRELATED))
STEPS = (0, 1, 2, 5, 10)
T975 = {
    1: 12.71,
    2: 4.30,
    3: 3.18,
    4: 2.78,
    5: 2.57,
    6: 2.45,
    7: 2.36,
    8: 2.31,
    9: 2.26,
    10: 2.23,
    15: 2.13,
    20: 2.09,
    30: 2.04,
    60: 2.00,
    120: 1.98,
}


def t975(df: int) -> float:
    keys = sorted(k for k in T975 if k <= max(df, 1))
    return T975[keys[-1]] if df < 120 else 1.96


def mean_ci(x) -> dict:
    x = np.asarray(x, np.float64)
    if x.size < 2:
        return {"mean": float(x.mean()) if x.size else float("nan"), "ci": float("nan"), "n": 1}
    half = t975(x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
    return {"mean": float(x.mean()), "ci": float(half), "n": int(x.size)}


def load_rows(langs, top_n):
    even, odd = {}, {}
    for lang in langs:
        words, freqs = top_words(lang, top_n)
        w = np.array(words, dtype=object)
        even[lang] = {"text": w[0::2], "freq": freqs[0::2]}
        odd[lang] = {"text": w[1::2], "freq": freqs[1::2]}
    return even, odd


def episodes(rows, langs, k, q, max_len, n, seed):
    """[(lang, EpisodeBatch numpy)] deterministic in (seed, lang index, episode)."""
    out = []
    for li, lang in enumerate(langs):
        for e in range(n):
            rng = ep.slot_rng(seed, k, li * 1000 + e)
            out.append((lang, ep.lm_episode(rows[lang], k, q, max_len, rng, task=lang)))
    return out


def batched(eps, size=16):
    for i in range(0, len(eps), size):
        group = eps[i : i + size]
        yield [g[0] for g in group], ep.to_torch(ep.collate([g[1] for g in group]))


def bpb(model, params, split) -> np.ndarray:
    with torch.no_grad():
        return (model_loss(model, params, split) / LN2).numpy()


def meta_train(cfg, model, even, log, params=None):
    """`cfg.outer.steps` outer steps on TRAIN's even words; `params`: start from these (a
    pretrained init, as `checkpoint.init_from` does: fresh lrs and optimizer state)."""
    state = outer.init_state(model, cfg.inner, cfg.outer, seed=cfg.outer.seed)
    if params is not None:
        state = state._replace(params={k: v.detach().clone() for k, v in params.items()})
    t0 = time.perf_counter()
    hist = []
    for step in range(cfg.outer.steps):
        b = ep.to_torch(
            ep.build_step(
                lambda k: even[k],
                TRAIN,
                cfg.data,
                seed=cfg.outer.seed,
                step=step,
                meta_batch=cfg.outer.meta_batch,
            )
        )
        state, m = outer.train_step(
            state,
            b,
            model=model,
            inner_cfg=cfg.inner,
            outer_cfg=cfg.outer,
            pre_metrics=step % 25 == 0,
        )
        if step % 25 == 0 or step == cfg.outer.steps - 1:
            rec = {
                "step": step,
                "bpb_pre": m.get("loss_pre", float("nan")) / LN2,
                "bpb_post": m["loss_post"] / LN2,
                "s": time.perf_counter() - t0,
            }
            hist.append(rec)
            log(f"meta step {step}: {rec}")
    return state, hist


def fill_bank(model, state, even, args, trainable):
    """Each TRAIN language adapted on a large support; descriptors of every kind."""
    rows = {}
    eps = episodes(even, TRAIN, args.fill_shots, 64, args.max_len, 1, seed=7)
    names = list(state.params)
    for langs, b in batched(eps, 8):
        p = adapt(
            state.params,
            b.support,
            model=model,
            steps=args.fill_steps,
            lrs=state.lrs,
            first_order=True,
            trainable=trainable,
        )
        p = {k: v.detach() for k, v in p.items()}
        flat = flatten_batched(p, names)
        loss = bpb(model, p, b.query)
        desc = {kind: describe(model, state.params, b.support, kind=kind) for kind in KINDS}
        for i, lang in enumerate(langs):
            rows[lang] = {
                "params": flat[i],
                "loss": float(loss[i]),
                "desc": {k: v[i] for k, v in desc.items()},
            }
    return rows


def put_rows(
    bank: BankService,
    rows: dict[str, dict],
    keys: list[str],
    kind: str,
    meta_init: dict[str, torch.Tensor],
    **extra: np.ndarray,
) -> None:
    """Put `rows[keys]` (adapted params, `kind` descriptors, losses; `extra` columns as given)
    into `bank` with the meta-init as its base, as `metaray adapt --bank-uri` does: a float16
    bank stores deltas from its base, and without one the first entry would be the base, every
    other entry a delta from another language's parameters."""
    bank.put(
        {
            "keys": keys,
            "descriptor": np.stack([rows[k]["desc"][kind] for k in keys]),
            "params": np.stack([rows[k]["params"] for k in keys]),
            "base": flatten(meta_init),  # the order flatten_batched gave the rows (sorted names)
            "loss": [rows[k]["loss"] for k in keys],
            **extra,
        }
    )


# The start rule this study measured (bench/RESULTS.md, "Memory-bank warm start"): the nearest
# entry by raw cosine above the threshold. Pinned: the bank's defaults have moved on since (the
# calibrated similarity and the probe, which needs the inner lrs: bench/bank_regret.py).
STUDY_RULE = dict(similarity="raw", select="similarity", top_k=1, blend="nearest")


def bank_for(rows, meta_init, kind, threshold, exclude=()):
    cfg = BankConfig(capacity=1000, threshold=threshold, descriptor=kind, **STUDY_RULE)
    bank = BankService(cfg)
    put_rows(bank, rows, [k for k in rows if k not in exclude], kind, meta_init)
    return bank


def same_branch(a: str, b: str) -> bool:
    return BRANCH.get(a, LANGUAGES[a].family) == BRANCH.get(b, LANGUAGES[b].family)


def after_steps(model, params, b, steps, lrs, trainable) -> dict[int, np.ndarray]:
    """Query bpb `[T]` after each count in `steps` of the inner loop from `params`."""
    out, done, p = {}, 0, {k: v.detach() for k, v in params.items()}
    for s in sorted(steps):
        if s > done:
            p = adapt(
                p,
                b.support,
                model=model,
                steps=s - done,
                lrs=lrs,
                first_order=True,
                trainable=trainable,
            )
            p = {k: v.detach() for k, v in p.items()}
            done = s
        out[s] = bpb(model, p, b.query)
    return out


def calibrate(model, state, rows, even, args, trainable, log):
    """Leave-one-language-out on TRAIN: per descriptor, precision@1 (same branch) and the
    step-0 gain of the nearest OTHER language's params over the meta-init, vs similarity."""
    eps = episodes(even, TRAIN, args.shots, 16, args.max_len, 2, seed=11)
    out = {}
    for kind in KINDS:
        sims, gains, same = [], [], []
        banks = {lang: bank_for(rows, state.params, kind, 1.0, exclude=(lang,)) for lang in TRAIN}
        for langs, b in batched(eps):
            d = describe(model, state.params, b.support, kind=kind)
            base = after_steps(model, state.params, b, args.calib_steps, state.lrs, trainable)
            for i, lang in enumerate(langs):
                hit = banks[lang].query(d[i : i + 1], 1)
                nb = hit["keys"][0][0]
                p = unflatten(hit["params"][0, :1], state.params)
                one = ep.EpisodeBatch(
                    *(ep.Split(*(a[i : i + 1] for a in sp)) for sp in (b.support, b.query))
                )
                warm = after_steps(model, p, one, args.calib_steps, state.lrs, trainable)
                # the worst step decides: a warm start must not lose at ANY calibrated step
                gains.append(float(min(base[s][i] - warm[s][0] for s in args.calib_steps)))
                sims.append(float(hit["sims"][0, 0]))
                same.append(same_branch(lang, nb))
        sims, gains = np.array(sims), np.array(gains)
        cands = np.unique(np.round(sims, 3))
        totals = [gains[sims >= c].sum() for c in cands]
        best = int(np.argmax(totals))
        thr = float(cands[best]) if totals[best] > 0 else 1.0  # only exact duplicates warm-start
        out[kind] = {
            "loo_precision_at_1": float(np.mean(same)),
            "threshold": thr,
            "loo_gain_above_threshold": float(totals[best]),
            "loo_warm_fraction": float((sims >= thr).mean()),
        }
        log(f"calibration {kind}: {out[kind]}")
    return out


def evaluate(model, state, rows, odd, args, kind, thr, rand_params, trainable, log):
    bank = bank_for(rows, state.params, kind, thr)
    rng = np.random.default_rng(0)
    recurring = sorted(rng.choice(TRAIN, size=min(args.recurring, len(TRAIN)), replace=False))
    scen = {"recurring": list(recurring), "related": RELATED, "unrelated": UNRELATED}
    res = {}
    for name, langs in scen.items():
        eps = episodes(
            odd, langs, args.shots, args.k_query, args.max_len, args.episodes, seed=args.seed
        )
        vals = {m: {s: [] for s in STEPS} for m in ("meta-init", "bank", "random", "stored")}
        info_all, lang_all = [], []
        for langs_b, b in batched(eps):
            lang_all += langs_b
            start, info = warm_start(model, state.params, b.support, cfg=bank.cfg, query=bank.query)
            info_all += info.sources
            stored = (
                unflatten(np.stack([rows[x]["params"] for x in langs_b]), state.params)
                if name == "recurring"
                else None
            )
            for m, p in (
                ("meta-init", state.params),
                ("bank", start),
                ("random", rand_params),
                ("stored", stored),
            ):
                if p is None:
                    continue
                done = 0
                p = {k: v.detach() for k, v in p.items()}
                for s in STEPS:
                    if s > done:
                        p = adapt(
                            p,
                            b.support,
                            model=model,
                            steps=s - done,
                            lrs=state.lrs,
                            first_order=True,
                            trainable=trainable,
                        )
                        p = {k: v.detach() for k, v in p.items()}
                        done = s
                    vals[m][s] += bpb(model, p, b.query).tolist()
        warm = [s != "meta-init" for s in info_all]
        right = [
            s != "meta-init"
            and (
                s[5:].split(",")[0] == lg
                if name == "recurring"
                else same_branch(lg, s[5:].split(",")[0])
            )
            for s, lg in zip(info_all, lang_all, strict=True)
        ]
        seen = np.array(
            [LANGUAGES[lg].script in {LANGUAGES[t].script for t in TRAIN} for lg in lang_all]
        )
        r = {
            "languages": langs,
            "episodes": len(lang_all),
            "warm_fraction": float(np.mean(warm)),
            "warm_right_fraction": float(np.mean(right)),
            "sources": {},
            "steps": {},
        }
        for lg, s in zip(lang_all, info_all, strict=True):
            r["sources"].setdefault(lg, {}).setdefault(s, 0)
            r["sources"][lg][s] += 1
        for s in STEPS:
            row = {m: mean_ci(vals[m][s]) for m in vals if vals[m][s]}
            diff = np.array(vals["bank"][s]) - np.array(vals["meta-init"][s])
            row["bank-meta"] = mean_ci(diff)
            for label, mask in (("seen_script", seen), ("unseen_script", ~seen)):
                if mask.any() and (~mask).any():
                    row[f"bank-meta {label}"] = mean_ci(diff[mask])
            r["steps"][s] = row
        if name == "recurring":
            r["stored_bank_fill_bpb"] = mean_ci([rows[x]["loss"] for x in recurring])
        res[name] = r
        log(f"{name}: warm {r['warm_fraction']:.2f}, step0 {r['steps'][0]}")
    return res


def retrieval(model, state, rows, odd, args):
    """precision@1 on held-out few-shot episodes: related -> same branch, recurring -> same
    language; per descriptor kind (no threshold: the nearest stored task)."""
    out = {}
    rec = TRAIN
    eps_rel = episodes(odd, RELATED, args.shots, 16, args.max_len, args.episodes, seed=5)
    eps_rec = episodes(odd, rec, args.shots, 16, args.max_len, 2, seed=5)
    for kind in KINDS:
        bank = bank_for(rows, state.params, kind, 1.0)
        res = {}
        for name, eps in (("related_same_branch", eps_rel), ("recurring_same_language", eps_rec)):
            ok, nn = [], {}
            for langs, b in batched(eps):
                hits = bank.query(
                    describe(model, state.params, b.support, kind=kind), 1, with_params=False
                )
                for lg, keys in zip(langs, hits["keys"], strict=True):
                    good = same_branch(lg, keys[0]) if name.startswith("related") else keys[0] == lg
                    ok.append(good)
                    nn.setdefault(lg, {}).setdefault(keys[0], 0)
                    nn[lg][keys[0]] += 1
            res[name] = {"precision_at_1": float(np.mean(ok)), "nearest": nn}
        out[kind] = res
    return out


def cached(args, cfg, model, even, trainable, log, train=None):
    """Meta-train (`train(cfg, model, even, log)`, default `meta_train`) + bank fill, or load
    both from `--cache` (safetensors + JSON, no pickle)."""
    from safetensors.numpy import load_file, save_file

    path = os.path.join(args.cache, "warmstart-cache.safetensors") if args.cache else None
    if path and os.path.exists(path):
        flat = load_file(path)
        with open(path + ".json") as f:
            side = json.load(f)
        state = outer.MetaState(
            {k[7:]: torch.from_numpy(v) for k, v in flat.items() if k.startswith("params/")},
            {k[4:]: torch.from_numpy(v) for k, v in flat.items() if k.startswith("lrs/")},
            {},
            0,
        )
        rows = {
            lang: {
                "params": flat[f"bank/{lang}/params"],
                "loss": side["loss"][lang],
                "desc": {kd: flat[f"bank/{lang}/{kd}"] for kd in KINDS},
            }
            for lang in TRAIN
        }
        log(f"loaded meta-state and bank fill from {path}")
        return state, side["hist"], rows
    state, hist = (train or meta_train)(cfg, model, even, log)
    rows = fill_bank(model, state, even, args, trainable)
    if path:
        os.makedirs(args.cache, exist_ok=True)
        flat = {f"params/{k}": v.numpy() for k, v in state.params.items()}
        flat.update(
            {
                f"lrs/{k}": v.reshape(-1).numpy() if v.dim() == 0 else v.numpy()
                for k, v in state.lrs.items()
            }
        )
        for lang, r in rows.items():
            flat[f"bank/{lang}/params"] = r["params"]
            flat.update({f"bank/{lang}/{kd}": r["desc"][kd] for kd in KINDS})
        save_file({k: np.ascontiguousarray(v) for k, v in flat.items()}, path)
        with open(path + ".json", "w") as f:
            json.dump({"hist": hist, "loss": {k: r["loss"] for k, r in rows.items()}}, f)
    return state, hist, rows


def render(report: dict) -> str:
    """Markdown tables from a report JSON (`--render FILE`)."""
    f = lambda st: f"{st['mean']:.3f} ± {st['ci']:.3f}"  # noqa: E731
    lines = [
        f"descriptor chosen on TRAIN languages only: `{report['descriptor']}`, threshold "
        f"{report['calibration'][report['descriptor']]['threshold']}",
        "",
    ]
    for name, r in report["scenarios"].items():
        lines += [
            f"**{name}** ({', '.join(r['languages'])}; {r['episodes']} episodes; warm "
            f"start taken {r['warm_fraction']:.0%}, from a right source "
            f"{r['warm_right_fraction']:.0%})",
            "",
            "| steps | meta-init bpb | bank bpb | random bpb | bank - meta (95% CI) |"
            + (" stored-entry start bpb |" if name == "recurring" else ""),
            "|---|---|---|---|---|" + ("---|" if name == "recurring" else ""),
        ]
        for s, row in r["steps"].items():
            extra = f" {f(row['stored'])} |" if "stored" in row else ""
            lines.append(
                f"| {s} | {f(row['meta-init'])} | {f(row['bank'])} | "
                f"{f(row['random'])} | {f(row['bank-meta'])} |{extra}"
            )
            for k in ("bank-meta seen_script", "bank-meta unseen_script"):
                if k in row:
                    lines.append(f"| {s} ({k[10:]}) | | | | {f(row[k])} |")
        if "stored_bank_fill_bpb" in r:
            lines.append(
                f"\nstored entries' own bpb at bank fill (their K=256 query): "
                f"{f(r['stored_bank_fill_bpb'])}"
            )
        lines.append("")
    lines += [
        "| descriptor | LOO p@1 same branch (TRAIN) | related p@1 same branch | "
        "recurring p@1 same language | threshold | LOO warm fraction |",
        "|---|---|---|---|---|---|",
    ]
    for kind, c in report["calibration"].items():
        rr = report["retrieval"][kind]
        lines.append(
            f"| {kind} | {c['loo_precision_at_1']:.2f} | "
            f"{rr['related_same_branch']['precision_at_1']:.2f} | "
            f"{rr['recurring_same_language']['precision_at_1']:.2f} | "
            f"{c['threshold']} | {c['loo_warm_fraction']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--render", help="print the markdown tables of a report JSON and exit")
    ap.add_argument("--meta-steps", type=int, default=300)
    ap.add_argument("--algorithm", default="maml")
    ap.add_argument("--inner-steps", type=int, default=1)
    ap.add_argument("--inner-lr", type=float, default=0.1)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--max-len", type=int, default=16)
    ap.add_argument("--meta-batch", type=int, default=16)
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--k-query", type=int, default=32)
    ap.add_argument("--fill-shots", type=int, default=256)
    ap.add_argument("--fill-steps", type=int, default=20)
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--recurring", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/warmstart.json")
    ap.add_argument(
        "--calib-steps",
        default="0,1,2",
        help="inner-step counts at which a warm start must beat the meta-init "
        "(leave-one-language-out on TRAIN) to set the threshold",
    )
    ap.add_argument("--cache", help="directory: reuse/save the meta-state and the bank fill")
    args = ap.parse_args()
    if args.render:
        with open(args.render) as f:
            print(render(json.load(f)))
        return
    args.calib_steps = [int(x) for x in args.calib_steps.split(",")]
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    log = lambda m: print(f"[{time.perf_counter() - t0:7.1f}s] {m}", flush=True)  # noqa: E731
    cfg = config.load(
        None,
        [
            f"inner.algorithm={args.algorithm}",
            f"inner.steps={args.inner_steps}",
            f"inner.lr={args.inner_lr}",
            f"model.hidden={args.hidden}",
            "model.embed=16",
            f"data.max_len={args.max_len}",
            f"data.k_support={args.shots}",
            "data.k_query=16",
            f"outer.meta_batch={args.meta_batch}",
            f"outer.steps={args.meta_steps}",
            "outer.lr=0.003",
            f"outer.seed={args.seed}",
        ],
    )
    even, odd = load_rows(TRAIN + RELATED + UNRELATED, 1000)
    model = build_model(cfg.model, cfg.data)
    trainable = outer.trainable_names(model, cfg.inner)
    state, hist, rows = cached(args, cfg, model, even, trainable, log)
    log(
        f"bank filled: {len(rows)} languages, mean stored bpb "
        f"{np.mean([r['loss'] for r in rows.values()]):.3f}"
    )
    calib = calibrate(model, state, rows, even, args, trainable, log)
    kind = max(
        KINDS, key=lambda k: (calib[k]["loo_gain_above_threshold"], calib[k]["loo_precision_at_1"])
    )
    log(f"chosen on TRAIN only: descriptor={kind}, threshold={calib[kind]['threshold']}")
    torch.manual_seed(1234)
    rand = {k: v.detach() for k, v in model.reinit().named_parameters()}
    res = evaluate(
        model, state, rows, odd, args, kind, calib[kind]["threshold"], rand, trainable, log
    )
    retr = retrieval(model, state, rows, odd, args)
    report = {
        "args": vars(args),
        "train_languages": TRAIN,
        "meta_training": hist,
        "calibration": calib,
        "descriptor": kind,
        "scenarios": res,
        "retrieval": retr,
        "wall_s": time.perf_counter() - t0,
        "load": os.getloadavg(),
    }
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
