"""Bad input, counted (issue 31): one catalogue of bad inputs to the config, the data files, the reproduction plans
and the stores. Each goes through the real entrypoint (``python -m mmlexp`` or ``python -m mmlexp.reproduce``, in
this process: ``main()`` with its arguments) and must end with exit 2, a message naming the key or file and what is
allowed, and nothing written: the test's folder holds the same files, byte for byte, before and after, except the
record Hydra itself keeps of a command in its run directory (``.hydra/``, the log). ``docs/bad-inputs.md`` is
generated from ``CASES`` (``scripts/docs_bad_inputs.py``)."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from mmlexp.reproduce.plan import plan_path, read_mapping

WHERE = ("config", "data", "plan", "store")
GOWALLA_STEPS = len(read_mapping(plan_path("gowalla"))["steps"])  # the shipped plan's, named by a refusal
SHIPPED_PLANS = ", ".join(sorted(p.stem for p in plan_path("gowalla").parent.glob("*.yaml")))  # listed by a refusal
READ_ONLY = "/proc/sys/mmlexp-test"  # a folder nobody may create, root included (a read-only mount)
MML_SEARCH = ("-m", "hparams_search=mml_optuna", "hydra.sweeper.n_trials=2")


@dataclass(frozen=True)
class Case:
    """A bad input: ``args`` of ``command`` (``{tmp}``: the test's folder, where ``files`` are written first), the
    fragments the message ``says`` (all of them), and the environment it runs in."""

    id: str
    where: str
    args: tuple[str, ...]
    says: tuple[str, ...]
    command: str = "mmlexp"  # or "reproduce"
    files: tuple[tuple[str, str | bytes], ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    unset: tuple[str, ...] = ()  # keys of ``base_args`` left out: the case's config files set them (argv would win)


def c(id: str, where: str, args: str | tuple[str, ...], *says: str, **kw) -> Case:
    return Case(id, where, (args,) if isinstance(args, str) else args, says, **kw)


PLAN = "in/plan.yaml"
ONE_STEP = "dataset: sample\nsteps:\n  - {loss: mml, negatives: 10}\n"


def data_case(id: str, name: str, content: str | bytes, *says: str, args: tuple[str, ...] = ()) -> Case:
    """A ``dataset=interactions`` case: ``content`` written to ``in/<name>``."""
    path_arg = f"dataset.path={{tmp}}/in/{name}"
    return Case(id, "data", ("dataset=interactions", path_arg, *args), says, files=((f"in/{name}", content),))


def plan_case(
    id: str, plan: str, *says: str, args: tuple[str, ...] = (), command: str = "status", where: str = "plan"
) -> Case:
    """A ``python -m mmlexp.reproduce COMMAND PLAN`` case: the plan's text written to ``in/plan.yaml``."""
    files = ((PLAN, plan),)
    return Case(id, where, (command, f"{{tmp}}/{PLAN}", *args), says, command="reproduce", files=files)


CONFIG = [
    c("lr-zero", "config", "trainer.lr=0", "trainer.lr=0: must be a number > 0"),
    c("lr-negative", "config", "trainer.lr=-1e-3", "trainer.lr=-0.001: must be a number > 0"),
    c("lr-text", "config", "trainer.lr=abc", "trainer.lr='abc': must be a number > 0"),
    c("batch-zero", "config", "trainer.batch_size=0", "trainer.batch_size=0: must be an integer >= 1"),
    c("batch-text", "config", "trainer.batch_size=abc", "trainer.batch_size='abc': must be an integer >= 1"),
    c("epochs-fraction", "config", "trainer.epochs=2.5", "trainer.epochs=2.5: must be an integer >= 1"),
    c("negatives-zero", "config", "num_negatives=0", "num_negatives=0: must be an integer >= 1"),
    c("seed-negative", "config", "seed=-1", "seed=-1: must be an integer >= 0"),
    c("device", "config", "device=gpu", "device='gpu': must be auto, cpu, cuda, cuda:N or mps"),
    c("optimizer", "config", "trainer.optimizer=sgd", "trainer.optimizer='sgd': must be one of adam, sparse_adam"),
    c("precision", "config", "trainer.precision=fp16", "trainer.precision='fp16': must be one of fp32, bf16"),
    c("cuda-graph", "config", "trainer.cuda_graph=maybe", "trainer.cuda_graph='maybe': must be one of auto, on, off"),
    c("patience-zero", "config", "trainer.patience=0", "trainer.patience=0: must be null or an integer >= 1"),
    c("memory-check-text", "config", "trainer.memory_check=maybe", "trainer.memory_check='maybe': must be true or"),
    c("ks-empty", "config", "eval.ks=[]", "eval.ks=[]: must be a non-empty list of integers >= 1"),
    c(
        "ks-above-the-items",
        "config",
        ("eval.ks=[100000]", "trainer.monitor=recall@100000"),
        "eval.ks=[100000]: each k must be <= the number of items of dataset sample (2995)",
    ),
    c("monitor-not-at-ks", "config", "trainer.monitor=recall@10", "trainer.monitor='recall@10': must be one of"),
    c("selection", "config", "eval.selection=best", "eval.selection='best': must be one of paper, valid"),
    c("valid-fraction", "config", "eval.valid_fraction=1.5", "eval.valid_fraction=1.5: must be a number in (0, 1)"),
    c(
        "valid-fraction-holds-out-nothing",
        "config",
        ("eval.selection=valid", "eval.valid_fraction=0.001"),
        "eval.valid_fraction=0.001: holds out no interaction of sample",
        "use a larger fraction or eval.selection=paper",
    ),
    c("longtail-split", "config", "eval.longtail.split=deciles", "eval.longtail.split='deciles': must be one of"),
    c("allowed-targets", "config", "allowed_targets=5", "allowed_targets=5: must be a list of module prefixes"),
    c(
        "target-not-allowed",
        "config",
        "loss._target_=os.system",
        "loss._target_='os.system'",
        "Allowed targets: ['mmlexp.*'] (extend with allowed_targets=['mypkg.*'])",
    ),
    c(
        "target-only-hydra-may-build",  # on the list Hydra itself instantiates from (HYDRA_TARGETS), not on a run's
        "config",
        "loss._target_=logging.StreamHandler",
        "loss._target_='logging.StreamHandler'",
        "Allowed targets: ['mmlexp.*']",
    ),
    c("mml-margins-order", "config", "loss.margins=[0.9,0.8,0.7]", "loss.margins=[0.9, 0.8, 0.7]: margins must be"),
    c("mml-margin-range", "config", "loss.margins=[0.7,0.8,1.9]", "every margin must lie in [-1, 1]"),
    c(
        "mml-weight-negative",
        "config",
        "loss.weights=[0.1,-0.2,0.5]",
        "loss.weights=-0.2: must be a finite number >= 0",
    ),
    c("mml-weight-nan", "config", "loss.weights=[0.1,nan,0.5]", "loss.weights=nan: must be a finite number >= 0"),
    c("encoder-dim", "config", "encoder.dim=0", "encoder.dim=0: must be an integer >= 1"),
    c(
        "unknown-loss",
        "config",
        "loss=nope",
        "loss=nope: no option 'nope' in the config group loss; allowed: bce, bpr, bsl, ccl",
    ),
    c("unknown-sampler", "config", "sampler=nope", "sampler=nope: no option 'nope' in the config group sampler"),
    c("unknown-encoder-in-a-sweep", "config", ("-m", "encoder=nope"), "encoder=nope: no option 'nope'", "allowed: "),
    c("unknown-key", "config", "trainer.nope=1", "trainer.nope: no such key in trainer; allowed: epochs, max_steps"),
    c("key-added-twice", "config", "+trainer.lr=1", "An item is already at 'trainer.lr'", "'++trainer.lr=1'"),
    c(
        "key-added-unknown",
        "config",
        "+trainer.epoch=5",
        "trainer.epoch: no such key in trainer; allowed: batch_size, checkpoint, clip_grad_norm",
    ),
    c(
        "key-added-unknown-nested",
        "config",
        "+eval.longtail.group=10",
        "eval.longtail.group: no such key in eval.longtail; allowed: enabled, groups, split",
    ),
    c(
        "key-added-unknown-tracking",
        "config",
        "+tracking.url=sqlite:///{tmp}/x.db",
        "tracking.url: no such key in tracking; allowed: artifact_location, enabled, experiment",
    ),
    c("override-syntax", "config", "trainer.lr=[", "'trainer.lr=[': not an override", "write key=value"),
    c("override-without-value", "config", "trainer.lr", "'trainer.lr': not an override (missing EQUAL"),
    c(
        "impossible-size",
        "config",
        "num_negatives=100000000",
        "num_negatives=100000000",
        "trainer.batch_size=",
        "trainer.memory_check=false",
    ),
    c(
        "pruner-without-search",
        "config",
        "hydra/sweeper/pruner=median",
        "hydra/sweeper/pruner=median: a pruner stops poor trials of an Optuna search",
        "allowed only with -m and an Optuna search",
    ),
    c("unknown-pruner", "config", "hydra/sweeper/pruner=nope", "no such pruner; choose one of hyperband, median, none"),
    c("tracking-timeout", "config", "tracking.timeout=0", "tracking.timeout=0: must be a number > 0"),
    c("staleness-limit", "config", "tracking.stale_after_s=0", "tracking.stale_after_s=0: must be a number > 0"),
    c(
        "grid-point",
        "config",
        ("-m", "trainer.lr=0,0.001", "hydra.sweeper.storage=sqlite:///{tmp}/store/optuna.db"),
        "grid point 0 of 2",
        "trainer.lr=0: must be a number > 0",
    ),
    c(
        "search-trials-zero",
        "config",
        (*MML_SEARCH, "hydra.sweeper.n_trials=0", "hydra.sweeper.storage=sqlite:///{tmp}/store/optuna.db"),
        "hydra.sweeper.n_trials=0: must be an integer >= 1",
    ),
]

GOWALLA = (("MMLEXP_DATA_DIR", "{tmp}/in/data"),)
DATA = [
    c("custom-without-path", "data", "dataset=custom", "dataset.path is required for dataset=custom", "train.txt"),
    c("interactions-without-path", "data", "dataset=interactions", "dataset.path is required for dataset=interactions"),
    c(
        "path-for-a-known-dataset",
        "data",
        "dataset.path={tmp}/in",
        "dataset.path='{tmp}/in' is only read by dataset=custom or dataset=interactions",
    ),
    c(
        "custom-missing-folder",
        "data",
        ("dataset=custom", "dataset.path={tmp}/in/nothing"),
        "dataset.path={tmp}/in/nothing: custom dataset directory {tmp}/in/nothing does not exist",
        "allowed: a directory holding LightGCN-format train.txt and test.txt",
    ),
    c(
        "custom-path-is-a-file",
        "data",
        ("dataset=custom", "dataset.path={tmp}/in/train.txt"),
        "{tmp}/in/train.txt is a file, not a directory",
        "allowed: a directory",
        files=(("in/train.txt", "0 1 2\n"),),
    ),
    c(
        "custom-missing-test-file",
        "data",
        ("dataset=custom", "dataset.path={tmp}/in"),
        "custom dataset file {tmp}/in/test.txt is missing",
        files=(("in/train.txt", "0 1 2\n"),),
    ),
    c(
        "custom-non-integer-id",
        "data",
        ("dataset=custom", "dataset.path={tmp}/in"),
        "{tmp}/in/train.txt, line 2: non-integer token 'x'",
        "non-negative integer ids",
        files=(("in/train.txt", "0 1 2\n1 x\n"), ("in/test.txt", "0 3\n1 4\n")),
    ),
    c(
        "custom-negative-id",
        "data",
        ("dataset=custom", "dataset.path={tmp}/in"),
        "{tmp}/in/test.txt, line 1: negative id '-3'",
        files=(("in/train.txt", "0 1 2\n1 2\n"), ("in/test.txt", "0 -3\n")),
    ),
    c(
        "custom-empty-train",
        "data",
        ("dataset=custom", "dataset.path={tmp}/in"),
        "{tmp}/in/train.txt holds no interactions; expected lines 'user item item ...'",
        files=(("in/train.txt", ""), ("in/test.txt", "0 3\n")),
    ),
    c(
        "custom-train-test-overlap",
        "data",
        ("dataset=custom", "dataset.path={tmp}/in"),
        "1 interactions appear in both {tmp}/in/train.txt and {tmp}/in/test.txt; train and test must be disjoint",
        files=(("in/train.txt", "0 1 2\n1 2\n"), ("in/test.txt", "0 1\n1 3\n")),
    ),
    c(
        "known-dataset-files-missing",
        "data",
        ("dataset=gowalla", "dataset.download=false"),
        "gowalla: missing file {tmp}/in/data/gowalla/train.txt",
        "set MMLEXP_DATA_DIR",
        env=GOWALLA,
        files=(("in/data/gowalla/.keep", ""),),
    ),
    c(
        "known-dataset-fingerprint",
        "data",
        ("dataset=gowalla", "dataset.download=false"),
        "gowalla: data does not match the known fingerprint",
        "{tmp}/in/data/gowalla/train.txt",
        "Delete them to re-download",
        env=GOWALLA,
        files=(("in/data/gowalla/train.txt", "0 1 2\n1 2\n"), ("in/data/gowalla/test.txt", "0 3\n1 4\n")),
    ),
    c(
        "interactions-missing-file",
        "data",
        ("dataset=interactions", "dataset.path={tmp}/in/none.csv"),
        "cannot read interaction file {tmp}/in/none.csv: No such file or directory",
        "dataset.path must be a readable CSV, TSV, Parquet or RecBole .inter file",
    ),
    data_case("interactions-extension", "log.txt", "user_id,item_id\na,b\n", "from the extension '.txt'; allowed .csv"),
    data_case(
        "interactions-missing-column",
        "log.csv",
        "user,item_id\na,b\n",
        "{tmp}/in/log.csv: no column 'user_id' (dataset.user_col); the file's columns are 'user', 'item_id'",
    ),
    data_case(
        "interactions-empty",
        "log.csv",
        "",
        "{tmp}/in/log.csv: the file is empty; expected a header line and one interaction per line",
    ),
    data_case(
        "interactions-header-only",
        "log.csv",
        "user_id,item_id\n",
        "{tmp}/in/log.csv: no interactions (only a header); expected one interaction per line",
    ),
    data_case(
        "interactions-not-utf8",
        "log.csv",
        b"user_id,item_id\na,b\nc,d\xe9\n",
        "{tmp}/in/log.csv, line 3, column 4: byte 0xe9 is not valid utf-8 text",
        "set dataset.encoding",
    ),
    data_case(
        "interactions-rating-not-a-number",
        "log.csv",
        "user_id,item_id,stars\na,b,5\nc,d,five\n",
        "line 3, column 'stars' (dataset.rating_col): 'five' is not a number",
        args=("dataset.rating_col=stars",),
    ),
    data_case(
        "interactions-time-not-a-date",
        "log.csv",
        "user_id,item_id,t\na,b,1\nc,d,yesterday-ish\n",
        "line 3, column 't' (dataset.time_col): 'yesterday-ish' is not a number or a date; expected a number or",
        args=("dataset.time_col=t", "dataset.split=temporal"),
    ),
    data_case(
        "interactions-empty-id",
        "log.csv",
        "user_id,item_id\na,\n",
        "{tmp}/in/log.csv, line 2, column 'item_id' (dataset.item_col): empty id; expected an id on every row",
    ),
    data_case(
        "interactions-no-test-split",
        "log.csv",
        "user_id,item_id\na,b\na,c\nd,b\n",
        "split=random leaves no test interactions",
        "use a larger dataset.test_fraction",
    ),
    data_case("interactions-not-parquet", "log.parquet", "not parquet", "{tmp}/in/log.parquet: not a readable Parquet"),
    data_case(
        "interactions-split",
        "log.csv",
        "user_id,item_id\na,b\n",
        "dataset.split='chronological': allowed random, temporal, leave_one_out",
        args=("dataset.split=chronological",),
    ),
    data_case(
        "interactions-format",
        "log.csv",
        "user_id,item_id\na,b\n",
        "dataset.format='xlsx': allowed auto, csv, tsv, parquet, inter",
        args=("dataset.format=xlsx",),
    ),
    data_case(
        "interactions-test-fraction",
        "log.csv",
        "user_id,item_id\na,b\n",
        "dataset.test_fraction=1.5: must be a number in (0, 1)",
        args=("dataset.test_fraction=1.5",),
    ),
    data_case(
        "interactions-k-core",
        "log.csv",
        "user_id,item_id\na,b\n",
        "dataset.min_user_interactions=-1: must be an integer >= 0",
        args=("dataset.min_user_interactions=-1",),
    ),
    data_case(
        "interactions-min-rating-without-column",
        "log.csv",
        "user_id,item_id\na,b\n",
        "dataset.min_rating=3: must be a number, with dataset.rating_col set",
        args=("dataset.min_rating=3",),
    ),
    data_case(
        "interactions-temporal-without-time",
        "log.csv",
        "user_id,item_id\na,b\n",
        "dataset.time_col=null: split=temporal orders each user's items by time",
        args=("dataset.split=temporal",),
    ),
    data_case(
        "interactions-unknown-setting",
        "log.csv",
        "user_id,item_id\na,b\n",
        "dataset.user_column: unknown setting of dataset=interactions; allowed: format, sep,",
        args=("+dataset.user_column=u",),
    ),
    data_case(
        "interactions-unknown-key",
        "log.csv",
        "user_id,item_id\na,b\n",
        "dataset.user_column: no such key in dataset; allowed: name, path",
        args=("dataset.user_column=u",),
    ),
]

PLANS = [
    c(
        "unknown-plan",
        "plan",
        ("status", "nosuchplan"),
        f"plan 'nosuchplan': no such plan; available: {SHIPPED_PLANS}",
        command="reproduce",
    ),
    plan_case("plan-not-yaml", "dataset: [sample\n", "plan {tmp}/in/plan.yaml: not valid YAML"),
    plan_case("plan-not-a-mapping", "- sample\n", "plan {tmp}/in/plan.yaml: must be a mapping with keys"),
    plan_case(
        "plan-unknown-key",
        ONE_STEP + "seeds: [1]\n",
        "unknown key(s) ['seeds']; allowed: ['dataset', 'experiment', 'run', 'steps']",
    ),
    plan_case("plan-without-steps", "dataset: sample\nstep: []\n", "unknown key(s) ['step']"),
    plan_case("plan-run-unknown-key", ONE_STEP + "run: {epoch: 3}\n", "run: unknown key(s) ['epoch']; allowed:"),
    plan_case(
        "plan-step-unknown-key",
        "dataset: sample\nsteps:\n  - {loss: mml, negatives: 10, selction: valid}\n",
        "step 1: unknown key(s) ['selction']; allowed:",
    ),
    plan_case(
        "plan-step-without-negatives",
        "dataset: sample\nsteps:\n  - {loss: mml}\n",
        "step 1: 'negatives' is missing",
    ),
    plan_case(
        "plan-selection",
        "dataset: sample\nsteps:\n  - {loss: mml, negatives: 10, selection: best}\n",
        "step 1: selection='best'; allowed: paper, valid",
    ),
    plan_case(
        "plan-negatives",
        "dataset: sample\nsteps:\n  - {loss: mml, negatives: [10, -5]}\n",
        "step 1: negatives=-5; must be a positive integer",
    ),
    plan_case(
        "plan-patience",
        "dataset: sample\nsteps:\n  - {loss: mml, negatives: 10, epochs: 5, patience: 5}\n",
        "step 1: patience=5; allowed: null (no early stop) or an integer from 1 to epochs - 1",
    ),
    plan_case(
        "plan-unknown-loss",
        "dataset: sample\nsteps:\n  - {loss: mml, negatives: 10}\n  - {loss: [ccl, mmml], negatives: 10}\n",
        "step 2: loss='mmml': no such loss; allowed: bce, bpr",
    ),
    plan_case(
        "plan-unknown-encoder",
        "dataset: sample\nsteps:\n  - {loss: mml, negatives: 10, encoder: gcn}\n",
        "step 1: encoder='gcn': no such encoder; allowed: lightgcn, mf",
    ),
    plan_case(
        "plan-unknown-dataset",
        "dataset: gowala\nsteps:\n  - {loss: mml, negatives: 10}\n",
        "dataset='gowala': no such dataset; allowed: custom, gowalla",
    ),
    plan_case(
        "plan-override-not-a-key",
        "dataset: sample\nsteps:\n  - {loss: mml, negatives: 10, overrides: [trainer.epoch=3]}\n",
        "step 1 (mml N=10 seed 1): its config is refused with overrides ['trainer.epoch=3']: Could not override",
    ),
    plan_case(
        "plan-override-refused",
        "dataset: sample\nsteps:\n  - {loss: mml, negatives: 10, overrides: ['+trainer.epoch=3']}\n",
        "its config is refused with overrides ['+trainer.epoch=3']: trainer.epoch: no such key in trainer",
    ),
    plan_case(
        "steps-out-of-range",
        ONE_STEP,
        "--steps 9: {tmp}/in/plan.yaml has steps 1..1; allowed: one or more of them",
        args=("--steps", "9"),
    ),
    plan_case("steps-not-a-number", ONE_STEP, "argument --steps: invalid int value: 'two'", args=("--steps", "two")),
    plan_case("unknown-command", ONE_STEP, "argument command: invalid choice: 'start'", command="start"),
    plan_case(
        "queue-unknown-key",
        "queue:\n  - {plan: gowalla}\nsteps: [1]\n",
        "queue {tmp}/in/plan.yaml: unknown key(s) ['steps']; allowed: ['queue']",
    ),
    plan_case("queue-empty", "queue: []\n", "'queue' must be a list of entries with keys from"),
    plan_case(
        "queue-entry-unknown-key",
        "queue:\n  - {plan: gowalla, step: 6}\n",
        "entry 1: unknown key(s) ['step']; allowed: ['plan', 'steps', 'why']",
    ),
    plan_case(
        "queue-entry-no-plan",
        "queue:\n  - {plan: gowalla, steps: 6}\n  - {plan: gowala}\n",
        "entry 2: plan 'gowala': no such plan; available: gowalla",
    ),
    plan_case(
        "queue-entry-steps",
        "queue:\n  - {plan: gowalla, steps: [6, 99]}\n",
        "entry 1: steps 99: ",
        f"gowalla.yaml has steps 1..{GOWALLA_STEPS}; allowed: one or more of them",
    ),
    plan_case(
        "queue-entry-steps-text",
        "queue:\n  - {plan: gowalla, steps: six}\n",
        "entry 1: steps='six'; allowed: a step number or a list of them",
    ),
    plan_case("queue-in-a-queue", "queue:\n  - {plan: queue}\n", "is a queue; allowed: a dataset's plan"),
    plan_case(
        "queue-with-steps",
        "queue:\n  - {plan: gowalla, steps: 6}\n",
        "--steps 6: {tmp}/in/plan.yaml is a queue; allowed: the steps named by its entries (no --steps)",
        args=("--steps", "6"),
    ),
]

SWEEP_DIR_IN_A_CONFIG = f"# @package _global_\nhydra:\n  sweep:\n    dir: {READ_ONLY}/sweep\n"
STORES = [
    c(
        "tracking-store-not-a-database",
        "store",
        "tracking.uri=sqlite:///{tmp}/in/mlflow.db",
        "tracking.uri=sqlite:///{tmp}/in/mlflow.db: {tmp}/in/mlflow.db is not an SQLite database",
        "use another file",
        files=(("in/mlflow.db", "id,name\n1,not a database\n"),),
    ),
    c(
        "tracking-store-corrupt",
        "store",
        "tracking.uri=sqlite:///{tmp}/in/mlflow.db",
        "{tmp}/in/mlflow.db cannot be read as an SQLite database",
        files=(("in/mlflow.db", b"SQLite format 3\x00" + b"\x07" * 200),),
    ),
    c(
        "tracking-store-not-writable",
        "store",
        f"tracking.uri=sqlite:///{READ_ONLY}/mlflow.db",
        f"cannot create {READ_ONLY}/mlflow.db: no write permission on /proc/sys",
    ),
    c(
        "tracking-folder-not-writable",
        "store",
        f"tracking.uri={READ_ONLY}/mlruns",
        f"tracking.uri={READ_ONLY}/mlruns: cannot create {READ_ONLY}/mlruns: no write permission on /proc/sys",
    ),
    c(
        "tracking-server-down",
        "store",
        ("tracking.uri=http://alice:s3cret@127.0.0.1:9", "tracking.timeout=1"),
        "tracking.uri=http://alice:***@127.0.0.1:9: the tracking server did not answer within tracking.timeout=1",
    ),
    c(
        "tracking-unknown-scheme",
        "store",
        "tracking.uri=ftp://example.org/mlflow",
        "tracking.uri='ftp://example.org/mlflow': must be an MLflow tracking URI: sqlite:///FILE",
    ),
    c(
        "optuna-storage-not-a-database",
        "store",
        (*MML_SEARCH, "hydra.sweeper.storage=sqlite:///{tmp}/in/optuna.db"),
        "hydra.sweeper.storage='sqlite:///{tmp}/in/optuna.db': cannot open the Optuna storage",
        "file is not a database",
        files=(("in/optuna.db", "not a database\n"),),
    ),
    c(
        "grid-ledger-not-a-database",
        "store",
        ("-m", "num_negatives=10,20", "hydra.sweeper.storage=sqlite:///{tmp}/in/optuna.db"),
        "hydra.sweeper.storage='sqlite:///{tmp}/in/optuna.db': cannot open the grid ledger",
        files=(("in/optuna.db", "not a database\n"),),
    ),
    c(
        "run-dir-not-writable",
        "store",
        f"hydra.run.dir={READ_ONLY}/run",
        f"hydra.run.dir={READ_ONLY}/run: cannot create it, no write permission on /proc/sys",
    ),
    c(
        "sweep-dir-not-writable",
        "store",
        ("-m", "num_negatives=10,20", f"hydra.sweep.dir={READ_ONLY}/sweep"),
        f"hydra.sweep.dir={READ_ONLY}/sweep: cannot create it, no write permission on /proc/sys",
    ),
    c(
        "sweep-dir-not-writable-in-a-config",
        "store",
        ("-m", "--config-dir", "{tmp}/in/conf", "+experiment=mine", "num_negatives=10,20"),
        f"hydra.sweep.dir={READ_ONLY}/sweep: cannot create it, no write permission on /proc/sys",
        files=(("in/conf/experiment/mine.yaml", SWEEP_DIR_IN_A_CONFIG),),
        unset=("hydra.sweep.dir",),
    ),
    c(
        "search-dir-not-writable-in-a-config",
        "store",
        (*MML_SEARCH, "--config-dir", "{tmp}/in/conf", "+experiment=mine"),
        f"hydra.sweep.dir={READ_ONLY}/sweep: cannot create it, no write permission on /proc/sys",
        files=(("in/conf/experiment/mine.yaml", SWEEP_DIR_IN_A_CONFIG),),
        unset=("hydra.sweep.dir",),
    ),
    c(
        "run-dir-under-a-file",
        "store",
        "hydra.run.dir={tmp}/in/x.txt/run",
        "hydra.run.dir={tmp}/in/x.txt/run: cannot create it, {tmp}/in/x.txt is a file",
        files=(("in/x.txt", "a file\n"),),
    ),
    c(
        "resume-checkpoint-missing",
        "store",
        "trainer.resume={tmp}/in/none/checkpoint.pt",
        "trainer.resume='{tmp}/in/none/checkpoint.pt': no checkpoint at {tmp}/in/none/checkpoint.pt",
        "allowed: auto, never, or a checkpoint.pt file",
    ),
    c(
        "resume-not-a-checkpoint",
        "store",
        "trainer.resume={tmp}/in/checkpoint.pt",
        "cannot load the checkpoint {tmp}/in/checkpoint.pt",
        "use trainer.resume=never to start over",
        files=(("in/checkpoint.pt", "not a checkpoint\n"),),
    ),
    plan_case(
        "runs-dir-not-writable",
        ONE_STEP,
        f"--runs {READ_ONLY}: no write permission on /proc/sys; allowed: a folder that can be written",
        args=("--runs", READ_ONLY),
        command="run",
        where="store",
    ),
    plan_case(
        "runs-dir-under-a-file",
        ONE_STEP,
        "--runs {tmp}/in/plan.yaml/runs: {tmp}/in/plan.yaml is a file",
        args=("--runs", "{tmp}/in/plan.yaml/runs"),
        command="run",
        where="store",
    ),
]

CASES: list[Case] = CONFIG + DATA + PLANS + STORES


# ---------------------------------------------------------------- running a case


def expand(text: str, tmp: Path) -> str:
    return text.replace("{tmp}", str(tmp))


def write_inputs(case: Case, tmp: Path) -> None:
    for name, content in case.files:
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())


