"""`metaray bank inspect|export|import|clear` against a snapshot URI (no Ray)."""

import json

import numpy as np

from pipeline.bank.service import BankService
from pipeline.cli import main
from pipeline.config import BankConfig


def _seed_bank(uri: str) -> None:
    bank = BankService(BankConfig(snapshot_uri=uri))
    d = np.eye(4, 8, dtype=np.float32)
    d[1, 0] = 3.0  # task-1 leans towards task-0
    bank.put(
        {
            "keys": [f"task-{i}" for i in range(4)],
            "descriptor": d,
            "params": np.ones((4, 5), np.float32),
            "loss": [0.1, 0.2, 0.3, 0.4],
        }
    )
    bank.snapshot()


def test_inspect_shows_entries_and_nearest_neighbours(tmp_path, capsys):
    uri = str(tmp_path / "bank")
    _seed_bank(uri)
    assert (
        main(["bank", "inspect", "--uri", uri, "--neighbours", "task-0", "-k", "2", "--json"]) == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["stats"]["entries"] == 4 and out["stats"]["capacity"] == 10_000
    assert out["neighbours"][0][0] == "task-1"
    assert out["neighbours"][0][1] > 0.9


def test_export_import_clear_round_trip(tmp_path, capsys):
    uri, dest, other = (str(tmp_path / n) for n in ("bank", "exported", "other"))
    _seed_bank(uri)
    assert main(["bank", "export", "--uri", uri, dest]) == 0
    BankService(BankConfig(snapshot_uri=other)).snapshot()  # an empty bank to import into
    assert main(["bank", "import", "--uri", other, dest]) == 0
    assert "imported 4 entries" in capsys.readouterr().out
    assert len(BankService(BankConfig(snapshot_uri=other)).index) == 4
    assert main(["bank", "clear", "--uri", other]) == 1  # refuses without --yes
    assert "--yes" in capsys.readouterr().err
    assert main(["bank", "clear", "--uri", other, "--yes"]) == 0
    assert len(BankService(BankConfig(snapshot_uri=other)).index) == 0


def test_missing_snapshot_is_a_clear_error(tmp_path, capsys):
    assert main(["bank", "inspect", "--uri", str(tmp_path / "nothing")]) == 1
    assert "no bank snapshot or WAL under" in capsys.readouterr().err
