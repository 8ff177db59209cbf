"""The report of the training-quality study: ``report.md`` (final validation losses, times,
fallbacks, the dash-eigen against upstream-eigen equivalence check) and ``quality.png``, from the
per-run logs ``<out>/<run>/seed<k>.json`` that ``scripts/quality_study.py`` writes.
"""

import json
import math
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from distributed_shampoo_dash.benchmarks.quality_runs import ROUNDING_NOISE, RUNS

EQUIVALENCE_TOLERANCE = 1e-3


def load_logs(out: Path) -> dict[str, list[dict[str, Any]]]:
    """Logs under ``out`` by run name (in :data:`RUNS` order, then unknown names), seeds sorted."""
    logs: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(out.glob("*/seed*.json")):
        log = json.loads(path.read_text())
        logs.setdefault(log["config"]["run"], []).append(log)
    order = [name for name in RUNS if name in logs] + sorted(set(logs) - set(RUNS))
    return {name: sorted(logs[name], key=lambda log: log["config"]["seed"]) for name in order}


def curve(log: dict[str, Any]) -> dict[int, float]:
    """Validation loss by step."""
    return {point["step"]: point["val_loss"] for point in log["points"]}


def curve_differences(
    logs: dict[str, list[dict[str, Any]]], reference: str, candidate: str
) -> dict[int, float] | None:
    """Max |validation loss difference| between two runs at their logged points, per common seed.

    ``inf`` for a seed whose two logs hold different steps (one of them stopped early); ``None``
    when no seed has logs of both runs.
    """
    curves = {
        name: {log["config"]["seed"]: curve(log) for log in logs.get(name, [])}
        for name in (reference, candidate)
    }
    seeds = sorted(set(curves[reference]) & set(curves[candidate]))
    if not seeds:
        return None
    result = {}
    for seed in seeds:
        a, b = curves[reference][seed], curves[candidate][seed]
        result[seed] = max(abs(a[s] - b[s]) for s in a) if a.keys() == b.keys() else math.inf
    return result


def equivalence(logs: dict[str, list[dict[str, Any]]]) -> dict[int, float] | None:
    """The check: dash-eigen against upstream-eigen (see :func:`curve_differences`)."""
    return curve_differences(logs, "upstream-eigen", "dash-eigen")


