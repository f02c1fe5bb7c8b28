"""One results page per profile and recipe: what was run, what it found, how sure, what would make it surer.

    python -m analysis.make_report                   # results/runs -> results/report/full/paper/README.md
    python -m analysis.make_report --profile budget --seeds 3

Writes README.md and the PNG figures it shows to results/report/<profile>/<recipe>/ (or --out), from the run
records and the paper's transcribed numbers only: tables and paired claims are make_tables' numbers, figures
make_figures' drawings, Holm, size and seeds needed stats.assess'. Its parts: what was run, Tables 1 and 2,
the claims (direction, size, Holm), seeds needed, figures, and the commands that reproduce the page.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pandas as pd

from analysis import collect, make_figures, stats
from analysis.summary import (
    CLAIM_HEADER,
    Loaded,
    claim_cells,
    claim_summary,
    claims_block,
    claims_intro,
    commits,
    counted,
    date_span,
    fmt,
    label,
    load_summary,
    md_cells,
    md_table,
    out_dir,
    output_parser,
    recipe_text,
    table_md,
    without_runs,
)
from repro.config import plural
from repro.datasets import table_datasets
from repro.experiments import (
    COLUMNS,
    PROFILE_NOTES,
    PROFILES,
    RECIPES,
    TABLES,
    cell_config,
    profile_words,
)
from repro.records import DIVERGED_RULE, atomic_write

PAGE = "README.md"  # a code-hosting site shows a folder's README.md as its page
ALPHA = f"{stats.ALPHA:.2g}"
TABLE_NOTE = ("Each cell: our mean ± standard deviation over seeds with the number of runs n, the paper's "
              "value and Δ = ours − paper, in percent. A cell with one seed shows no spread; one without "
              "runs shows as missing.")
HOLM_AND_SIZE = ("Holm p: p adjusted (Holm) over the comparisons of one data set, since a table makes many "
                 f"and some pass at {ALPHA} by chance; a supported or contradicted verdict survives when "
                 f"its Holm p is below {ALPHA}. Size: the paper's own Δ against our 95% CI: consistent "
                 "(inside it), paper above (the paper's difference is larger than the interval admits), "
                 "paper below (smaller); n/a without an interval.")
CLAIMS_HEADER = [*CLAIM_HEADER, "Holm p", "After Holm", "Size"]
SEEDS_NOTE = (f"How many paired seeds a two-sided paired t-test at {ALPHA} needs for {stats.POWER:.0%} "
              "power to detect the paper's Δ, if the paired differences spread as they do here (noncentral "
              f"t): the runs per cell that settle each comparison. > {stats.MAX_SEEDS}: more than that (the "
              "paper's Δ is small against the spread, or 0); n/a: no spread measured (under 2 paired "
              "seeds, or the same difference on every seed).")
SEEDS_HEADER = ["Claim", "Dataset", "Comparison", "paper Δ", "SD of paired Δ (pp)", "Seeds now",
                "Seeds needed"]
REPRODUCE_WHERE = "From the repository root, with the data sets in `./data` (or `$FLEXPOOL_DATA`):"
REPRODUCE_OTHERS = ("`python -m analysis.make_tables` and `python -m analysis.make_figures` with the same "
                    "`--profile` and `--recipe` write these tables as LaTeX and CSV and the figures as PDF.")


def duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def device_name(device, bf16_units, cpus) -> str:
    """The device as its records name it; a CPU's cores and bf16 units beside it, as they set its speed."""
    name = device if isinstance(device, str) else "device not recorded"
    name += f" ({cpus:.0f} cores)" if isinstance(cpus, (int, float)) and pd.notna(cpus) else ""
    return f"{name}, bf16 units {bf16_units}" if isinstance(bf16_units, str) else name


def device_names(runs: pd.DataFrame) -> list[str]:
    return [device_name(*device) for device in zip(runs["device"], runs["cpu_bf16_units"], runs["cpus"])]


def compute(runs: pd.DataFrame) -> str:
    """'cuda: 2.5 h of training (NVIDIA H200: 24 runs); cpu: ...': summed training time per device type."""
    frame = runs.assign(kind=runs["device_type"].fillna("device type not recorded"), name=device_names(runs),
                        train_s=pd.to_numeric(runs["train_s"]))
    parts = []
    for kind, group in frame.groupby("kind"):
        devices = ", ".join(f"{name}: {plural(len(g), 'run')}" for name, g in group.groupby("name"))
        parts.append(f"{kind}: {duration(group['train_s'].sum())} of training ({devices})")
    return "; ".join(parts) or "none"


