"""Exporting a store into a results folder that already holds committed runs keeps the committed runs the store
does not have (with their per-epoch files): a newer store, or another machine's, never loses what is committed; a
run the store deleted (MLflow's soft delete) leaves."""

import shutil

import pandas as pd
from mlflow.tracking import MlflowClient

from mmlexp.report.__main__ import main
from mmlexp.report.export import read_runs
from tests.conftest import EXPERIMENT

EXTRA = "f" * 32


def exported(store, tmp_path) -> tuple[list[str], object]:
    uri, _ = store
    base = ["--tracking-uri", uri, "--experiment", EXPERIMENT, "--out", str(tmp_path), "--name", "tiny"]
    assert main([*base, "--export-csv"]) == 0
    return [*base, "--export-csv"], tmp_path / "tiny"


def add_committed_run(folder, with_file: bool = True) -> pd.Series:
    """A run of another store: the first row again with another run id and seed, and its per-epoch CSV."""
    runs = pd.read_csv(folder / "runs.csv", dtype={"run_id": str})
    row = runs.iloc[0].copy()
    row["run_id"], row["seed"], row["epochs_csv"] = EXTRA, 9, "epochs/elsewhere-seed9.csv"
    if with_file:
        shutil.copyfile(folder / runs.iloc[0]["epochs_csv"], folder / row["epochs_csv"])
    pd.concat([runs, row.to_frame().T]).to_csv(folder / "runs.csv", index=False)
    return row


def test_export_keeps_the_committed_runs_the_store_lacks(store, tmp_path):
    args, folder = exported(store, tmp_path)
    row = add_committed_run(folder)
    epochs_bytes = (folder / row["epochs_csv"]).read_bytes()
    assert main(args) == 0
    runs = read_runs(folder / "runs.csv")
    assert len(runs) == 9 and EXTRA in set(runs["run_id"])
    kept = runs.set_index("run_id").loc[EXTRA]
    assert kept["seed"] == 9 and kept["recall@20"] == row["recall@20"]
    assert (folder / row["epochs_csv"]).read_bytes() == epochs_bytes
    assert EXTRA[:8] in (folder / "report.md").read_text()
    once = {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert main(args) == 0  # exporting again changes nothing
    assert {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == once


def test_an_incomplete_committed_folder_is_an_error_and_is_left_alone(store, tmp_path, capsys):
    args, folder = exported(store, tmp_path)
    add_committed_run(folder, with_file=False)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert main(args) == 2
    assert "elsewhere-seed9.csv" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def test_a_run_the_store_deleted_leaves_the_committed_folder(store, tmp_path):
    _, db_folder = store
    shutil.copyfile(f"{db_folder}/mlflow.db", tmp_path / "mlflow.db")  # the shared store stays as it is
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    base = ["--tracking-uri", uri, "--experiment", EXPERIMENT, "--out", str(tmp_path / "out"), "--name", "tiny"]
    assert main([*base, "--export-csv"]) == 0
    folder = tmp_path / "out" / "tiny"
    row = add_committed_run(folder)  # another machine's run: not in this store, so it stays
    gone = pd.read_csv(folder / "runs.csv", dtype={"run_id": str}).iloc[1]
    MlflowClient(uri).delete_run(gone["run_id"])
    assert main([*base, "--export-csv"]) == 0
    runs = read_runs(folder / "runs.csv")
    assert len(runs) == 8 and gone["run_id"] not in set(runs["run_id"]) and EXTRA in set(runs["run_id"])
    assert not (folder / gone["epochs_csv"]).exists() and (folder / row["epochs_csv"]).is_file()
    assert gone["run_id"][:8] not in (folder / "report.md").read_text()
