"""What a floor on every byte's probability would buy at step 0, before spending a round on it.

Issue 11's step-0 targets fail on languages whose script no training language uses: every
trained init puts almost no mass on their byte values (hy 12.7 bpb against uniform's 8.02,
`bench/RESULTS.md` round 7). The candidate fix is a mixture with uniform in the output,
p' = (1 - eps) p + eps / V, for every method alike. This script measures its trade-off on the
models every recipe starts from, with no training change: per fold, the multitask baseline
(`bench/fewshot.py`'s loop, budget and best-on-validation selection) and its 80% snapshot
(the recommended recipe's step-0 model), scored at step 0 on the fold's wordfreq test
languages and on the CLDR languages wordfreq lacks, split by seen/unseen script, for each
fixed eps (one eps is also chosen on validation languages: the fold's wordfreq ones and
`fx.EXTERNAL_VAL`) and for "fit": eps fitted per episode on its own support words
(`pipeline.meta.losses.fit_floor`, what `--support-floor` does). Paired per-language
differences against eps = 0 with 95% CIs over languages (per language, the mean over folds
where it was tested; CLDR languages are tested in every fold).

    .venv/bin/python bench/prob_floor.py --folds 0,1,2,3,4,5 --out bench/results/prob_floor.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fewshot_external as fx
from fewshot import ext_episodes, run_config
from fewshot_data import episodes_for, load_words, make_folds
from fewshot_train import Selector, train_multitask

from pipeline.data.sources.wordlang import available
from pipeline.eval import baselines
from pipeline.eval.stats import mean_ci
from pipeline.meta.losses import LN2, fit_floor, floored_lm_loss
from pipeline.models import build_model

EPS = (0.0, 0.001, 0.003, 0.01, 0.03, 0.1)


def _scored(model, params, split):
    """One episode's `split` as (outputs, targets, mask) with a task dim of 1, float64."""
    x, y, mask = (torch.as_tensor(a)[None] for a in (split.x, split.y, split.mask))
    return model.functional(params, x, mask.float()).double(), y, mask.double()


