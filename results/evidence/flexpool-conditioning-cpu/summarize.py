"""Prints the table in README.md from the run records beside this file: python summarize.py"""

import json
from pathlib import Path

import numpy as np

print("| record | pool | SAC | reg | flex lr scale | status | last train loss | val acc | final pool: mean abs(sum-1), "
      "sums min..max | weights min..max (channel mean and 4 channels) | first SAC head (28x28): mean abs(sum-1) |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for path in sorted(Path(__file__).parent.glob("*.json")):
    r = json.loads(path.read_text())
    c, pools = r["config"], r["flexpool"]
    cells = [path.stem, c["pool"], "yes" if c["sac"] else "no", f"{c['reg']:g}", f"{c['flex_lr_scale']:g}", r["status"],
             f"{r['history'][-1]['train_loss']:.3g}", f"{r['metrics']['accuracy']:.2%}"]
    for name in ("pool", "heads.0.pool"):
        if name not in pools:
            cells += ["--"] * (2 if name == "pool" else 1)
            continue
        sums = np.asarray(pools[name]["sums"])
        dev = f"{np.abs(sums - 1).mean():.3f}"
        if name == "pool":
            weights = np.concatenate([np.ravel(pools[name]["channel_mean"]), np.ravel(pools[name]["channels"])])
            cells += [f"{dev}, {sums.min():.2f}..{sums.max():.2f}", f"{weights.min():.4f}..{weights.max():.4f}"]
        else:
            cells.append(dev)
    print(f"| {' | '.join(cells)} |")