def provenance(runs: pd.DataFrame) -> str:
    return f"dates {date_span(runs)}; torch {counted(runs['torch'])}; commits {commits(runs)}"


def compile_modes(runs: pd.DataFrame) -> pd.Series:
    return runs["config"].map(lambda config: config.get("compile"))


def regime(runs: pd.DataFrame) -> str:
    """How the runs trained: it sets their speed and the last digits of their results, not their run ids."""
    return (f"compile {counted(compile_modes(runs))}; precision {counted(runs['precision'])}; "
            f"threads per run {counted(runs['threads'].map('{:.0f}'.format, na_action='ignore'))}")


def seeds_per_cell(summary: pd.DataFrame, datasets: list[str]) -> str:
    """'3 in 24 cells, 1 in 1 cell, none in 7 cells', over the cells of the planned data sets."""
    counts = summary.loc[summary["dataset"].isin(datasets), "n"].value_counts().sort_index(ascending=False)
    return ", ".join(f"{n or 'none'} in {plural(cells, 'cell')}" for n, cells in counts.items())


def data_sets(summary: pd.DataFrame, recipe: str) -> str:
    """'CIFAR10 (32 runs), Fashion-MNIST (20 runs); no runs: CIFAR100, Tiny ImageNet'."""
    n = summary.groupby("dataset")["n"].sum()
    ran = ", ".join(f"{label(d)} ({plural(n[d], 'run')})" for d in table_datasets() if n[d]) or "none"
    missing = without_runs(summary, recipe)
    return ran + (f"; no runs: {', '.join(missing)}" if missing else "")


def configs(runs: pd.DataFrame, profile: str, recipe: str) -> str:
    """The cells whose runs have another config than the plan's (tuned --params): the launch command alone
    does not train them again."""
    planned = {cell: cell_config(*cell.split("/"), profile, recipe=recipe).run_id
               for cell in set(runs["cell"])}
    tuned = sorted({cell for cell, variant in zip(runs["cell"], runs["variant"]) if variant != planned[cell]})
    if not tuned:
        return "every cell as planned (no tuned parameters)"
    return f"{plural(len(tuned), 'cell')} with tuned parameters, not the plan's: {', '.join(tuned)}"


def completed(runs: pd.DataFrame, seeds: int, datasets: list[str]) -> str:
    """'37 completed of 96 planned (32 cells × 3 seeds)'."""
    cells = len(TABLES) * len(datasets) * len(COLUMNS)
    return f"{len(runs)} completed of {cells * seeds} planned ({cells} cells × {plural(seeds, 'seed')})"


def what_was_run(loaded: Loaded, profile: str, recipe: str, seeds: int, datasets: list[str]) -> str:
    runs, summary = loaded.runs, loaded.summary
    # the skipped records of this profile and recipe, or of none known (unreadable), then the notes on runs
    # of other profiles, recipes or configs
    skipped = [f"`{s['file']}`: {s['reason']}" for s in loaded.skipped
               if s["profile"] in (profile, None) and s["recipe"] in (recipe, None) and not s["diverged"]]
    skipped += loaded.notes
    items = [
        f"**Profile**: {profile_words(profile)}: {PROFILE_NOTES[profile]}.",
        f"**Recipe**: {recipe_text([recipe])}.",
        f"**Data sets**: {data_sets(summary, recipe)}.",
        f"**Seeds per cell**: {seeds_per_cell(summary, datasets)}.",
        f"**Runs**: {completed(runs, seeds, datasets)}.",
        f"**Compute**: {compute(runs)}.",
        f"**Records**: {provenance(runs)}.",
        f"**Regime**: {regime(runs)}.",
        f"**Configs**: {configs(runs, profile, recipe)}.",
        f"**Diverged** ({DIVERGED_RULE}; counted, never averaged): {diverged_runs(loaded, profile, recipe)}.",
        "**Skipped or left out**:" + ("" if skipped else " none."),
    ]
    return "\n".join(["## What was run", "", *(f"- {item}" for item in items),
                      *(f"  - {line}" for line in skipped)]) + "\n"