def floored_bpb(model, params, eps_list, episodes) -> dict[str, dict[str, list[float]]]:
    """Per eps (and "fit": eps fitted on the episode's own SUPPORT words by
    `losses.fit_floor`, what `--support-floor` does), per language: query bits per byte at
    step 0 under `losses.floored_lm_loss`."""
    out: dict[str, dict[str, list[float]]] = {str(e): {} for e in (*eps_list, "fit")}
    with torch.no_grad():
        for e in episodes:
            lang = e.tasks[0]
            query = _scored(model, params, e.batch.query)
            fitted = fit_floor(*_scored(model, params, e.batch.support))
            for key, eps in [*((str(x), torch.full((1,), x)) for x in eps_list), ("fit", fitted)]:
                bits = float(floored_lm_loss(*query, eps)[0] / LN2)
                out[key].setdefault(lang, []).append(bits)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--folds", default="0,1,2,3,4,5")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--episodes", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="bench/results/prob_floor.json")
    cli = ap.parse_args()
    torch.set_num_threads(cli.threads)
    # the benchmark's own defaults (bench/fewshot.py), so the models are the round's models
    args = SimpleNamespace(
        train_k=8, train_q=8, max_len=16, hidden=64, embed=16, meta_batch=8,
        outer_lr=3e-3, steps=cli.steps, k_query=32,
    )  # fmt: skip
    t0 = time.perf_counter()
    langs = available()
    folds = make_folds(langs, 6, 4, seed=0)
    words = load_words(langs, 3000)
    seen_words = {w for lang in words.values() for w in lang["all"]["text"]}
    ext_words = fx.load_external(fx.EXTERNAL, exclude=seen_words)
    ext_val_words = fx.load_external(fx.EXTERNAL_VAL, exclude=seen_words)
    cfg = run_config(args)
    model = build_model(cfg.model, cfg.data)
    read = lambda t: words[t]["all"]  # noqa: E731
    # per model, per test set, per eps, per language: list of bpb over folds and episodes
    res: dict = {}
    unseen = {"wordfreq": set(), "cldr": fx.groups()["unseen script"]}
    for fi in [int(f) for f in cli.folds.split(",")]:
        fold = folds[fi]
        val = episodes_for(
            words, fold.val, cfg.data, part="all", shot=8, k_query=16, n=4, seed=cli.seed + 101
        )
        unseen["wordfreq"] |= {lang for lang in fold.test if not fold.seen_script(lang)}
        sel = Selector(model, val, None)
        p80 = int(round(0.8 * cli.steps))
        snaps = train_multitask(
            model, cfg, read, list(fold.train), steps=cli.steps, seed=cli.seed, sel=sel,
            val_every=50, snapshot_at=[p80],
        )  # fmt: skip
        models = {
            "multitask": sel.best[2],
            "snapshot 80%": snaps[p80],
            "random init": baselines.random_init(model, cfg, seed=cli.seed + 1),
        }
        tests = {
            "wordfreq": episodes_for(
                words, fold.test, cfg.data, part="B", shot=8, k_query=32, n=cli.episodes,
                seed=20_251_201,
            ),
            "cldr": ext_episodes(ext_words, cfg, args, 8, cli.episodes, 20_251_201),
            # where eps is chosen: the fold's wordfreq validation languages, and ten other
            # CLDR languages (fx.EXTERNAL_VAL, four of them in scripts wordfreq lacks)
            "wordfreq-val": episodes_for(
                words, fold.val, cfg.data, part="B", shot=8, k_query=32, n=cli.episodes,
                seed=cli.seed + 7,
            ),
            "cldr-val": ext_episodes(ext_val_words, cfg, args, 8, cli.episodes, cli.seed + 7),
        }  # fmt: skip
        for mname, params in models.items():
            for tname, eps_ in tests.items():
                got = floored_bpb(model, params, EPS, eps_)
                slot = res.setdefault(mname, {}).setdefault(tname, {})
                for e, per_lang in got.items():
                    for lang, vals in per_lang.items():
                        slot.setdefault(e, {}).setdefault(lang, []).extend(vals)
        print(f"[{time.perf_counter() - t0:6.0f}s] fold {fi} (best step {sel.best[1]})", flush=True)
    table = []
    for mname, by_test in res.items():
        for tname, by_eps in by_test.items():
            if tname.endswith("-val"):
                continue
            base = {lang: float(np.mean(v)) for lang, v in by_eps["0.0"].items()}
            for e in (*EPS, "fit"):
                cur = {lang: float(np.mean(v)) for lang, v in by_eps[str(e)].items()}
                for group in ("seen", "unseen"):
                    ls = sorted(
                        lang for lang in cur if (lang in unseen[tname]) == (group == "unseen")
                    )
                    diff = [cur[lang] - base[lang] for lang in ls]
                    c = mean_ci(diff) if e != 0.0 else {"mean": 0.0, "lo": 0.0, "hi": 0.0}
                    row = dict(
                        model=mname, test=tname, group=group, eps=e, n=len(ls),
                        bpb=float(np.mean([cur[lang] for lang in ls])),
                        diff=c["mean"], lo=c["lo"], hi=c["hi"],
                    )  # fmt: skip
                    table.append(row)
                    print(json.dumps(row), flush=True)
    chosen = {}
    for mname, by_test in res.items():
        for tname in ("wordfreq", "cldr"):
            val = by_test[f"{tname}-val"]
            score = {e: np.mean([np.mean(v) for v in val[str(e)].values()]) for e in EPS}
            chosen[f"{mname}/{tname}"] = e_star = min(EPS, key=score.get)
            print(
                f"{mname} / {tname}: eps chosen on validation {e_star:g} ("
                + ", ".join(f"{e:g}->{score[e]:.3f}" for e in EPS)
                + ")",
                flush=True,
            )
    Path(cli.out).write_text(json.dumps({"rows": table, "chosen": chosen, "raw": res}, indent=None))


if __name__ == "__main__":
    main()
