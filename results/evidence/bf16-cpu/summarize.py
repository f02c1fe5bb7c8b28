"""Prints the table in README.md from the run records beside this file: python summarize.py"""

import json
from pathlib import Path

records = {path.stem: json.loads(path.read_text()) for path in sorted(Path(__file__).parent.glob("*.json"))}
print("| record | precision (as trained) | compile | seed | test accuracy after each epoch | final train loss "
      "| images/s | CPU, bf16 units, threads |")
print("|---|---|---|---|---|---|---|---|")
for name, r in records.items():
    c, env = r["config"], r["env"]
    epochs = ", ".join(f"{h['eval_accuracy']:.2%}" for h in r["history"])
    trained = env.get("precision") or ("bf16" if c["precision"] == "bf16" or env["cpu_bf16_units"] != "none" and
                                       c["precision"] == "auto" else "fp32")  # records before env.precision
    print(f"| {name} | {c['precision']} ({trained}) | {c['compile']} | {c['seed']} "
          f"| {epochs} | {r['metrics']['train_loss']:.4f} | {r['timing']['images_per_s']:.0f} "
          f"| {env['device']}, {env['cpu_bf16_units']}, {env['threads']} |")
print()
for column in ("avgpool", "heaviest"):
    acc = {k.removeprefix(column + "-"): r["metrics"]["accuracy"] for k, r in records.items() if k.startswith(column)}
    if len(acc) == 3:
        print(f"- {column}: bf16 - fp32 at seed 0: {(acc['bf16-seed0'] - acc['fp32-seed0']) * 100:+.2f} points; "
              f"bf16 seed 1 - seed 0: {(acc['bf16-seed1'] - acc['bf16-seed0']) * 100:+.2f} points")