def diverged_runs(loaded: Loaded, profile: str, recipe: str) -> str:
    """'none', or 'table1/x/flexpool seed 2: training loss nan in epoch 7; ...'."""
    prefix = "status 'diverged': "
    hits = [f"`{s['file']}`: {s['reason'].removeprefix(prefix)}" for s in loaded.skipped
            if s["diverged"] and (s["profile"], s["recipe"]) == (profile, recipe)]
    return "; ".join(hits) or "none"


def tables(summary: pd.DataFrame, spread: str, profile: str, recipe: str) -> str:
    # every heading one level down, so that make_tables' tables sit under a heading of this page
    parts = [re.sub(r"^#", "##", table_md(summary, table, spread, profile, [recipe]), flags=re.MULTILINE)
             for table in TABLES]
    return "\n".join(["## The tables", "", TABLE_NOTE, "", *parts])


def holm_summary(rows: pd.DataFrame) -> str:
    """claim_summary, and how many of its supported or contradicted verdicts survive Holm."""
    decided = rows[rows["verdict"] != "inconclusive"]
    survive = f"; {decided['survives'].sum()} of {len(decided)} survive Holm" if len(decided) else ""
    return claim_summary(rows) + survive


def holm_cells(r) -> list[str]:
    """The cells after CLAIM_HEADER's: Holm p, whether the verdict survives it, the size verdict."""
    after = "—" if r.verdict == "inconclusive" else "survives" if r.survives else "does not survive"
    return ["n/a" if pd.isna(r.p_holm) else f"{r.p_holm:.3g}", after, r.size]


def claims_section(claims: pd.DataFrame, summary: pd.DataFrame, profile: str, recipe: str) -> str:
    lines = ["## The claims", "", f"{claims_intro(profile, [recipe])} {HOLM_AND_SIZE}", ""]
    lines += claims_block(claims, summary, recipe, holm_summary, CLAIMS_HEADER,
                          lambda r: claim_cells(r) + holm_cells(r))
    return "\n".join(lines + ([] if claims.empty else [""]))


def needed(seeds: float) -> str:
    return "n/a" if pd.isna(seeds) else f"> {stats.MAX_SEEDS}" if seeds == float("inf") else str(int(seeds))


def seeds_section(claims: pd.DataFrame) -> str:
    rows = [[f"({r.claim})", label(r.dataset), r.comparison, fmt(r.paper_diff, sign=True), fmt(r.sd),
             str(r.n), needed(r.seeds_needed)] for r in claims.itertuples()]
    body = md_table(SEEDS_HEADER, rows) if rows else ["No comparison has runs yet."]
    return "\n".join(["## Seeds needed", "", SEEDS_NOTE, "", *body, ""])


# ---- the same claims at two lengths of training; the same cells under two recipes ----------------------------

LENGTHS = [p for p in PROFILES if "train_subset" not in PROFILES[p]]  # the whole data: only the length differs


def epochs(profile: str) -> str:
    return f"{PROFILES[profile]['epochs']} epochs"


def ci_text(low: float, high: float) -> str:
    return "n/a" if pd.isna(low) else f"[{low:+.2f}, {high:+.2f}]"


def how_trained(sides: dict[str, pd.DataFrame], compared: str) -> str:
    """Each side's devices and precisions over the runs both sides pair on: bf16 and fp32 differ in the last digits
    of a result, so where the sides differ the reader must know that part of each Δ may come from it."""
    paired = dict(zip(sides, stats.on_common_seeds(*sides.values())))
    text = "; ".join(f"{name}: {counted(pd.Series(device_names(runs), dtype=object))}, precision "
                     f"{counted(runs['precision'])}" for name, runs in paired.items())
    precisions = sorted(set().union(*(runs["precision"].dropna() for runs in paired.values())))
    mixed = (f" The runs compared trained in {' and '.join(precisions)}: part of each Δ may come from the precision, "
             f"not from the {compared} alone." if len(precisions) > 1 else "")
    return f"**How each side trained**: {text}.{mixed}"


def lengths_reading(compared: pd.DataFrame, short: str, long: str) -> str:
    """One line: how many comparisons changed direction or verdict from the shorter training to the longer."""
    reversed_ = compared["change"].str.contains("direction reversed")
    verdict = compared["verdict_short"] != compared["verdict_long"]
    named = "; ".join(f"{label(r.dataset)} ({r.comparison}): {r.change}"
                      for r in compared[reversed_ | verdict].itertuples())
    return (f"**Reading**: of {plural(len(compared), 'comparison')} with seeds at both lengths, "
            f"{reversed_.sum()} changed direction and {verdict.sum()} changed verdict from {epochs(short)} to "
            f"{epochs(long)}" + (f": {named}." if named else "."))


