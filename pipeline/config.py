"""Typed configuration slices and the one YAML reader.

A run's configuration is a tree of frozen slices (`DataConfig`, `ModelConfig`, ...).
A component receives its slice, never the whole `RunConfig`. Values come from a YAML
file plus dotted command-line overrides (`inner.lr=0.05`), and every problem is
reported before any work starts, naming the file, the key, the value and the rule.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)


class ConfigError(ValueError):
    """A configuration problem, worded for the person who wrote the config."""


class _Slice(BaseModel):
    # inf/nan are never a meaningful learning rate, clip or timeout: refused by name
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


def _endpoint(value: str | None, key: str) -> str | None:
    """An S3 endpoint must say its scheme: `host:port` alone is ambiguous (http or https)."""
    if value and not value.startswith(("http://", "https://")):
        raise ValueError(f"no scheme: add http:// (e.g. http://{value}) or https://")
    return value


class DataConfig(_Slice):
    uri: str = Field(
        "data/quickstart-wordlang", description="shard set: a directory or s3://bucket/prefix"
    )
    episode: Literal["regression", "lm", "classify"] = Field(
        "lm", description="episode type: K-shot regression, byte-level LM, or N-way classification"
    )
    k_support: int = Field(16, gt=0, description="support examples per task (K shots)")
    k_query: int = Field(16, gt=0, description="query examples per task, disjoint from support")
    n_way: int = Field(5, ge=2, description="classes per classification episode")
    max_len: int = Field(
        32, gt=1, description="bytes per sequence incl. BOS/EOS; longer words are cut"
    )
    s3_endpoint: str | None = Field(
        None, description="endpoint override for S3-compatible stores (else AWS_ENDPOINT_URL)"
    )

    @field_validator("s3_endpoint")
    @classmethod
    def _scheme(cls, v: str | None) -> str | None:
        return _endpoint(v, "data.s3_endpoint")


class ModelConfig(_Slice):
    kind: Literal["mlp", "gru", "lstm"] = Field(
        "gru", description="mlp for sinusoid, gru/lstm for bytes"
    )
    hidden: int = Field(128, gt=0, description="recurrent hidden size (or MLP width)")
    layers: int = Field(1, gt=0, description="recurrent layers (or MLP hidden layers)")
    embed: int = Field(32, gt=0, description="byte embedding size")
    vocab: int = Field(259, gt=3, description="256 byte values + BOS, EOS, PAD")


class InnerConfig(_Slice):
    algorithm: Literal["maml", "fomaml", "metasgd", "anil", "reptile"] = Field(
        "maml", description="meta-learning algorithm; selects inner and outer behaviour"
    )
    steps: int = Field(1, ge=0, description="inner gradient steps per task")
    lr: float = Field(0.01, gt=0, description="inner learning rate (initial value for Meta-SGD)")
    first_order: bool = Field(
        False, description="drop second-order terms (implied by fomaml and reptile)"
    )
    lr_shape: Literal["param", "tensor"] = Field(
        "param",
        description="Meta-SGD's learned lrs: one per parameter, or one per tensor (MAML++ LSLR)",
    )
    lr_max: float | None = Field(
        None,
        gt=0,
        description="Meta-SGD: cap on every learned inner lr (large learned rates overshoot "
        "on a second step on tasks unlike the training ones); None: no cap",
    )
    max_step_norm: float | None = Field(
        None,
        gt=0,
        description="trust region: each task's inner step (all adapted tensors, after the "
        "lrs) shrunk to at most this L2 norm, in training and at adaptation; None: off",
    )
    step_schedule: tuple[int, ...] = Field(
        (),
        description="inner steps per meta-step, cycled (e.g. [1, 2, 5]: train for the step "
        "counts users evaluate at); empty: always `steps`",
    )
    learn_init: bool = Field(
        True,
        description="meta-train the initialisation; false: only Meta-SGD's inner lrs are "
        "learned (on top of a pretrained init, `checkpoint.init_from`)",
    )
    pre_weight: float = Field(
        0.0,
        ge=0,
        description="weight of the query loss BEFORE adaptation in the outer loss: keeps the "
        "meta-init a usable model at step 0",
    )
    init_objective: Literal["meta", "multitask"] = Field(
        "meta",
        description="what trains the init (with learn_init): meta: the meta-gradient (plus "
        "pre_weight x the pre-adaptation loss); multitask: the multitask loss on every word "
        "of each episode (support and query) alone, so the init keeps training as a multitask "
        "model does while Meta-SGD's lrs learn from the meta-gradient (use outer.lrs_lr)",
    )

    @model_validator(mode="after")
    def _init_objective_fits(self) -> InnerConfig:
        if self.init_objective == "multitask" and (
            self.algorithm != "metasgd" or not self.learn_init
        ):
            raise ValueError(
                f"inner.init_objective='multitask' with inner.algorithm={self.algorithm!r}, "
                f"inner.learn_init={self.learn_init}: it trains the init on the multitask loss "
                "and leaves the meta-gradient only Meta-SGD's inner lrs to learn; use "
                "inner.algorithm=metasgd with inner.learn_init=true, or init_objective=meta"
            )
        if self.init_objective == "multitask" and self.pre_weight:
            raise ValueError(
                f"inner.pre_weight={self.pre_weight} with inner.init_objective='multitask': the "
                "init is already trained on the loss before adaptation alone; set pre_weight=0"
            )
        return self


class OuterConfig(_Slice):
    optimizer: Literal["adam", "sgd"] = Field("adam", description="outer (meta) optimizer")
    lr: float = Field(1e-3, gt=0, description="outer learning rate")
    lrs_lr: float | None = Field(
        None,
        gt=0,
        description="outer learning rate of Meta-SGD's learned inner lrs (None: outer.lr); "
        "lets the init train slowly (inner.learn_init) while the lrs move fast",
    )
    meta_batch: int = Field(25, gt=0, description="tasks per meta-step, across all workers")
    steps: int = Field(1000, gt=0, description="meta-steps to train")
    chunk: int | None = Field(None, gt=0, description="tasks per vmap call; bounds memory")
    task_threads: int = Field(
        1,
        gt=0,
        description="run a meta-step's task groups on this many Python threads at once (CPU: "
        "a recurrent model's small per-time-step ops gain little from torch's own threads; "
        "set it to the worker's CPUs); memory grows with the groups in flight",
    )
    val_every: int = Field(100, gt=0, description="meta-steps between validations")
    val_tasks: int = Field(32, gt=0, description="val tasks per validation")
    seed: int = Field(0, description="seeds episodes, init and everything random")
    grad_clip: float | None = Field(None, gt=0, description="clip the meta-gradient norm")
    early_stop_patience: int | None = Field(
        None, gt=0, description="stop after this many validations without a new best val loss"
    )
    val_support_floor: bool = Field(
        True,
        description="language models: score validation (checkpoint selection, early stopping) "
        "under the floor fitted on each task's support words, as `metaray evaluate` scores "
        "by default; false: the plain softmax",
    )


class ClusterConfig(_Slice):
    address: str | None = Field(
        None, description="Ray address; None: RAY_ADDRESS or embedded local Ray"
    )
    num_workers: int = Field(1, gt=0, description="Ray Train workers")
    use_gpu: bool = Field(False, description="one GPU per worker")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per worker")
    threads_per_worker: int | None = Field(None, gt=0, description="torch threads; None: from CPUs")
    malloc_reuse_mb: int = Field(
        256,
        ge=0,
        description="glibc: blocks up to this many MiB are reused from the heap instead of "
        "mapped afresh each meta-step (no page faults per step); 0: glibc's defaults",
    )
    episode_actors: int = Field(
        1,
        ge=0,
        description="episode-generator actors; 0: each Train worker builds its own episodes "
        "in-process (same batches, no actor processes: for single-node runs and sweeps on small "
        "data); actors pay off when episode generation is heavy or the data is remote",
    )
    prefetch: int = Field(2, gt=0, description="episode requests in flight per trainer rank")
    episodes_per_request: int = Field(
        256, gt=0, description="episodes per actor call: cheap steps are fetched several at once"
    )
    episode_actor_cpus: float = Field(
        0.0, ge=0, description="CPUs reserved per episode actor (0: share the trainers' CPUs)"
    )
    report_every: int = Field(1, gt=0, description="meta-steps between ray.train.report calls")
    report_min_s: float = Field(
        2.0, ge=0, description="min seconds between metric-only reports (Train polls every 2 s)"
    )
    node_wait_s: float = Field(
        600.0,
        gt=0,
        description="seconds a run waits for its workers to be placed (at start, or after a "
        "node is lost) before it stops with its checkpoints kept",
    )


class CheckpointConfig(_Slice):
    storage: str = Field("runs", description="directory or s3:// prefix for run checkpoints")
    run_name: str = Field("metaray", description="same name + storage resumes the run")
    every: int = Field(100, gt=0, description="meta-steps between checkpoints")
    max_failures: int = Field(1, ge=0, description="worker failures survived by restoring")
    select: Literal["best_val", "last"] = Field(
        "best_val",
        description="the run's model: its best on validation (val_loss_post) or its last step",
    )
    init_from: str | None = Field(
        None, description="start from these parameters: a checkpoint/run dir, s3://, .safetensors"
    )
    resume_from: str | None = Field(
        None, description="a checkpoint to resume (state, step, RNG) when the run has none yet"
    )


class TrackingConfig(_Slice):
    enabled: bool = Field(True, description="log to MLflow")
    uri: str | None = Field(None, description="None: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    experiment: str = Field("metaray", description="MLflow experiment name")
    register_as: str | None = Field(None, description="register the final model under this name")
    parent_run_id: str | None = Field(
        None, description="MLflow run this run nests under (set by `metaray tune` per trial)"
    )
    flush_timeout_s: float = Field(
        10.0,
        ge=0,
        description="seconds end() waits on an unreachable server before spilling to disk",
    )
    buffer_dir: str | None = Field(
        None,
        description="where an unsent tracking buffer is spilled (None: mlflow-buffer/ under "
        "the directory metaray was started in)",
    )

    def spill_dir(self) -> str:
        """`buffer_dir`, else METARAY_TRACKING_BUFFER_DIR, else `mlflow-buffer` (the driver
        makes it absolute before the config travels, so workers spill where it started)."""
        return self.buffer_dir or os.environ.get("METARAY_TRACKING_BUFFER_DIR") or "mlflow-buffer"


class BankConfig(_Slice):
    enabled: bool = Field(False, description="write adapted parameters to the memory bank")
    name: str = Field("metaray-bank", description="named Ray actor shared by all jobs")
    namespace: str = Field("metaray", description="Ray namespace of the bank actor")
    capacity: int = Field(10_000, gt=0, description="entries before eviction")
    eviction: Literal["lru", "worst_loss"] = Field("lru", description="which entry goes first")
    threshold: float = Field(
        0.83,
        ge=-1,
        le=2,
        description="similarity (`similarity`) at which a stored task counts as related (the "
        "novelty decision; a start with select=similarity or probe_gate); chosen on training "
        "languages, byte n-grams (bench/RESULTS.md, bank regret)",
    )
    similarity: Literal["raw", "calibrated"] = Field(
        "calibrated",
        description="threshold on the raw cosine (grows with the support size) or on the cosine "
        "corrected for each side's sampling noise (means the same at every K)",
    )
    attenuation_power: float = Field(
        0.55,
        ge=0,
        le=2,
        description="calibrated similarity = cosine / (reliability product) ** this; fitted "
        "on training languages so that the similarity does not drift with K",
    )
    top_k: int = Field(3, gt=0, description="neighbours considered (blended or probed)")
    blend: Literal["nearest", "weighted"] = Field("nearest", description="how neighbours combine")
    select: Literal["similarity", "probe"] = Field(
        "probe",
        description="start from the `blend` of the hits, or from whichever of the meta-init, "
        "each hit and their blend has the lowest support loss after `probe_steps` (the probe)",
    )
    probe_steps: int | tuple[int, ...] = Field(
        1,
        description="inner steps in the probe (0: step-0 support loss); a list, e.g. [1, 2, 5]: "
        "the mean support loss after each count (a start that is good after one step but "
        "diverges by the fifth then loses)",
    )

    @field_validator("probe_steps")
    @classmethod
    def _steps_ascending(cls, v: int | tuple[int, ...]) -> int | tuple[int, ...]:
        counts = (v,) if isinstance(v, int) else v
        if not counts or min(counts) < 0 or list(counts) != sorted(set(counts)):
            raise ValueError(f"{v}: give a step count >= 0, or ascending distinct ones")
        return v

    probe_split: bool = Field(
        False,
        description="true: score each candidate on support examples it was not adapted on "
        "(even/odd halves, both ways); false: adapt on the whole support and score its loss "
        "there, as the task itself will be adapted (lower regret on training languages at K=8: "
        "bench/RESULTS.md, the probe on the whole support)",
    )
    fallback: bool = Field(
        True,
        description="run the meta-init's trajectory beside each warm start; at each step count "
        "a task whose warm start has the higher loss on its own support words continues from "
        "the meta-init's instead (a warm-started batch is adapted as twice as many tasks; "
        "it keeps a far entry that diverges from ending worse: bench/RESULTS.md, fallback)",
    )
    probe_gate: bool = Field(
        False,
        description="probe only the hits that clear `threshold` (else all top_k: lower regret "
        "on training languages; the meta-init is always probed, yet a far entry that probes "
        "well can still end worse after 5 steps: bench/RESULTS.md, bank on the recipe)",
    )
    snapshot_uri: str | None = Field(None, description="directory or s3:// prefix for snapshots")
    dtype: Literal["float32", "float16"] = Field(
        "float16",
        description="stored parameters: float16 deltas from the bank's base (the meta-init of "
        "its first put; half the bytes, exact up to the delta's float16 rounding) or float32 "
        "values (bit-exact)",
    )
    param_cache_mb: float = Field(
        256,
        ge=0,
        description="bytes (MiB) of parameter rows a bank with a snapshot_uri keeps in memory "
        "(LRU; the rest stay on disk, read on a hit); 256 MiB = ~1,280 float16 meta-RNN entries",
    )
    s3_endpoint: str | None = Field(
        None, description="endpoint override for an s3:// snapshot_uri (else AWS_ENDPOINT_URL)"
    )

    @field_validator("s3_endpoint")
    @classmethod
    def _scheme(cls, v: str | None) -> str | None:
        return _endpoint(v, "bank.s3_endpoint")

    wal: bool = Field(
        True, description="write-ahead log each put before acking (needs snapshot_uri): no loss"
    )
    snapshot_every: int = Field(100, gt=0, description="put batches between automatic snapshots")
    max_in_flight: int = Field(4, gt=0, description="bank writes a trainer keeps outstanding")
    write_every: int = Field(20, gt=0, description="meta-steps between a trainer's bank writes")
    descriptor: Literal["auto", "hidden", "grad", "hidden+grad", "ngram"] = Field(
        "auto",
        description="task descriptor: auto (ngram for bytes, hidden for regression), "
        "model hidden state, head-bias gradient, or byte n-grams",
    )
    ann_min_entries: int | None = Field(
        50_000,
        gt=0,
        description="entries from which queries use the HNSW index (usearch) instead of exact "
        "search (exact is faster below; bench/RESULTS.md); null: always exact",
    )


class RunConfig(_Slice):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    inner: InnerConfig = InnerConfig()
    outer: OuterConfig = OuterConfig()
    cluster: ClusterConfig = ClusterConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    tracking: TrackingConfig = TrackingConfig()
    bank: BankConfig = BankConfig()

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        if self.outer.meta_batch % self.cluster.num_workers:
            raise ValueError(
                f"outer.meta_batch={self.outer.meta_batch} is not divisible by "
                f"cluster.num_workers={self.cluster.num_workers}: each worker takes an equal "
                "slice of the meta-batch; pick a meta_batch that is a multiple of num_workers"
            )
        if (self.model.kind == "mlp") != (self.data.episode == "regression"):
            raise ValueError(
                f"model.kind={self.model.kind!r} does not fit data.episode={self.data.episode!r}: "
                "use model.kind=mlp with regression and gru/lstm with lm or classify"
            )
        return self


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, path + "."))
        else:
            out[path] = value
    return out


def valid_keys(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[str]:
    keys: list[str] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(valid_keys(ann, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _check_keys(tree: dict[str, Any], source: str) -> None:
    known = set(valid_keys())
    sections = {k.split(".")[0] for k in known}
    for key in _flatten(tree):
        if key in known:
            continue
        if key in sections:
            raise ConfigError(f"{source}: '{key}' is a section; give it keys, e.g. {key}.<name>")
        hint = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.5)
        suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
        raise ConfigError(f"{source}: unknown key '{key}'{suggestion}")


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is a value, not a section")
        node = child
    node[leaf] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """`["inner.lr=0.05", "data.uri=s3://b/p"]` -> nested dict; values parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' is not of the form section.key=value")
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw.strip() else None)
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML would keep the last)."""


def _no_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(
                f"line {key_node.start_mark.line + 1}: key {key!r} is given twice in the same "
                f"mapping (first on line {seen[key]}); keep one"
            )
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"config {p} is a directory: give a YAML file, e.g. {p}/<name>.yaml")
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
        tree = yaml.load(text, Loader=_UniqueKeyLoader)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from exc
    if tree is None:
        raise ConfigError(
            f"{p} is empty (or only comments): a run needs at least data.uri; start from "
            "configs/quickstart.yaml"
        )
    if not isinstance(tree, dict):
        raise ConfigError(
            f"{p}: the top level must be a mapping of sections, got {type(tree).__name__}"
        )
    return tree


def _explain(exc: ValidationError, source: str, tree: dict[str, Any]) -> ConfigError:
    flat = _flatten(tree)
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "finite_number":
            msg += " (inf and nan are refused)"
        if key in flat:
            lines.append(f"{source}: {key}={flat[key]!r}: {msg}")
        elif key:
            lines.append(f"{source}: {key}: {msg}")
        else:
            lines.append(f"{source}: {err['msg'].removeprefix('Value error, ')}")
    return ConfigError("\n".join(lines))


def from_dict(tree: dict[str, Any], source: str = "config") -> RunConfig:
    _check_keys(tree, source)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        raise _explain(exc, source, tree) from None


def load(
    path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None
) -> RunConfig:
    """Read `path` (optional), apply dotted overrides, validate everything."""
    tree = read_yaml(path) if path else {}
    source = str(path) if path else "defaults"
    if path:
        _check_keys(tree, source)
    extra = parse_overrides(overrides or [])
    _check_keys(extra, "command line")
    if overrides:
        source = f"{source} + overrides"
    return from_dict(_merge(tree, extra), source)


def with_overrides(cfg: RunConfig, overrides: list[str], source: str) -> RunConfig:
    """`cfg` (e.g. a checkpoint's) with dotted command-line overrides, validated again."""
    extra = parse_overrides(overrides)
    _check_keys(extra, "command line")
    return from_dict(_merge(to_dict(cfg), extra), source)


def to_dict(cfg: BaseModel) -> dict[str, Any]:
    return cfg.model_dump(mode="json")


def to_yaml(cfg: BaseModel) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def flat_params(cfg: RunConfig) -> dict[str, Any]:
    """Flattened `section.key -> value`, the form logged as MLflow params."""
    return _flatten(to_dict(cfg))
