"""The GPU report's files: ``report.md`` (environment, parts, targets, each part's tables and the
plots that were written) and ``report.json``."""

import dataclasses
import datetime
import json
import platform
from pathlib import Path
from typing import Any

import torch

from distributed_shampoo_dash.benchmarks.gpu_plan import PARTS
from distributed_shampoo_dash.benchmarks.gpu_targets import Target, evaluate_targets


def environment(device: torch.device) -> dict[str, Any]:
    """The machine and software the report was measured on."""
    info: dict[str, Any] = {
        "device": device.type,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info |= {
            "gpu": torch.cuda.get_device_name(device),
            "gpu_memory_gb": round(properties.total_memory / 1e9, 1),
            "compute_capability": list(torch.cuda.get_device_capability(device)),
            "cuda": torch.version.cuda,
        }
    else:
        info["gpu"] = None
    return info


def targets_table(targets: list[Target]) -> str:
    lines = ["| target | goal | measured | measured / goal | status |", "|---|---|---|---|---|"]
    lines += [
        (
            f"| {t.name} | {t.goal} | {t.value} | "
            f"{'-' if t.ratio is None else f'{t.ratio:.2f}'} | {t.status} |"
        )
        for t in targets
    ]
    return "\n".join(lines)


#: The line of the report in place of a plot that was not written.
NO_PLOT = "No plot: plots need matplotlib (`pip install matplotlib`)."


def plot_link(out: Path, name: str | None, title: str) -> str:
    """The Markdown image ``out / name`` if a part wrote it and it exists, else :data:`NO_PLOT`."""
    return f"![{title}]({name})" if name is not None and (out / name).is_file() else NO_PLOT


def markdown_report(report: dict[str, Any], out: Path) -> str:
    """``report.md`` in ``out``: environment, elapsed per part, targets, then each part's tables
    and the plots that exist."""
    info = report["environment"]
    machine = info["gpu"] or f"CPU ({info['cpu_threads']} threads)"
    lines = [
        "# GPU report",
        "",
        f"{machine}, torch {info['torch']}"
        + (f", CUDA {info['cuda']}" if info.get("cuda") else "")
        + f", Python {info['python']}, {info['date']}.",
        f"Command: `{report['command']}`"
        + (" (smoke run: tiny shapes, the statuses mean nothing)" if report["smoke"] else ""),
        "",
        "| part | status | elapsed (s) |",
        "|---|---|---|",
    ]
    for name in PARTS:
        part = report["parts"].get(name)
        lines.append(
            f"| {name} | {'not run' if part is None else part['status']} | "
            f"{'-' if part is None else format(part['elapsed_s'], '.1f')} |"
        )
    lines += ["", "## Targets", "", targets_table([Target(**t) for t in report["targets"]]), ""]

    tests = report["parts"].get("tests")
    if tests is not None:
        lines += ["## Tests (`pytest -m cuda`)", ""]
        if tests["status"] == "ok":
            lines.append(
                f"{tests['passed']} passed, {tests['failures']} failed, {tests['errors']} errors, "
                f"{tests['skipped']} skipped ({tests['pytest_time_s']:.1f} s): `{tests['command']}`"
            )
            lines += [
                f"- {f['kind']}: `{f['test']}`: {f['message']}" for f in tests["failed_tests"]
            ]
        else:
            lines += ["```", tests["error"], "```"]
        lines.append("")

    step = report["parts"].get("step")
    if step is not None:
        lines += [f"## Step benchmark (`{step.get('preset', '-')}` preset)", ""]
        if step["status"] == "ok":
            lines.append(f"DashGpu: {step['dashgpu']}.")
            for run in step["runs"]:
                frequency = run["settings"]["precondition_frequency"]
                lines += ["", f"### Roots every {frequency} step(s)", "", run["table"]]
                if run["costs_table"]:
                    lines += [
                        "",
                        "Step costs (one step without and one with roots):",
                        "",
                        run["costs_table"],
                    ]
                if run["results"]:
                    lines += ["", plot_link(out, run.get("plot"), "step times")]
        else:
            lines += ["```", step["error"], "```"]
        lines.append("")

    solvers = report["parts"].get("solvers")
    if solvers is not None:
        lines += [f"## Solver benchmark (`{solvers.get('preset', '-')}` preset, root 4)", ""]
        if solvers["status"] == "ok":
            lines += [solvers["peak_table"], ""]
            for shape, table in solvers["tables"].items():
                lines += [
                    f"### Stack {shape}: error median / max (fraction flagged)",
                    "",
                    table,
                    "",
                ]
            lines.append(plot_link(out, solvers.get("plot"), "error against time"))
        else:
            lines += ["```", solvers["error"], "```"]
        lines.append("")
    return "\n".join(lines)


def write_report(report: dict[str, Any], out: Path) -> None:
    report["targets"] = [dataclasses.asdict(t) for t in evaluate_targets(report["parts"])]
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "report.md").write_text(markdown_report(report, out))
