"""Where a reproduction stands: the cells more than 3% (relative) from the paper, each with a slot for its
explanation in report.md, and the README "Reproduction status" table generated from committed ``cells.csv``."""

import re
from pathlib import Path

import pandas as pd

from mmlexp.report import evidence
from mmlexp.report.export import cell_id
from mmlexp.report.stats import BOOTSTRAP_SEED, N_RESAMPLES
from mmlexp.report.tables import fmt_p

THRESHOLD_PCT = 3.0
EXPLANATIONS = "explanations.md"
CAVEATS = {  # paper-reference §10.2: where the paper's Table 3 baseline numbers may come from
    loss: "paper-reference §10.2: the paper's Table 3 numbers for BPR, pairwise hinge, softmax CE and MSE may "
    "come from another setting (re-run by the author with N=100 in the MF + cosine config, or copied from "
    "the SimpleX paper); check before reading the gap as ours"
    for loss in ("bpr", "hinge", "softmax", "mse")
}
CELL_COLUMNS = ("dataset", "encoder", "loss", "num_negatives", "early_stop", "selection")
PAPER_EPOCHS = {"table2": 100, "table3": 100, "ssm_table2": 1000}  # the papers' epoch budgets (paper-reference §3, §6)
HEADING = re.compile(r"^## +(\S+)\s*$")


def off_cells(tables: dict[str, pd.DataFrame], threshold: float = THRESHOLD_PCT) -> pd.DataFrame:
    """Cells of the paper tables (selection ``paper``, with runs and a paper number) whose mean is more than
    ``threshold`` % (relative) from the paper's, one row per (cell, metric), with ``cell`` = ``cell_id``."""
    cols = [*CELL_COLUMNS, "metric", "paper", "mean", "n", "epochs", "rel_diff_pct"]
    rows = pd.concat(
        [t[[c for c in cols if c in t]].assign(budget=PAPER_EPOCHS.get(name, 100)) for name, t in tables.items()],
        ignore_index=True,
    )
    rows = rows[
        (rows["selection"] == "paper")
        & rows["paper"].notna()
        & rows["mean"].notna()
        & (rows["rel_diff_pct"].abs() > threshold)
    ]
    rows = rows.drop_duplicates([*CELL_COLUMNS, "metric"]).reset_index(drop=True)
    rows.insert(0, "cell", [cell_id(r) for _, r in rows.iterrows()] if len(rows) else [])
    return rows


def read_explanations(path: Path) -> dict[str, str]:
    """``explanations.md`` -> {cell id: text}: each ``## <cell id>`` heading and the lines below it."""
    if not path.is_file():
        return {}
    out: dict[str, list[str]] = {}
    current = None
    for line in path.read_text().splitlines():
        match = HEADING.match(line)
        if match:
            current = match.group(1)
            out[current] = []
        elif current is not None:
            out[current].append(line)
    return {k: "\n".join(v).strip() for k, v in out.items()}


def shortened(row) -> str | None:
    """The note of a cell trained for fewer epochs than the paper (a miniature such as ``make reproduce-quick``):
    it is not expected to reach the paper's value, so its gap needs no explanation. None for a full-budget cell."""
    epochs = [int(float(e)) for e in str(row.get("epochs", "")).split() if e.replace(".", "", 1).isdigit()]
    if not epochs or max(epochs) >= row["budget"]:
        return None
    return (
        f"Shortened run: {max(epochs)} epochs where the paper trains {row['budget']}, so not expected to reach "
        "the paper's value; read it for the ordering of the losses, not for the gap."
    )