def base_args(tmp: Path) -> list[str]:
    """Every ``python -m mmlexp`` case tracks into ``tmp/store`` and runs in ``tmp/run`` (sweeps: ``tmp/sweep``);
    tiny settings in case an input is not refused."""
    return [
        f"tracking.uri=sqlite:///{tmp}/store/mlflow.db",
        f"tracking.artifact_location={tmp}/store/artifacts",
        f"hydra.run.dir={tmp}/run",
        f"hydra.sweep.dir={tmp}/sweep",
        "trainer.progress=false",
        "trainer.epochs=1",
        "trainer.max_steps=1",
    ]


def snapshot(tmp: Path) -> dict[str, str]:
    """Every file and folder under ``tmp`` with its SHA-256 (folders: ``dir``), less Hydra's record of the command
    in its run directory (``run/.hydra/``, ``run/__main__.log``: written before the run starts)."""
    found = {}
    for path in sorted(tmp.rglob("*")):
        rel = path.relative_to(tmp)
        if rel.parts[0] == "run" and (len(rel.parts) == 1 or rel.parts[1] in (".hydra", "__main__.log")):
            continue
        found[str(rel)] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def run_in_process(case: Case, tmp: Path) -> int:
    """The entrypoint's ``main()`` with the case's arguments, in this process; its exit code."""
    args = [expand(a, tmp) for a in case.args]
    if case.command == "reproduce":
        from mmlexp.reproduce.__main__ import main as reproduce_main

        try:
            return reproduce_main(args)
        except SystemExit as stop:  # argparse
            return stop.code if isinstance(stop.code, int) else 1
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from mmlexp.__main__ import main

    handlers, level = logging.root.handlers[:], logging.root.level
    argv = sys.argv
    base = [a for a in base_args(tmp) if a.partition("=")[0] not in case.unset]
    sys.argv = ["mmlexp", *base, *args]
    try:
        main()
        return 0
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 1
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None  # type: ignore[assignment]  (a later test's run outside Hydra)
        for handler in set(logging.root.handlers) - set(handlers):
            handler.close()
        logging.root.handlers[:], logging.root.level = handlers, level