def lengths_section(compared: pd.DataFrame, short: str, long: str, recipe: str, figure: str | None,
                    trained: str) -> str:
    intro = (f"Where the {profile_words(short)} and the {profile_words(long)} both have runs of the same cells and "
             f"seeds under the {recipe} recipe: each claim's Δ at both lengths, paired by seed on the seeds both "
             "have (n), as in the claims above. Did the direction or the verdict change with training length?")
    lines = [f"## {epochs(short)} and {epochs(long)}: the claims at two lengths of training", "", intro, ""]
    if compared.empty:
        none = ("No comparison yet has both of its cells at both lengths on the same seeds (a claim's Δ needs its "
                "baseline and its treatment, at each length).")
        return "\n".join([*lines, none, ""])
    header = ["Claim", "Dataset", "Comparison", "n", f"Δ at {epochs(short)} (95% CI)", "verdict",
              f"Δ at {epochs(long)} (95% CI)", "verdict", "paper Δ", "What changed"]
    rows = [[f"({r.claim})", label(r.dataset), r.comparison, str(min(r.n_short, r.n_long)),
             f"{fmt(r.mean_diff_short, sign=True)} {ci_text(r.ci_low_short, r.ci_high_short)}", r.verdict_short,
             f"{fmt(r.mean_diff_long, sign=True)} {ci_text(r.ci_low_long, r.ci_high_long)}", r.verdict_long,
             fmt(r.paper_diff, sign=True), r.change] for r in compared.itertuples()]
    lines += [lengths_reading(compared, short, long), "", trained, "", *md_table(header, rows), ""]
    return "\n".join(lines + ([f"![{Path(figure).stem}]({figure})", ""] if figure else []))


def recipes_section(compared: pd.DataFrame, profile: str, trained: str) -> str:
    first, second = RECIPES
    intro = (f"Where both recipes have runs of the same cells and seeds in the {profile_words(profile)}: per cell "
             f"Δ = {first} − {second} test accuracy (points), paired by seed, with its 95% CI: what the "
             f"{recipe_text([first])} gains (or costs) against the {recipe_text([second])}.")
    lines = [f"## The {first} recipe against the {second} recipe", "", intro, ""]
    if compared.empty:
        return "\n".join([*lines, "No cell has runs of both recipes on the same seeds yet.", ""])
    order = {d: i for i, d in enumerate(table_datasets())}
    compared = compared.sort_values(["table", "dataset"], key=lambda c: c.map(order) if c.name == "dataset" else c,
                                    kind="stable")
    header = ["Table", "Dataset", "Column", "n", f"{first} (%)", f"{second} (%)", f"Δ {first} − {second} (pp)",
              "95% CI", "p", "Verdict"]
    rows = [[f"Table {r.table[-1]}", label(r.dataset), COLUMNS[r.column].label, str(r.n), fmt(r.first),
             fmt(r.second), fmt(r.mean_diff, sign=True), ci_text(r.ci_low, r.ci_high),
             "n/a" if pd.isna(r.p) else f"{r.p:.3g}", f"**{r.verdict}** ({r.reason})"]
            for r in compared.itertuples()]
    # a cell with one paired seed has no interval: counting it "indistinguishable" would claim a test not made
    single = compared[compared["n"] < 2]
    gains = compared.loc[compared["n"] >= 2, "verdict"].value_counts()
    parts = []
    if len(single) < len(compared):
        parts.append(f"the {first} recipe is ahead in {gains.get('supported', 0)}, behind in "
                     f"{gains.get('contradicted', 0)} and indistinguishable in {gains.get('inconclusive', 0)} of "
                     f"{plural(len(compared) - len(single), 'cell')} with 2 or more paired seeds (95% CI).")
    if len(single):
        parts.append(f"{plural(len(single), 'cell')} with one paired seed, no interval yet: there the {first} "
                     f"recipe is ahead in {(single['mean_diff'] > 0).sum()} and behind in "
                     f"{(single['mean_diff'] < 0).sum()}.")
    reading = "**Reading**: " + " ".join(parts)
    return "\n".join([*lines, reading, "", trained, "", *md_table(header, rows), ""])