def explanation_section(tables: dict[str, pd.DataFrame], folder: Path) -> list[str]:
    """report.md lines: every cell more than 3% from the paper, its caveat and its explanation (the cell's section
    of ``folder/explanations.md``, written by hand and kept when the report is rebuilt) or a marked slot."""
    off = off_cells(tables)
    auto = {r["cell"]: note for _, r in off.iterrows() if (note := shortened(r))}
    notes = {**auto, **{c: text for c, text in read_explanations(folder / EXPLANATIONS).items() if text}}
    md = [f"## Cells more than {THRESHOLD_PCT:g}% from the paper", ""]
    if off.empty:
        md += [
            f"None: every cell with runs and a paper number (selection `paper`) is within {THRESHOLD_PCT:g}% "
            "(relative) of the paper.",
            "",
        ]
    else:
        missing = [c for c in dict.fromkeys(off["cell"]) if not notes.get(c)]
        md += [
            f"{off['cell'].nunique()} cell(s) more than {THRESHOLD_PCT:g}% (relative) from the paper"
            + (f"; **{len(missing)} NEED AN EXPLANATION**: {', '.join(missing)}" if missing else "")
            + ". "
            f"Each gets its evidence in a `## <cell>` section of [{EXPLANATIONS}]({EXPLANATIONS}) (written by "
            "hand, copied here when the report is rebuilt).",
            "",
            "| cell | metric | ours | paper | Δ % | n |",
            "|---|---|---|---|---|---|",
        ]
        md += [
            f"| {r.cell} | {r.metric} | {r.mean:.4f} | {r.paper:.4f} | {r.rel_diff_pct:+.1f} | {r.n} |"
            for r in off.itertuples()
        ]
        md.append("")
        for cell, group in off.groupby("cell", sort=False):
            loss = group["loss"].iloc[0]
            md += [f"### {cell}", ""]
            if loss in CAVEATS:
                md += [f"Caveat: {CAVEATS[loss]}.", ""]
            md += [
                notes[cell]
                if notes.get(cell)
                else f"**NEEDS EXPLANATION**: add a `## {cell}` section with the evidence to {EXPLANATIONS}.",
                "",
            ]
    extra = [c for c in notes if c not in set(off["cell"]) and notes[c] and c not in auto]
    if extra:
        md += ["Other notes from " + EXPLANATIONS + " (cells within the threshold, or rows of their own):", ""]
        for cell in extra:
            md += [f"### {cell}", "", notes[cell], ""]
    return md


def _links(row) -> str:
    """The row's runs, each linked to its per-user (tested) or per-epoch file: ``[c518ffd1](epochs/….csv)``."""
    return ", ".join(f"[{r[:8]}]({f})" if f else r[:8] for r, f in evidence.run_files(row))


def _seed_level(row) -> str:
    if row.n_seeds < 2:
        return f"seed level: {row.n_seeds} seed, no t-test"
    p = row.seed_p
    return (
        f"seed level ({row.n_seeds} seeds): mean difference {row.seed_mean_diff:+.6f} [95% t-interval "
        f"{row.seed_ci_low:+.6f}, {row.seed_ci_high:+.6f}], paired t-test p = {_p(p)}"
        + ("" if p < evidence.ALPHA else " (not significant: within seed-to-seed variation)")
    )


def _untested(row) -> str:
    """The tail of a point-estimate verdict: not tested, and which runs' per-user files would test it."""
    missing = str(row.no_users_csv).split() if isinstance(row.no_users_csv, str) else []
    lacking = (
        f"runs {_links(row)}" + _without_users(missing, str(row.runs).split())
        if missing
        else "no runs on a common seed"
    )
    seeds = f"; {_seed_level(row)}" if row.n_seeds >= 2 else ""
    wanted = ", ".join(str(row.wanted).split()) if isinstance(row.wanted, str) else ""
    return (
        f" — {evidence.UNTESTED} ({row.n_seeds} seed{'s' if row.n_seeds != 1 else ''}: {lacking}; the evidence "
        f"would come from per-user files of {wanted}){seeds}"
    )


def _without_users(missing: list[str], runs: list[str]) -> str:
    """`` have no per-user file`` when none of ``runs`` has one, else which of them lack it."""
    if set(runs) <= set(missing):
        return " have no per-user file"
    return f", of which {', '.join(m[:8] for m in missing)} {'has' if len(missing) == 1 else 'have'} no per-user file"


def _p(p: float) -> str:
    """``tables.fmt_p``, with a p-value below the smallest double written as such rather than as 0."""
    return "< 1e-300" if p == 0 else fmt_p(p)


