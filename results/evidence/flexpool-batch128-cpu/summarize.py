"""Prints the tables in README.md from the run records beside this file: python summarize.py"""

import itertools
import json
from collections import defaultdict
from pathlib import Path

runs = defaultdict(list)
print("| record | lr | FlexPool lr scale | training loss by epoch | test acc |")
print("|---|---|---|---|---|")
for path in sorted(Path(__file__).parent.glob("*.json")):
    r = json.loads(path.read_text())
    c, losses = r["config"], [e["train_loss"] for e in r["history"]]
    rose = any(b > a for a, b in itertools.pairwise(losses))
    runs[path.stem.rsplit("-seed", 1)[0]].append((r["metrics"]["accuracy"], rose))
    print(f"| {path.stem} | {c['lr']:g} | {c['flex_lr_scale']:g} | {' -> '.join(f'{x:.2f}' for x in losses)}"
          f"{' (rose)' if rose else ''} | {r['metrics']['accuracy']:.2%} |")
print()
print("| setting | seeds | test acc min..max | seeds whose training loss rose in an epoch |")
print("|---|---|---|---|")
for name, results in runs.items():
    accuracies = [a for a, _ in results]
    print(f"| {name} | {len(results)} | {min(accuracies):.2%}..{max(accuracies):.2%} | {sum(r for _, r in results)} |")
