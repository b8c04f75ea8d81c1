"""The descriptor map: PCA coordinates, language lookup of task keys, and the PNG that
`metaray bank inspect --plot` writes (MLflow logging: tests/integration/test_bank_plot.py)."""

import json
import struct
from pathlib import Path

import numpy as np

from pipeline.bank import descriptor_map as dm
from pipeline.bank.service import BankService
from pipeline.cli import main
from pipeline.config import BankConfig


def seed_language_bank(uri: str) -> dict[str, np.ndarray]:
    """Six languages in two clear clusters of descriptors (Latin vs Cyrillic)."""
    rng = np.random.default_rng(0)
    centre = {"Latn": rng.normal(size=16), "Cyrl": rng.normal(size=16)}
    keys = {"en": "Latn", "de": "Latn", "fr": "Latn", "ru": "Cyrl", "bg": "Cyrl", "uk": "Cyrl"}
    desc = {k: centre[s] + 0.05 * rng.normal(size=16) for k, s in keys.items()}
    bank = BankService(BankConfig(snapshot_uri=uri))
    bank.put(
        {
            "keys": list(desc),
            "descriptor": np.stack(list(desc.values())).astype(np.float32),
            "params": np.zeros((len(desc), 3), np.float32),
        }
    )
    bank.snapshot()
    return desc


def png_size(path) -> tuple[int, int]:
    head = Path(path).read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", head[16:24])


def test_pca_separates_the_two_clusters_on_the_first_axis(tmp_path):
    desc = seed_language_bank(str(tmp_path / "bank"))
    xy = dm.pca2(np.stack(list(desc.values())))
    first = dict(zip(desc, xy[:, 0], strict=True))
    latin, cyrillic = [first[k] for k in ("en", "de", "fr")], [first[k] for k in ("ru", "bg", "uk")]
    assert max(latin) < min(cyrillic) or max(cyrillic) < min(latin)
    assert dm.pca2(np.ones((1, 4))).shape == (1, 2)


def test_task_keys_map_to_language_codes():
    assert [dm.code_of(k) for k in ("en", "wordlang/de", "fr+it", "ru:3")] == [
        "en",
        "de",
        "fr",
        "ru",
    ]


def test_inspect_plot_writes_the_map(tmp_path, capsys):
    uri, png = str(tmp_path / "bank"), tmp_path / "map.png"
    seed_language_bank(uri)
    args = ["bank", "inspect", "--uri", uri, "--plot", str(png), "--json", "tracking.enabled=false"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["plot"] == {"png": str(png), "run_id": None}
    width, height = png_size(png)
    assert width > 1500 and height > 500  # three readable panels side by side


def test_plot_of_an_empty_bank_is_a_clear_error(tmp_path, capsys):
    uri = str(tmp_path / "bank")
    BankService(BankConfig(snapshot_uri=uri)).snapshot()
    assert main(["bank", "inspect", "--uri", uri, "--plot", str(tmp_path / "m.png")]) == 1
    assert "the bank is empty" in capsys.readouterr().err