def summary_rows(logs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per run: final validation loss over the finite seeds, times, fallbacks, failures."""
    rows = []
    for name, runs in logs.items():
        finals = [log["points"][-1]["val_loss"] for log in runs if log["finite"] and log["points"]]
        times = [
            log["optimizer_ms_mean"] for log in runs if log.get("optimizer_ms_mean") is not None
        ]
        fallbacks: Counter[str] = Counter()
        for log in runs:
            fallbacks.update(log.get("fallbacks") or {})
        rows.append(
            {
                "run": name,
                "seeds": [log["config"]["seed"] for log in runs],
                "steps": max(
                    (log["points"][-1]["step"] for log in runs if log["points"]), default=0
                ),
                "final_mean": statistics.fmean(finals) if finals else math.nan,
                "final_spread": (max(finals) - min(finals)) / 2 if finals else math.nan,
                "optimizer_ms": statistics.fmean(times) if times else math.nan,
                "fallbacks": dict(fallbacks),
                "finite": sum(log["finite"] for log in runs),
                "failures": [
                    (log["config"]["seed"], log["failure"]) for log in runs if log["failure"]
                ],
                "epsilon": runs[0]["config"].get("epsilon"),
            }
        )
    return rows


def markdown_report(logs: dict[str, list[dict[str, Any]]]) -> str:
    """The results table, the failures and the dash-eigen vs upstream-eigen check."""
    lines = [
        (
            "| run | seeds | steps | final val loss (nats/byte), mean ± spread | opt ms/step | "
            "DASH fallbacks (eigh/replayed) | finite |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    rows = summary_rows(logs)
    for row in rows:
        fallbacks = row["fallbacks"]
        lines.append(
            f"| {row['run']} | {','.join(map(str, row['seeds']))} | {row['steps']} "
            f"| {final_text(row)} | {row['optimizer_ms']:.2f} "
            f"| {fallbacks.get('eigh', 0)}/{fallbacks.get('replayed', 0)} "
            f"| {row['finite']}/{len(row['seeds'])} |"
        )
    lines.append("")
    lines.append(
        "Spread: half of (max - min) over the finite seeds. Shampoo epsilon per run: "
        + ", ".join(
            f"{row['run']} {row['epsilon']:g}" for row in rows if row["epsilon"] is not None
        )
        + "."
    )
    failures = [(row["run"], seed, failure) for row in rows for seed, failure in row["failures"]]
    lines.append("")
    lines.append("Failures: none." if not failures else "Failures (run, seed, step: cause):")
    for run, seed, failure in failures:
        lines.append(f"- {run} seed {seed}, step {failure['step']}: {failure['cause']}")
    lines.append("")
    lines.append(equivalence_text(logs))
    return "\n".join(lines) + "\n"


def final_text(row: dict[str, Any]) -> str:
    """``mean ± spread``, or why there is none."""
    if row["finite"] == 0:
        return "no finite seed"
    return f"{row['final_mean']:.4f} ± {row['final_spread']:.4f}"


def equivalence_text(logs: dict[str, list[dict[str, Any]]]) -> str:
    """The dash-eigen vs upstream-eigen check in words, with the noise floor when it was run."""
    differences = equivalence(logs)
    if differences is None:
        return (
            "dash-eigen vs upstream-eigen: not checked "
            "(logs of both runs with a common seed needed)."
        )
    ok = all(value <= EQUIVALENCE_TOLERANCE for value in differences.values())
    text = (
        f"dash-eigen reproduces upstream-eigen's validation curve within "
        f"{EQUIVALENCE_TOLERANCE:g} at every logged point: {'PASS' if ok else 'FAIL'} "
        f"(max abs difference {per_seed_text(differences)})."
    )
    floor = curve_differences(logs, "upstream-eigen", "upstream-eigen-perturbed")
    if floor is not None:
        text += (
            f"\nNoise floor: upstream-eigen vs upstream-eigen-perturbed (gradients x (1 + "
            f"{ROUNDING_NOISE:g} N(0,1))): max abs difference {per_seed_text(floor)}."
        )
    return text


def per_seed_text(differences: dict[int, float]) -> str:
    return ", ".join(f"seed {seed}: {value:.2e}" for seed, value in differences.items())


def band(
    logs: list[dict[str, Any]], x_key: str
) -> tuple[list[float], list[float], list[float], list[float]]:
    """x (mean over seeds), mean, min and max validation loss at each step logged by any seed."""
    by_step: dict[int, list[tuple[float, float]]] = {}
    for log in logs:
        for point in log["points"]:
            if math.isfinite(point["val_loss"]):
                by_step.setdefault(point["step"], []).append((point[x_key], point["val_loss"]))
    steps = sorted(by_step)
    xs = [statistics.fmean(x for x, _ in by_step[s]) for s in steps]
    ys = [[y for _, y in by_step[s]] for s in steps]
    return xs, [statistics.fmean(y) for y in ys], [min(y) for y in ys], [max(y) for y in ys]


def plot(logs: dict[str, list[dict[str, Any]]], path: Path) -> bool:
    """Validation loss vs step and vs training wall time; ``False`` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed; no PNG written.")
        return False
    figure, axes = plt.subplots(1, 2, figsize=(13, 5))
    for name, runs in logs.items():
        for axis, key in zip(axes, ("step", "wall_s"), strict=True):
            xs, mean, low, high = band(runs, key)
            (line,) = axis.plot(xs, mean, label=name, linewidth=1.2)
            axis.fill_between(xs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    for axis, label in zip(axes, ("step", "training wall time (s)"), strict=True):
        axis.set_xlabel(label)
        axis.set_ylabel("validation loss (nats/byte)")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle("byte-level Llama on stdlib sources: mean over seeds, min/max band")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def report(out: Path) -> int:
    """Writes ``report.md`` and ``quality.png`` from the logs in ``out``; 1 if the check fails."""
    logs = load_logs(out)
    if not logs:
        print(f"no logs under {out}")
        return 1
    text = markdown_report(logs)
    (out / "report.md").write_text(text)
    print(text, end="")
    written = [out / "report.md"]
    if plot(logs, out / "quality.png"):
        written.append(out / "quality.png")
    print(f"wrote {' and '.join(map(str, written))}")
    differences = equivalence(logs)
    return int(differences is not None and max(differences.values()) > EQUIVALENCE_TOLERANCE)