@pytest.fixture
def case_dir(tmp_path, monkeypatch):
    """The case's folder, also its working directory and its data cache."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MMLEXP_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def needs(case: Case) -> list:
    ro = any(READ_ONLY in a for a in case.args)
    return [pytest.mark.skipif(ro and os.access("/proc/sys", os.W_OK), reason="/proc/sys is writable here")]


@pytest.mark.parametrize("case", [pytest.param(k, id=k.id, marks=needs(k)) for k in CASES])
def test_bad_input_exits_2_names_what_is_allowed_and_writes_nothing(case, case_dir, monkeypatch, capsys):
    for name, value in case.env:
        monkeypatch.setenv(name, expand(value, case_dir))
    write_inputs(case, case_dir)
    before = snapshot(case_dir)
    code = run_in_process(case, case_dir)
    err = capsys.readouterr().err
    assert code == 2, err[-3000:]
    for fragment in case.says:
        assert expand(fragment, case_dir) in err, (fragment, err[-3000:])
    assert "Traceback" not in err
    assert snapshot(case_dir) == before


def test_the_catalogue_counts_40_distinct_inputs_everywhere():
    assert len({k.id for k in CASES}) == len(CASES) >= 40
    assert len({(k.command, k.args, k.files, k.env) for k in CASES}) == len(CASES)
    assert {k.where for k in CASES} == set(WHERE)
    assert all(k.says for k in CASES)


def test_the_shipped_plans_name_only_known_options():
    from mmlexp.reproduce.plan import available
    from mmlexp.reproduce.queue import load_plans

    for name in available():
        assert load_plans(name)  # checks every plan's names (a queue: each entry's plan)


def test_the_real_process_exits_2(tmp_path):
    """The same through ``python -m mmlexp`` in a fresh process, for an option Hydra refuses (Hydra's own exit is 1)
    (a refusal of the config rules in a fresh process: ``tests/test_memory_check.py``)."""
    (case,) = [k for k in CASES if k.id == "unknown-loss"]
    cmd = [sys.executable, "-m", "mmlexp", *base_args(tmp_path), *case.args]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert all(f in proc.stderr for f in case.says), proc.stderr[-3000:]
    assert list(tmp_path.iterdir()) == []