def _seeds(seeds: str) -> str:
    """``"1 2"`` -> ``2 seeds (1, 2)``."""
    used = str(seeds).split()
    return f"{len(used)} seed{'s' if len(used) != 1 else ''} ({', '.join(used)})"


def _tested(row) -> str:
    """The tail of a tested verdict: the per-user test, Holm, the seed level and the runs."""
    return (
        f" — per-user test over {row.n_users} test users, {_seeds(row.user_seeds)}: mean difference "
        f"{row.mean_diff:+.6f} [95% bootstrap CI {row.ci_low:+.6f}, {row.ci_high:+.6f}], Wilcoxon p = "
        f"{_p(row.p_wilcoxon)}, Holm p = {_p(row.p_holm)}{_disagreement(row)}; {_seed_level(row)}; runs {_links(row)}"
    )


def _disagreement(row) -> str:
    """Where the mean's bootstrap interval and the Wilcoxon test (after Holm) say different things, which says what
    and which one the verdict follows; else ""."""
    mean_differs = row.ci_low > 0 or row.ci_high < 0
    if mean_differs == (row.p_holm < evidence.ALPHA):
        return ""
    said = (
        "the mean's interval excludes 0 but the Wilcoxon test is not significant after Holm"
        if mean_differs
        else "the Wilcoxon test is significant after Holm but the mean's interval (uncorrected) includes 0"
    )
    return (
        f" (the two tests disagree: {said}; Wilcoxon ranks the per-user differences, the interval is of their "
        "mean; the verdict follows Wilcoxon)"
    )


def pair_line(row) -> str:
    """A claim between two losses: ``MML beats CCL at 10 negatives (paper +13.0%)``, ``MML ≥ CCL at 800 …``."""
    tested = row.evidence == evidence.PER_USER
    ci = f" [95% CI {row.rel_ci_low:+.1f}%, {row.rel_ci_high:+.1f}%]" if tested else ""
    if row.expect == ">":
        numbers = f", ours {row.rel_diff_pct:+.1f}%{ci}"
    else:  # the cells' means; where tested, the per-user relative difference the verdict (and the README) reads
        a, b = row.mean_a, row.mean_b
        means = f"{a:.4f} vs {b:.4f}, difference {a - b:+.6f}, {100 * (a - b) / b:+.2f}%"
        seeds = str(row.user_seeds).split()
        on = f"seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)}"
        numbers = (
            f" (each cell over its seeds {means}; per user, {on}: {row.rel_diff_pct:+.1f}%{ci})"
            if tested
            else f" ({means})"
        )
    tail = _tested(row) if tested else _untested(row)
    return f"{row.dataset} {row.metric}: {row.claim}: **{row.verdict}**{numbers}{tail}"


def _level_line(row, parts: pd.DataFrame) -> str:
    """The combined "all losses level off" claim: each loss's change from 100 to each larger number of negatives
    (tested: its 95% bootstrap interval, Holm p and verdict) and the evidence."""
    changes = [
        evidence.level_change(r.claim, r.rel_diff_pct, row.evidence)
        + (
            f" [95% CI {r.rel_ci_low:+.1f}%, {r.rel_ci_high:+.1f}%], Holm p = {_p(r.p_holm)}: {r.verdict}"
            if r.evidence == evidence.PER_USER
            else ""
        )
        for r in parts.itertuples()
    ]
    if row.evidence == evidence.PER_USER:
        tested = parts[parts["evidence"] == evidence.PER_USER]
        users = sorted({int(n) for n in tested["n_users"]})
        tail = (
            f" — per-user tests over {'–'.join(str(n) for n in (users[0], users[-1])[: len(users)])} test users, "
            f"{' / '.join(_seeds(s) for s in dict.fromkeys(tested['user_seeds']))}; runs {_links(row)}"
        )
    else:
        tail = _untested(row)
    return (
        f"{row.dataset} {row.metric}: {evidence.LEVEL_CLAIM} (read here as: from 100 negatives on, no point of "
        f"a loss's curve is more than {evidence.LEVEL_PCT:g}% from its value at 100): **{row.verdict}** "
        f"({', '.join(changes)}){tail}"
    )


