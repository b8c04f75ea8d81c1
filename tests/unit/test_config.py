"""Config loading: YAML + overrides, unknown keys with suggestions, rules checked up front."""

import pytest

from pipeline import config
from pipeline.config import ConfigError


def test_overrides_apply_over_yaml_and_parse_as_yaml_scalars(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("inner:\n  lr: 0.5\n  steps: 3\ndata:\n  uri: data/x\n")
    cfg = config.load(f, ["inner.lr=0.05", "data.uri=s3://bucket/prefix", "inner.first_order=true"])
    assert cfg.inner.lr == 0.05
    assert cfg.inner.steps == 3
    assert cfg.inner.first_order is True
    assert cfg.data.uri == "s3://bucket/prefix"


def test_unknown_key_suggests_the_nearest_valid_one(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("inner:\n  learning_rate: 0.5\n")
    with pytest.raises(ConfigError, match=r"run.yaml: unknown key 'inner.learning_rate'"):
        config.load(f)
    with pytest.raises(ConfigError, match=r"did you mean 'outer.meta_batch'"):
        config.load(None, ["outer.metabatch=4"])


def test_negative_learning_rate_names_key_value_and_rule():
    with pytest.raises(ConfigError, match=r"inner.lr=-0.1: Input should be greater than 0"):
        config.load(None, ["inner.lr=-0.1"])


def test_zero_episode_actors_means_in_worker_episodes_and_negative_is_refused():
    assert config.load(None, ["cluster.episode_actors=0"]).cluster.episode_actors == 0
    with pytest.raises(
        ConfigError, match=r"cluster.episode_actors=-1: Input should be greater than or equal to 0"
    ):
        config.load(None, ["cluster.episode_actors=-1"])
    why = config.ClusterConfig.model_fields["episode_actors"].description
    assert "0: each Train worker builds its own episodes" in why


def test_zero_tasks_rejected():
    with pytest.raises(ConfigError, match=r"outer.meta_batch=0"):
        config.load(None, ["outer.meta_batch=0"])


def test_meta_batch_must_divide_across_workers():
    with pytest.raises(
        ConfigError, match=r"meta_batch=25 is not divisible by cluster.num_workers=2"
    ):
        config.load(None, ["outer.meta_batch=25", "cluster.num_workers=2"])
    assert (
        config.load(None, ["outer.meta_batch=24", "cluster.num_workers=2"]).outer.meta_batch == 24
    )


def test_model_must_fit_episode_type():
    with pytest.raises(ConfigError, match=r"model.kind='mlp' does not fit data.episode='lm'"):
        config.load(None, ["model.kind=mlp"])


def test_missing_file_and_bad_yaml_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"nope.yaml does not exist"):
        config.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("inner: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML"):
        config.load(bad)


def test_slices_are_frozen():
    cfg = config.load()
    with pytest.raises(Exception, match="frozen"):
        cfg.inner.lr = 1.0  # type: ignore[misc]


def test_round_trip_through_yaml(tmp_path):
    cfg = config.load(None, ["inner.algorithm=metasgd", "outer.steps=7"])
    f = tmp_path / "resolved.yaml"
    f.write_text(config.to_yaml(cfg))
    assert config.load(f) == cfg
    assert config.flat_params(cfg)["inner.algorithm"] == "metasgd"
