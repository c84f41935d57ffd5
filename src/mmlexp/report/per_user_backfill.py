"""``python -m mmlexp.report.per_user_backfill``: the per-user metrics file of a run that finished without one.

The model is rebuilt from the config stored in ``best.pt`` (dataset, encoder; under ``eval.selection=valid``
on the same train slice as in training: ``mmlexp.data.splits.holdout`` is seeded), its weights loaded, and
``per_user.csv.gz`` (:mod:`mmlexp.evaluation.per_user`) written. The per-user means must equal the
checkpoint's ``recall@K`` / ``ndcg@K`` within ``--tolerance`` (a check that the data is the run's); with
``--tracking-uri`` and ``--run-id`` the file is also logged as that run's artifact (a finished run too).
Bad input is an error naming the value, exit status 2.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from mmlexp.evaluation.per_user import PER_USER_FILE, mismatches, per_user_metrics, saved_ks, write_per_user

PROG = "python -m mmlexp.report.per_user_backfill"


class BackfillError(Exception):
    """Bad input: the message names the value."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Rebuild the model of a finished run from its best.pt and write its per-user Recall@K / "
        "NDCG@K on the test split (per_user.csv.gz); with --tracking-uri and --run-id, also log it as the "
        "run's artifact. The means must equal the checkpoint's metrics (--tolerance).",
    )
    p.add_argument("--checkpoint", required=True, metavar="BEST_PT", help="a run's best.pt (<run dir>/best.pt)")
    p.add_argument("--out", metavar="PATH", help=f"file to write (default: {PER_USER_FILE} beside the checkpoint)")
    p.add_argument("--data-dir", help="folder of the raw datasets (default: $MMLEXP_DATA_DIR, else the user data dir)")
    p.add_argument("--device", default="cpu", help="device to score on (default: cpu)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest |mean - logged| allowed (default 1e-4)")
    p.add_argument("--tracking-uri", help="MLflow store of the run (with --run-id: log the file as its artifact)")
    p.add_argument("--run-id", help="the MLflow run of the checkpoint")
    return p


def read_checkpoint(path: Path) -> dict[str, Any]:
    """``best.pt`` as ``train`` wrote it: state_dict, config (YAML), metrics."""
    from mmlexp.checkpoint import load_checkpoint

    if not path.is_file():
        raise BackfillError(f"--checkpoint {path}: no such file")
    try:
        ckpt = load_checkpoint(path)
    except Exception as err:
        raise BackfillError(f"--checkpoint {path}: cannot be read ({type(err).__name__}: {str(err)[:200]})") from err
    if not isinstance(ckpt, dict) or not {"state_dict", "config", "metrics"} <= set(ckpt):
        raise BackfillError(f"--checkpoint {path}: not a best.pt written by training (state_dict, config, metrics)")
    return ckpt


def rebuild(cfg: DictConfig, state: dict, data_dir: str | None, device: str):
    """(model with ``state`` loaded, data) from the run's resolved config; the encoder sees the train split it
    trained on (``holdout`` under ``eval.selection=valid``)."""
    from mmlexp.config import ConfigError, allowed_targets, build
    from mmlexp.data import DataError, holdout, load_dataset

    try:
        options = OmegaConf.to_container(cfg.dataset, resolve=True)
        data = load_dataset(
            cfg.dataset.name,
            path=cfg.dataset.get("path"),
            data_dir=data_dir,
            download=cfg.dataset.get("download", True),
            options=options,
        )
        fit_train = data.train
        if str(cfg.eval.get("selection", "paper")) == "valid":
            fit_train = holdout(data.train, cfg.eval.valid_fraction, cfg.eval.valid_seed)[0]
        model = build(
            "encoder", cfg.encoder, allowed_targets(cfg), n_users=data.n_users, n_items=data.n_items, train=fit_train
        )
    except (DataError, ConfigError, OSError) as err:
        raise BackfillError(f"dataset {cfg.dataset.name!r} (--data-dir {data_dir}): {err}") from err
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise BackfillError(
            f"the checkpoint's weights do not fit dataset {data.name!r} ({data.n_users} users, {data.n_items} "
            f"items; --data-dir {data_dir}): {str(err).strip().splitlines()[-1].strip()[:300]}"
        ) from err
    return model.to(device).eval(), data


def find_run(uri: str, run_id: str) -> tuple[Any, Any]:
    """The MLflow client of store ``uri`` (an existing one) and its run ``run_id``."""
    from mmlexp.report.runs import ReportError, client_for

    try:
        client = client_for(uri)
        return client, client.get_run(run_id)
    except ReportError as err:
        raise BackfillError(str(err)) from err
    except Exception as err:
        raise BackfillError(f"--run-id {run_id}: no such run in --tracking-uri {uri}") from err


def check_run(run, data, metrics: dict) -> None:
    """``run`` is the checkpoint's: its ``dataset.*`` tags are ``data``'s fingerprint, its ``best/`` metrics
    the checkpoint's."""
    run_id, tags, logged = run.info.run_id, run.data.tags, run.data.metrics
    differ = [k for k, v in data.fingerprint().items() if f"dataset.{k}" in tags and tags[f"dataset.{k}"] != str(v)]
    if differ:
        raise BackfillError(f"--run-id {run_id}: its dataset differs from {data.name!r} in {', '.join(differ)}")
    for key, value in metrics.items():
        name = "best/" + key.replace("@", "_at_")
        if name in logged and abs(logged[name] - float(value)) > 1e-12:
            raise BackfillError(f"--run-id {run_id}: its {name} {logged[name]} is not the checkpoint's {value}")


def backfill(args: argparse.Namespace) -> Path:
    """Rebuild, score, check against the checkpoint's metrics (and the run's), write (and log); returns the file."""
    checkpoint = Path(args.checkpoint)
    ckpt = read_checkpoint(checkpoint)
    client, run = find_run(args.tracking_uri, args.run_id) if args.run_id else (None, None)
    cfg = OmegaConf.create(ckpt["config"])
    assert isinstance(cfg, DictConfig)
    model, data = rebuild(cfg, ckpt["state_dict"], args.data_dir, args.device)
    if run is not None:
        check_run(run, data, ckpt["metrics"])
    with torch.no_grad():
        user_emb, item_emb = model.all_embeddings()
    frame = per_user_metrics(
        user_emb, item_emb, data.train, data.test, saved_ks(cfg.eval.ks), chunk_size=cfg.eval.get("chunk_size")
    )
    wrong = mismatches(frame, ckpt["metrics"], args.tolerance)
    if wrong:
        raise BackfillError(
            f"--checkpoint {checkpoint} on dataset {data.name!r} (--data-dir {args.data_dir}): "
            + "; ".join(wrong)
            + f" (--tolerance {args.tolerance}): not the data or weights of the run"
        )
    out = write_per_user(frame, Path(args.out) if args.out else checkpoint.with_name(PER_USER_FILE))
    if client is not None:
        with tempfile.TemporaryDirectory() as tmp:  # the artifact's name is the file's
            shutil.copyfile(out, Path(tmp) / PER_USER_FILE)
            client.log_artifact(args.run_id, str(Path(tmp) / PER_USER_FILE))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if bool(args.tracking_uri) != bool(args.run_id):
            raise BackfillError("--tracking-uri and --run-id go together (log to that run), or neither")
        if args.out and not Path(args.out).resolve().parent.is_dir():
            raise BackfillError(f"--out {args.out}: folder {Path(args.out).resolve().parent} does not exist")
        out = backfill(args)
    except BackfillError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    print(f"per-user metrics written to {out}" + (f" and logged to run {args.run_id}" if args.run_id else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