def figure_note(kind: str, table: str | None, dataset: str | None) -> str:
    """What the figure shows and what to look at, in a sentence."""
    if kind == "curves":
        return ("**Learning curves**: the test accuracy after each epoch, per column the mean over seeds with a "
                "band of their spread; look at whether the columns still climb at the end (training too short "
                "for the question) and at when their order settles.")
    if kind == "trend":
        return (f"**{make_figures.TREND_TITLES[table]}**: per data set, the accuracy each FlexPool column "
                "gains over AvgPool, ours beside the paper's; look at whether our points climb from left to "
                "right as the paper's do, and whether their error bars clear 0.")
    return (f"**Learned FlexPool weights, {label(dataset)}, Table {table[-1]}**: the weights × H·W, "
            "so 1 is average pooling; look for structure far from 1 (red: pixels that count more than in "
            "average pooling, blue: less) and for the weight sums' histogram at 1, where Eq. 2 pulls them.")


def figures_section(drawn: list[tuple[str, str, str | None, str | None]]) -> str:
    lines = ["## Figures", ""]
    for name, kind, table, dataset in drawn:
        lines += [figure_note(kind, table, dataset), "", f"![{Path(name).stem}]({name})", ""]
    return "\n".join(lines)


def launch_flags(runs: pd.DataFrame) -> str:
    """The launch options the records share: their compile mode and, where all ran on CPUs, how many ran side by
    side (a share of the cores each), which sets both the speed and the threads each run computed with."""
    modes = compile_modes(runs).dropna().unique()
    flags = f" --compile {modes[0]}" if len(modes) == 1 else ""
    side_by_side = (runs["cpus"] // runs["threads"]).unique() if runs["device_type"].eq("cpu").all() else []
    if len(side_by_side) == 1 and side_by_side[0] > 1:
        flags += f" --executor local --runs-per-gpu {side_by_side[0]:.0f}"
    return flags


def plan_commands(args, seeds: int, runs: pd.DataFrame) -> tuple[str, str, str]:
    """The launch, status and report commands of the plan (all of it, or the data sets --datasets names), the
    launch with the options the records share."""
    only = "" if set(args.datasets) == set(table_datasets()) else f" --datasets {' '.join(args.datasets)}"
    plan = f"all --seeds {seeds}{only} --profile {args.profile} --recipe {args.recipe}"
    report = (f"python -m analysis.make_report --profile {args.profile} --recipe {args.recipe} "
              f"--seeds {seeds}{only} --spread {args.spread}")
    return f"python -m repro.launch {plan}{launch_flags(runs)}", f"python -m repro.status {plan}", report


def reproduce(args, seeds: int, runs: pd.DataFrame) -> str:
    launch, status, report = plan_commands(args, seeds, runs)
    commands = ['pip install -r requirements.lock -e ".[dev]"   # in a fresh virtual environment: the versions it pins',
                f"{launch}   # trains the runs; those with records are skipped",
                f"{status}   # how many are done", report]
    return "\n".join(["## How to reproduce this page", "", REPRODUCE_WHERE, "", "```bash", *commands, "```",
                      "", REPRODUCE_OTHERS, ""])


def page(loaded: Loaded, claims: pd.DataFrame, drawn, args, seeds: int, comparisons: list[str]) -> str:
    profile, recipe = args.profile, args.recipe
    made = (f"Made by `python -m analysis.make_report` from {plural(len(loaded.runs), 'run record')} of this "
            "profile and recipe and the paper's transcribed numbers (`results/paper/`); every number below "
            "comes from them.")
    head = [f"# FlexPooling reproduction: {profile} profile, {recipe} recipe", "", made, ""]
    return "\n".join([*head, what_was_run(loaded, profile, recipe, seeds, args.datasets),
                      tables(loaded.summary, args.spread, profile, recipe),
                      claims_section(claims, loaded.summary, profile, recipe), seeds_section(claims),
                      *comparisons, figures_section(drawn), reproduce(args, seeds, loaded.runs)])


README_END = "<!-- end of results -->"


def limits(profile: str) -> str:
    """What runs of a shorter profile can and cannot say about the paper's claims, in plain words."""
    epochs, paper = PROFILES[profile]["epochs"], PROFILES["full"]["epochs"]
    if epochs >= paper:
        return ""
    return (f"What this can say: how the columns compare when ResNet20 trains for {epochs} epochs instead of "
            f"{paper} (the same one-cycle schedule, compressed), on the data sets above, with the spread "
            "between seeds measured rather than assumed. What it cannot say: whether a gain the paper reports "
            f"after {paper} epochs holds there. Short training leaves every column below its converged "
            "accuracy, so the absolute numbers sit below the paper's, and a difference between columns can "
            f"grow, shrink or reverse as training goes on. A verdict here is about {epochs}-epoch training "
            f"only; the {paper}-epoch runs (`--profile full`) settle the paper's claims.")


def other_pages(args, everything: pd.DataFrame, out: Path) -> str:
    """'Other records: 3 runs of the full profile (100 epochs, the paper's), paper recipe (their page: LINK).': the
    profiles and recipes of the records beside this page's, so the README names what else is under way."""
    counts = everything[everything["table"].isin(list(TABLES)) & (everything["eval_split"] == "test")].groupby(
        ["profile", "recipe"]).size()
    base = Path(args.readme).resolve().parent
    parts = []
    for (profile, recipe), n in counts.items():
        if (profile, recipe) == (args.profile, args.recipe) or profile not in PROFILES:
            continue
        page_path = out.parent.parent / profile / recipe / PAGE  # beside this page, as out_dir lays them out
        link = page_path.resolve().relative_to(base).as_posix() if page_path.is_file() else ""
        parts.append(f"{plural(n, 'run')} of the {profile_words(profile)}, {recipe} recipe"
                     + (f" (their page: [{link}]({link}))" if link else ""))
    return f"Other records: {'; '.join(parts)}." if parts else ""


def readme_section(loaded: Loaded, claims: pd.DataFrame, drawn, args, seeds: int, page_path: Path,
                   others: str = "") -> str:
    """The top-level README's Results: this page in brief, every number from the same records, and a line on the
    records of other profiles and recipes."""
    runs, summary, profile, recipe = loaded.runs, loaded.summary, args.profile, args.recipe
    base = Path(args.readme).resolve().parent
    link = page_path.resolve().relative_to(base).as_posix()
    ran = [d for d in table_datasets() if summary.loc[summary["dataset"] == d, "n"].sum()]
    rows = [[f"Table {table[-1]}, {label(d)}", *md_cells(summary, recipe, table, d, args.spread)]
            for d in ran for table in TABLES]
    figure = next((name for name, kind, *_ in drawn if kind == "trend"), None)
    launch, _, report = plan_commands(args, seeds, runs)
    start = (f"<!-- results: written by {report} --readme {args.readme}; made from the records, not edited "
             "by hand -->")
    intro = (f"**{profile_words(profile).capitalize()}, {recipe_text([recipe])}**: "
             f"{completed(runs, seeds, args.datasets)}; {compute(runs)}; {provenance(runs)}. Trained by "
             f"`{launch}`. The whole page, with each claim's Holm-adjusted p, whether the paper's Δ fits our "
             f"interval and the seeds that would settle it: [{link}]({link}).")
    lines = [start, "", intro, "", *([others, ""] if others else []),
             *md_table(["Test accuracy (%)", *(COLUMNS[c].label for c in COLUMNS)], rows), ""]
    if not claims.empty:
        lines += [f"The paper's claims, paired by seed ({CLAIMS_METHOD_SHORT}):", "",
                  *md_table(CLAIM_HEADER, [claim_cells(r) for r in claims.itertuples()]), ""]
    if figure:
        lines += [f"![{Path(figure).stem}]({(page_path.parent / figure).resolve().relative_to(base).as_posix()})",
                  ""]
    caveat = limits(profile)
    return "\n".join([*lines, *([caveat, ""] if caveat else []), README_END])


CLAIMS_METHOD_SHORT = (f"Δ in points, its {stats.CONFIDENCE:.0%} CI from the t distribution, p of the paired "
                       "t-test; supported or contradicted where the CI excludes 0")


def write_readme(path: Path, section: str) -> None:
    """Replace the README's Results block (from its start marker to README_END) by `section`."""
    text = path.read_text() if path.is_file() else ""
    start = text.find("<!-- results: ")
    end = text.find(README_END, start)
    if start < 0 or end < 0:
        raise collect.AnalysisError(f"{path} has no results block to replace: put a line starting with "
                                    f"'<!-- results: ' and, below it, '{README_END}' where it goes")
    text = text[:start] + section + text[end + len(README_END):]
    atomic_write(path, lambda f: f.write(text.encode()))


def parse_args(argv=None):
    parser = output_parser("python -m analysis.make_report", __doc__, "report")
    parser.add_argument("--seeds", type=int,
                        help="seeds per cell the campaign plans, for the runs planned and the commands "
                             "(default: the highest seed in the records + 1)")
    parser.add_argument("--datasets", nargs="+", default=list(table_datasets()), choices=table_datasets(),
                        metavar="D", help="the data sets the campaign plans, for the runs planned and the "
                                          "commands (default: all four)")
    parser.add_argument("--readme", metavar="FILE",
                        help="also write this page in brief into FILE's results block (README.md's Results)")
    args = parser.parse_args(argv)
    if args.profile not in PROFILES or args.recipe not in RECIPES:
        parser.error("a page tells of one profile and one recipe: --profile any and --recipe both do not "
                     "apply")
    if args.seeds is not None and args.seeds < 1:
        parser.error(f"--seeds must be at least 1, got {args.seeds}")
    return args


def comparisons(args, loaded: Loaded, everything: pd.DataFrame, out: Path) -> list[str]:
    """The sections that set this page's runs beside another profile's (the same claims at another length of
    training) and the other recipe's (the same cells), on the cells and seeds both have; a figure for the first.
    `everything`: the usable runs of the page's data sets, of every profile and recipe."""
    sections = []
    for other in (p for p in LENGTHS if args.profile in LENGTHS and p != args.profile):
        theirs = collect.select(everything, other, args.recipe)[0]
        if theirs.empty:
            continue
        short, long = sorted((args.profile, other), key=lambda p: PROFILES[p]["epochs"])
        pair = {args.profile: loaded.runs, other: theirs}
        compared = stats.across_profiles(pair[short], pair[long], loaded.paper, table_datasets(), args.recipe)
        figure = None
        if not compared.empty:
            fig = make_figures.lengths_figure(compared, short, long, args.recipe)
            figure = make_figures.save(fig, out, f"epochs-{short}-{long}", formats=("png",))[0].name
        trained = how_trained({epochs(p): pair[p] for p in (short, long)}, "training length")
        sections.append(lengths_section(compared, short, long, args.recipe, figure, trained))
    first, second = (collect.select(everything, args.profile, recipe)[0] for recipe in RECIPES)
    if not (first.empty or second.empty):
        trained = how_trained({f"{recipe} recipe": runs for recipe, runs in zip(RECIPES, (first, second))}, "recipe")
        sections.append(recipes_section(stats.across_recipes(first, second), args.profile, trained))
    return sections


def main(argv=None) -> None:
    args = parse_args(argv)
    loaded, out = load_summary(args, args.datasets), out_dir(args)
    seeds = args.seeds or (int(loaded.runs["seed"].max()) + 1 if len(loaded.runs) else 1)
    claims = stats.assess(stats.evaluate_claims(loaded.runs, loaded.paper, table_datasets(), [args.recipe]))
    # make_figures' figures as PNGs next to the page: (file name, kind, table, data set) for each
    drawn = [(make_figures.save(fig, out, stem, formats=("png",))[0].name, kind, table, dataset)
             for stem, kind, table, dataset, fig in make_figures.figures(loaded.runs, loaded.summary, args.spread,
                                                                          args.profile, [args.recipe])]
    everything = (collect.load_wandb(args.from_wandb) if args.from_wandb else collect.load_runs(args.runs))[0]
    everything = everything[everything["dataset"].isin(args.datasets)]
    text = page(loaded, claims, drawn, args, seeds, comparisons(args, loaded, everything, out))
    atomic_write(out / PAGE, lambda f: f.write(text.encode()))
    for png in out.glob("*.png"):  # drawn for an earlier page (other data sets, a comparison since gone)
        if f"]({png.name})" not in text:
            png.unlink()
    if args.readme:
        write_readme(Path(args.readme), readme_section(loaded, claims, drawn, args, seeds, out / PAGE,
                                                       other_pages(args, everything, out)))
    print(f"wrote {out / PAGE} and {plural(len(drawn), 'figure')} ({plural(len(loaded.runs), 'run')}, "
          f"{plural(len(loaded.skipped), 'record')} skipped)", file=sys.stderr)


if __name__ == "__main__":
    collect.run_cli(main)
