"""The evaluation report: report.json (every number), report.md (tables) and PNGs (confusion
matrix, precision/recall against magnitude, one held-out image with true, predicted and SEP
sources marked, with a lensing head the lensing maps of :mod:`.lensing_report`, and with
posterior samples the reliability diagram of :mod:`.calibration_report`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from hpc_bliss.evaluate import calibration_report
from hpc_bliss.evaluate.lensing_report import lensing_png, markdown_lines
from hpc_bliss.evaluate.scoring import Example, Report


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _detection_lines(report: Report) -> list[str]:
    """Precision, recall and F1 by both matching rules, overall and by magnitude."""
    slack = report["matching"]["position"]["max_distance_px"]
    methods = {
        "encoder, position": report["encoder"],
        "encoder, 0.5 px + 0.5 mag": report["encoder_strict"],
        "SEP, position": report["sep"],
        "SEP, 0.5 px + 0.5 mag": report["sep_strict"],
    }
    head = "| | " + " | ".join(methods) + " |"
    rule = "|---|" + "---|" * len(methods)
    lines = [
        "",
        "## Detection by two matching rules",
        "",
        f"Position: a prediction within {'n/a' if slack is None else f'{slack:g}'} px of a true "
        "source; literature rule: within 0.5 px **and** 0.5 mag in r. Both are one-to-one "
        "(Hungarian) matchings that maximise the number of admissible pairs.",
        "",
        head,
        rule,
    ]
    for key in ("precision", "recall", "f1"):
        lines.append(f"| {key} | " + " | ".join(_fmt(m[key]) for m in methods.values()) + " |")
    lines += ["", "F1 by r magnitude (precision binned by predicted, recall by true magnitude):"]
    lines += ["", head.replace("| |", "| r mag |", 1), rule]
    tables = [m["detection"]["f1_by_mag"] for m in methods.values()]
    for i, label in enumerate(tables[0]["labels"]):
        lines.append(f"| {label} | " + " | ".join(_fmt(t["rates"][i]) for t in tables) + " |")
    return lines


def _ratio_cell(table: dict, m: int, b: int) -> str:
    n = table["n"][m][b]
    if not n:
        return "–"
    return (
        f"{table['median'][m][b]:+.3f} [{table['p16'][m][b]:+.3f}, {table['p84'][m][b]:+.3f}] ({n})"
    )


def _flux_lines(report: Report, bands: list[str] | None) -> list[str]:
    """Flux MAPE (a mean) and the robust bias and scatter of pred/true - 1 by both rules."""
    enc = report["encoder"]["detection"]
    lines = [
        "",
        "## Fluxes of matched sources",
        "",
        "Flux MAPE per band, the **mean** of |pred/true − 1| over pairs matched by position "
        "(dominated by the few faint true sources paired with a brighter neighbour's "
        "prediction): " + ", ".join(_fmt(x) for x in (enc.get("flux_mape") or [])),
    ]
    rules = {"position": enc, "0.5 px + 0.5 mag": report["encoder_strict"]["detection"]}
    for rule, det in rules.items():
        table = det.get("flux_ratio")
        if not table:
            continue
        names = bands or [str(b) for b in range(len(table["all"]))]
        bright = ", ".join(
            f"{n} {_fmt(v)}" for n, v in zip(names, table["bright_median_abs_error"], strict=True)
        )
        lines += [
            "",
            f"Encoder, pairs matched by {rule}: median |pred/true − 1| for true r < "
            f"{table['bright_mag']:g}: {bright}. Bias and scatter of pred/true − 1 by true r "
            "magnitude: median [16th, 84th percentile] (pairs)",
            "",
            "| true r | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for m, label in enumerate(table["labels"]):
            cells = [_ratio_cell(table, m, b) for b in range(len(names))]
            if any(c != "–" for c in cells):
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines + _sep_flux_lines(report)


def _sep_flux_lines(report: Report) -> list[str]:
    """SEP's r-band aperture fluxes: the same bias and scatter, both rules side by side."""
    tables = [report[k]["detection"].get("flux_ratio") for k in ("sep", "sep_strict")]
    if not tables[0]:
        return []
    r = next(b for b, x in enumerate(tables[0]["all"]) if x["n"])  # the band SEP measures
    lines = [
        "",
        "SEP (its one measured band, r: circular-aperture sums), pred/true − 1:",
        "",
        "| true r | position | 0.5 px + 0.5 mag |",
        "|---|---|---|",
    ]
    for m, label in enumerate(tables[0]["labels"]):
        cells = [_ratio_cell(t, m, r) if t else "–" for t in tables]
        if any(c != "–" for c in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def markdown(report: Report, bands: list[str] | None = None) -> str:
    e, s, m = report["encoder"], report["sep"], report["most_frequent"]
    rows = [
        (
            "n_sources accuracy",
            e["n_sources_accuracy"],
            s["n_sources_accuracy"],
            m["n_sources_accuracy"],
        ),
        ("n_sources within ±1", e["n_sources_within_1"], s["n_sources_within_1"], None),
        ("detection precision", e["precision"], s["precision"], None),
        ("detection recall", e["recall"], s["recall"], None),
        ("detection F1", e["f1"], s["f1"], None),
        (
            "star/galaxy accuracy (matched)",
            e["classification_accuracy"],
            s["classification_accuracy"],
            None,
        ),
    ]
    lines = [
        "# hpc-bliss evaluation",
        "",
        f"- checkpoint: `{report['checkpoint']}`",
        f"- test shards: {report['test_shards']} ({report['processes']} process(es))",
        f"- interior tiles: {report['n_tiles']} (border of {report['border_tiles']} tile(s) "
        "dropped on each side)",
        f"- truth: sources above {report['min_flux_threshold']} nmgy in r (what the encoder "
        "was trained to detect)",
        "",
        f"| metric | encoder | SEP | always {m['count']} |",
        "|---|---|---|---|",
    ]
    lines += [f"| {name} | {_fmt(a)} | {_fmt(b)} | {_fmt(c)} |" for name, a, b, c in rows]
    u = report["encoder_unfiltered_truth"]
    lines += [
        "",
        "Against the unfiltered truth (every source, however faint): encoder n_sources "
        f"accuracy {_fmt(u['n_sources_accuracy'])}, within ±1 {_fmt(u['n_sources_within_1'])}.",
        "",
        "![confusion](confusion.png) ![detection](detection_vs_mag.png) ![example](example.png)",
    ]
    lines += _detection_lines(report) + _flux_lines(report, bands)
    if "lensing" in report:
        lines += markdown_lines(report["lensing"])
    if "calibration" in report:
        lines += calibration_report.markdown_lines(report["calibration"], bands)
    return "\n".join(lines) + "\n"


def _confusion_png(report: Report, path: Path) -> None:
    fig = Figure(figsize=(9, 4))
    axes = fig.subplots(1, 2)
    methods = {"encoder": report["encoder"], "sep": report["sep"]}
    for ax, (key, scores) in zip(axes, methods.items(), strict=True):
        mat = np.array(scores["confusion"], dtype=np.float64)
        norm = mat / np.maximum(mat.sum(1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for (i, j), v in np.ndenumerate(mat):
            if v:
                ax.text(j, i, f"{int(v)}", ha="center", va="center", fontsize=7)
        ax.set_xlabel("predicted count")
        ax.set_ylabel("true count")
        ax.set_title(f"{key}: accuracy {_fmt(scores['n_sources_accuracy'])}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _detection_png(report: Report, path: Path) -> None:
    fig = Figure(figsize=(9, 3.6))
    axes = fig.subplots(1, 2)
    for key, scores, style in (("encoder", report["encoder"], "o-"), ("sep", report["sep"], "s--")):
        det = scores["detection"]
        for ax, which in zip(axes, ("recall", "precision"), strict=True):
            table = det.get(f"{which}_by_mag")
            if not table:
                continue
            edges = np.array(table["edges"], dtype=float)
            rates = np.array([np.nan if r is None else r for r in table["rates"]], dtype=float)
            centres = np.concatenate(
                [[edges[0] - 0.5], (edges[:-1] + edges[1:]) / 2, [edges[-1] + 0.5]]
            )[: len(rates)]
            ax.plot(centres, rates, style, label=key)
            ax.set_xlabel(f"{'true' if which == 'recall' else 'predicted'} r magnitude")
            ax.set_ylabel(which)
            ax.set_ylim(0, 1.02)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _example_png(example: Example, path: Path) -> None:
    img = example["image"][2].numpy()
    off = example["offset"]
    lo, hi = np.percentile(img, [1, 99.5])
    fig = Figure(figsize=(6, 6))
    ax = fig.subplots()
    ax.imshow(np.arcsinh((img - lo) / max(hi - lo, 1e-9) * 10), cmap="gray")
    marked = (
        (example["truth"], "truth", "o", "lime"),
        (example["pred"], "pred", "+", "red"),
        (example["sep"], "sep", "x", "cyan"),
    )
    for cat, key, marker, colour in marked:
        n = int(cat["n_sources"][0])
        plocs = cat["plocs"][0, :n].numpy() + off - 0.5  # interior → image pixel centres
        ax.plot(
            plocs[:, 1],
            plocs[:, 0],
            linestyle="none",
            marker=marker,
            markersize=5,
            markerfacecolor="none",
            markeredgecolor=colour,
            markeredgewidth=0.8,
            label=f"{key} ({n})",
        )
    ax.set_title("r band of a held-out image (interior sources)")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_report(
    report: Report, merged: dict, example: Example, out: Path, bands: list[str]
) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [
        out / "report.json",
        out / "report.md",
        out / "confusion.png",
        out / "detection_vs_mag.png",
        out / "example.png",
    ]
    paths[0].write_text(json.dumps(report, indent=2) + "\n")
    paths[1].write_text(markdown(report, bands))
    _confusion_png(report, paths[2])
    _detection_png(report, paths[3])
    _example_png(example, paths[4])
    if "lensing" in report and example["lensing"] is not None:
        paths.append(out / "lensing_map.png")
        lensing_png(example["lensing"], paths[-1])
    if "calibration" in report:
        paths.append(out / "reliability.png")
        calibration_report.reliability_png(report["calibration"], paths[-1])
    return paths
