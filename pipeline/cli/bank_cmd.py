"""`metaray bank inspect|export|import|clear`: the memory bank, running or at rest.

Target: `--uri URI` opens a snapshot location (a directory or s3://bucket/prefix) in this
process, no Ray needed; without it the command attaches to the running bank actor
(`bank.name` in `bank.namespace` on the Ray cluster at `cluster.address` or RAY_ADDRESS).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.tracking.redact import dumps


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bank", help="inspect, export, import or clear the memory bank")
    bsub = p.add_subparsers(dest="bank_command", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--uri", help="snapshot location to open directly (no running bank)")
        q.add_argument("--config", help="YAML config file (bank.*, cluster.address)")
        q.add_argument("overrides", nargs="*", help="dotted overrides, e.g. bank.name=my-bank")

    ins = bsub.add_parser("inspect", help="entries, capacity, hit rate, nearest neighbours")
    common(ins)
    ins.add_argument("--neighbours", metavar="TASK_KEY", help="nearest stored tasks to this one")
    ins.add_argument("-k", type=int, default=5, help="neighbours to show")
    ins.add_argument("--list", type=int, default=0, metavar="N", help="show N stored task keys")
    ins.add_argument("--json", action="store_true", help="machine-readable output")
    ins.add_argument(
        "--plot",
        nargs="?",
        const="bank-descriptor-map.png",
        metavar="PNG",
        help="draw the descriptor map (PCA of the stored descriptors, coloured by language "
        "family and script) to PNG (default bank-descriptor-map.png) and log it to MLflow "
        "(tracking.uri / MLFLOW_TRACKING_URI; tracking.enabled=false: the file only)",
    )
    ins.set_defaults(func=_inspect)

    exp = bsub.add_parser("export", help="write a snapshot of the bank to DEST")
    common(exp)
    exp.add_argument("dest", help="directory or s3://bucket/prefix")
    exp.set_defaults(func=_export)

    imp = bsub.add_parser("import", help="upsert every entry of the snapshot at SRC")
    common(imp)
    imp.add_argument("src", help="directory or s3://bucket/prefix holding a bank snapshot")
    imp.set_defaults(func=_import)

    clr = bsub.add_parser("clear", help="remove every entry (and its snapshots and WAL)")
    common(clr)
    clr.add_argument("--yes", action="store_true", help="really clear it")
    clr.set_defaults(func=_clear)


class _Local:
    """A BankService opened on a snapshot URI, called like the actor (method(...) -> value)."""

    def __init__(self, svc) -> None:
        self.svc = svc

    def call(self, name: str, *args, **kwargs):
        return getattr(self.svc, name)(*args, **kwargs)


class _Remote:
    def __init__(self, handle) -> None:
        self.handle = handle

    def call(self, name: str, *args, **kwargs):
        import ray

        return ray.get(getattr(self.handle, name).remote(*args, **kwargs))


def _target(args: argparse.Namespace):
    from pipeline import config

    cfg = config.load(args.config, args.overrides)
    return _open(args, cfg), cfg


def _open(args: argparse.Namespace, cfg):
    from pipeline.errors import BankError

    if args.uri:
        from pipeline.bank.service import BankService
        from pipeline.bank.store import BankStore

        store = BankStore(args.uri, s3_endpoint=cfg.bank.s3_endpoint)
        if not store.snapshot_seqs() and not store.wal_seqs():
            raise BankError(f"no bank snapshot or WAL under {args.uri}; check the URI")
        bank_cfg = cfg.bank.model_copy(update={"snapshot_uri": args.uri})
        return _Local(BankService(bank_cfg))
    import ray

    from pipeline.bank.actor import lookup_bank

    try:
        if not ray.is_initialized():  # already connected (a notebook, a test): use that
            ray.init(address=cfg.cluster.address or "auto", log_to_driver=False)
    except ConnectionError as exc:
        raise BankError(
            f"no running Ray cluster to find the bank on ({exc}); start one, set "
            "cluster.address / RAY_ADDRESS, or open a snapshot with --uri"
        ) from None
    return _Remote(lookup_bank(cfg.bank.name, cfg.bank.namespace))


def _plot(bank, cfg, path: str, stats: dict) -> dict:
    """Write the descriptor map and log it to an MLflow run; returns {png, run_id}."""
    from pipeline.bank import descriptor_map
    from pipeline.errors import BankError

    entries = descriptor_map.bank_entries(bank.call)
    if not entries:
        raise BankError("the bank is empty: there is no descriptor to plot")
    where = stats.get("snapshot_uri") or cfg.bank.name
    png = descriptor_map.plot(entries, (), path, title=f"memory bank {where}")
    out = {"png": str(png), "run_id": None}
    if cfg.tracking.enabled:
        import contextlib
        import sys

        from pipeline.tracking import make_tracker

        # MLflow prints "View run ... at: <uri>" on stdout at the run's end: keep stdout for
        # the command's own output (`--json` must stay parseable)
        with contextlib.redirect_stdout(sys.stderr):
            tracker = make_tracker(cfg.tracking)
            params = {"bank.entries": stats["entries"], "bank.source": where}
            tracker.start("bank-inspect", params, tags={"metaray.kind": "bank-inspect"})
            tracker.log_artifact(png, "bank")
            tracker.end("FINISHED")
        out["run_id"] = tracker.run_id
    return out


def _inspect(args: argparse.Namespace) -> int:
    bank, cfg = _target(args)
    stats = bank.call("stats")
    out = {"stats": stats}
    if args.neighbours:
        out["neighbours"] = bank.call("neighbours", args.neighbours, args.k)["neighbours"]
    if args.list:
        keys = bank.call("keys")[: args.list]
        out["entries"] = [
            {m: e[m] for m in ("key", "step", "support", "loss")}
            for e in (bank.call("get", k, False) for k in keys)
        ]
    if args.plot:
        out["plot"] = _plot(bank, cfg, args.plot, stats)
    if args.json:
        print(dumps(out, indent=1))
        return 0
    s = stats
    hit = "n/a (no queries yet)" if s["hit_rate"] is None else f"{s['hit_rate']:.1%}"
    print(f"entries:   {s['entries']} / {s['capacity']} (eviction: {s['eviction']})")
    print(
        f"shape:     descriptor {s['dim']}, {s['n_params']} params ({s['dtype']}), "
        f"{s['bytes'] / 2**20:.1f} MiB"
    )
    print(f"hit rate:  {hit} over {s['queries']} queries (threshold {s['threshold']})")
    print(f"writes:    {s['entries_put']} entries in {s['puts']} puts, {s['evicted']} evicted")
    if s["snapshot_uri"]:
        r = s["restored"]
        print(
            f"snapshots: {s['snapshot_uri']} (restored {r['entries']} entries from "
            f"{r['snapshot'] or 'no snapshot'} + {r['wal_records']} WAL records)"
        )
    for w in s["warnings"]:
        print(f"WARNING:   {w}")
    for e in out.get("entries", []):
        print(
            f"  {e['key']:<32} step {e['step']:>7}  support {e['support']:>4}  loss {e['loss']:.4f}"
        )
    if args.neighbours:
        print(f"nearest to {args.neighbours}:")
        for key, sim in out["neighbours"]:
            print(f"  {sim:+.4f}  {key}")
    if args.plot:
        run = out["plot"]["run_id"]
        print(f"descriptor map: {out['plot']['png']}" + (f" (MLflow run {run})" if run else ""))
    return 0


def _here(path: str) -> str:
    """A local path made absolute in the user's directory: a running bank actor resolves
    relative paths in its own working directory (Ray's session folder on a cluster)."""
    return path if "://" in path else str(Path(path).resolve())


def _export(args: argparse.Namespace) -> int:
    print(f"wrote {_target(args)[0].call('snapshot', _here(args.dest))}")
    return 0


def _import(args: argparse.Namespace) -> int:
    src = _here(args.src)
    print(f"imported {_target(args)[0].call('import_snapshot', src)} entries from {src}")
    return 0


def _clear(args: argparse.Namespace) -> int:
    from pipeline.errors import BankError

    if not args.yes:
        raise BankError("bank clear removes every entry, its snapshots and WAL: add --yes")
    print(f"cleared {_target(args)[0].call('clear')} entries")
    return 0