def method_lines(tests: pd.DataFrame) -> list[str]:
    """How the verdicts are decided, and the Holm family of this report (the tested rows of ``tests``: every claim
    test of the report)."""
    family = tests[tests["p_wilcoxon"].notna()]
    members = (
        f"its {len(family)} tests: " + "; ".join(f"{r.dataset} {r.metric} {r.claim}" for r in family.itertuples())
        if len(family)
        else "no claim has per-user evidence yet, so the family is empty and no verdict is tested"
    )
    return [
        "How a verdict is decided ([claims.csv](claims.csv) has every test, its numbers and its runs). A claim "
        "comparing two losses in one setting (or one loss at 100 and at more negatives) is tested on the test users "
        "both runs scored, paired by user: the two-sided Wilcoxon signed-rank test (`scipy.stats.wilcoxon`, "
        '`zero_method="pratt"`: a user with the same metric under both runs is ranked, then left out of the rank '
        "sum, with the normal approximation corrected for it) and the mean difference with a 95% percentile "
        f"bootstrap interval ({N_RESAMPLES:,} resamples of the users, seed {BOOTSTRAP_SEED}, so the report "
        "rebuilds byte-identically). The p-values of all claim tests of this report are one family, corrected by "
        f"Holm's step-down method ({members}); the paired tests of every loss against CCL further down are "
        "descriptive and not in it.",
        "",
        f"A difference not significant after Holm at α = {evidence.ALPHA:g} is **NOT "
        'RESOLVED**; otherwise the claim HOLDS or DOES NOT HOLD by the sign of the difference. For "beats by '
        '13%" the direction is tested and our gain is shown beside the paper\'s; "MML ≥ CCL" also needs a '
        "significant difference (a tie is no evidence of ≥ without an equivalence test). The curve levels off "
        "from 100 negatives at a point (200, 400, 800: each that has a run) when the bootstrap interval of the "
        f"loss's change from 100 to it lies within ±{evidence.LEVEL_PCT:g}%, does not when the change is "
        f"significant and its interval lies beyond ±{evidence.LEVEL_PCT:g}%, and is not resolved otherwise (that "
        "interval is not corrected for the number of claims); the claim holds when every loss levels off at "
        "every point and fails when one does not at one.",
        "",
        "With several seeds "
        "the per-user metrics are averaged over the seeds first, and the seed-level mean difference, its "
        "t-interval and the paired t-test over seeds (`scipy.stats.ttest_rel`) stand beside the verdict without "
        "deciding it (2–3 seeds give a t-test 1–2 degrees of freedom). Common practice differs: per-user paired "
        "tests are usually reported one comparison at a time with no correction for the number of claims, and "
        "RecBole's `significance_test.py` runs a one-sided paired t-test over seeds "
        '(`ttest_rel(ours, baseline, alternative="less")`) per metric, uncorrected. A verdict marked "no '
        'per-user evidence: point estimate only, NOT tested" compares the two means alone and names the runs '
        "whose per-user files would test it.",
        "",
    ]


def claim_verdicts(tests: pd.DataFrame, family: pd.DataFrame | None = None) -> list[str]:
    """report.md lines: how the verdicts are decided, then each Figure 3 claim of the paper with our runs
    (``evidence.claim_tests``), marked HOLDS / DOES NOT HOLD / NOT RESOLVED with the evidence it rests on.
    ``family``: every claim test of the report, Figure 3's and the others' (default: ``tests``)."""
    out = []
    level = evidence.is_level_part(tests["claim"]) if len(tests) else pd.Series(dtype=bool)
    for i, row in enumerate(tests.itertuples()):
        if level.iloc[i]:
            continue
        if row.expect == "level":
            parts = tests[level & (tests["dataset"] == row.dataset) & (tests["metric"] == row.metric)]
            out.append(_level_line(row, parts))
        else:
            out.append(pair_line(row))
    if not out:
        return []
    family = tests if family is None else family
    return ["The paper's Figure 3 claims on our runs:", "", *method_lines(family), *(f"* {line}" for line in out), ""]
