"""The descriptor map: task descriptors projected to 2-D (PCA), as a PNG.

Two panels over the same projection: coloured by language family (left) and by script
(right). Stored bank entries are filled circles labelled with their task key; queries (the
support sets of evaluation episodes) are crosses, one per episode, labelled once per task at
their mean position. Keys that are not wordfreq language codes are grouped as "unknown".

Drawn by `metaray bank inspect --plot` (entries only) and by evaluation with a bank
(`evaluation_map`: entries and the test episodes). matplotlib's object API with the Agg
canvas (no pyplot state), like `pipeline.tracking.plots`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from pipeline.data.sources.languages import BRANCH
from pipeline.data.sources.languages import describe as language

MAX_ENTRIES = 2000  # a map of more points is unreadable, and `get` per key costs a call each


def pca2(x: np.ndarray) -> np.ndarray:
    """`[N, 2]` coordinates on the two leading principal axes (zeros for N < 2)."""
    x = np.asarray(x, np.float64)
    if len(x) < 2:
        return np.zeros((len(x), 2))
    c = x - x.mean(0)
    _, _, vt = np.linalg.svd(c, full_matrices=False)
    out = c @ vt[:2].T
    return np.pad(out, ((0, 0), (0, 2 - out.shape[1])))


def code_of(key: str) -> str:
    """The language code in a task key: 'en', 'wordlang/en', 'en+fr' (first), 'en:3'."""
    return key.rsplit("/", 1)[-1].split("+")[0].split(":")[0]


def _palette(names: Sequence[str]) -> dict[str, tuple]:
    """Distinct colours: tab10, then Dark2 and Set1 (tab20's paired shades look alike)."""
    from matplotlib import colormaps

    cols = [
        colormaps[m](i) for m, n in (("tab10", 10), ("Dark2", 8), ("Set1", 9)) for i in range(n)
    ]
    return {g: cols[i % len(cols)] for i, g in enumerate(sorted(set(names)))}


def _group(key: str, what: str) -> str:
    code = code_of(key)
    row = language(code)
    if what == "branch":
        return BRANCH.get(code, row.family)
    return row.family if what == "family" else row.script


def _panel(ax, xy, keys, n_e, queries, what: str, title: str) -> None:
    groups = [_group(k, what) for k in keys]
    colours = _palette(groups)
    c = np.array([colours[g] for g in groups]).reshape(len(keys), 4)
    if len(keys) > n_e:
        ax.scatter(xy[n_e:, 0], xy[n_e:, 1], c=c[n_e:], marker="x", s=22, linewidths=1)
        qkeys = keys[n_e:]
        for label in sorted(set(qkeys)):
            at = xy[n_e:][[k == label for k in qkeys]].mean(0)
            ax.annotate(
                label, at, fontsize=8, style="italic", xytext=(3, -10), textcoords="offset points"
            )
    if n_e:
        ax.scatter(xy[:n_e, 0], xy[:n_e, 1], c=c[:n_e], s=60, edgecolors="black", linewidths=0.6)
        if n_e <= 200:  # labels beyond that are a grey smear
            for k, p in zip(keys[:n_e], xy[:n_e], strict=True):
                ax.annotate(
                    k, p, fontsize=8, weight="bold", xytext=(4, 3), textcoords="offset points"
                )
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", ls="", color=colours[g], label=g) for g in colours]
    handles += [
        Line2D([], [], marker="o", ls="", mfc="white", mec="black", label="bank entry"),
        Line2D([], [], marker="x", ls="", color="black", label="query (episode)"),
    ]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.grid(alpha=0.3)


def plot(
    entries: Sequence[tuple[str, np.ndarray]],
    queries: Sequence[tuple[str, np.ndarray]] = (),
    path: str | os.PathLike[str] = "descriptor_map.png",
    *,
    title: str = "task descriptors (PCA)",
) -> Path:
    """Write the map of `entries` and `queries` ((key, descriptor) pairs) to `path`: by
    family, by script, and the most common script alone (its own PCA) by branch, since one
    script's languages crowd into one spot of the full projection."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = [k for k, _ in entries] + [k for k, _ in queries]
    if not keys:
        raise ValueError("descriptor map: no bank entries and no queries to draw")
    x = np.stack([np.asarray(d, np.float32).ravel() for _, d in (*entries, *queries)])
    n_e = len(entries)
    scripts = [_group(k, "script") for k in keys]
    top = max(set(scripts), key=scripts.count)
    sel = np.array([s == top for s in scripts])
    fig = Figure(figsize=(21, 6.5))
    xy = pca2(x)
    _panel(
        fig.add_subplot(1, 3, 1), xy, keys, n_e, queries, "family", "coloured by language family"
    )
    _panel(fig.add_subplot(1, 3, 2), xy, keys, n_e, queries, "script", "coloured by script")
    sub = [k for k, m in zip(keys, sel, strict=True) if m]
    _panel(
        fig.add_subplot(1, 3, 3),
        pca2(x[sel]),
        sub,
        int(sel[:n_e].sum()),
        queries,
        "branch",
        f"{top} script only (its own PCA), coloured by branch",
    )
    fig.suptitle(f"{title}: {n_e} bank entries, {len(queries)} queries")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.png")
    FigureCanvasAgg(fig)
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, out)  # atomic: a reader never sees half a PNG
    return out


def bank_entries(
    call: Callable[..., object], limit: int = MAX_ENTRIES
) -> list[tuple[str, np.ndarray]]:
    """(key, descriptor) of up to `limit` stored entries through the bank's public calls
    (`call(name, *args)`: a `BankService` method or the actor's)."""
    keys = list(call("keys"))[:limit]
    return [(k, np.asarray(call("get", k, False)["descriptor"], np.float32)) for k in keys]


def evaluation_map(model, meta_params, service, episodes, descriptor: str, path) -> Path:
    """The map for `metaray evaluate --bank`: the bank's entries and every test episode's
    support descriptor (`episodes`: `pipeline.eval.methods.Episode`s, one task each, or the
    N classes of one classification task)."""
    from pipeline.data.episodes import collate, to_torch
    from pipeline.meta.descriptor import describe

    queries = []
    for i in range(0, len(episodes), 64):
        chunk = episodes[i : i + 64]
        support = to_torch(collate([e.batch for e in chunk])).support
        d = describe(model, meta_params, support, kind=descriptor)
        queries += [("+".join(e.tasks), v) for e, v in zip(chunk, d, strict=True)]
    entries = bank_entries(lambda name, *a: getattr(service, name)(*a))
    return plot(entries, queries, path, title="bank entries and evaluation queries")
