"""Figures of results (matplotlib, saved as PNG). Reads round records; knows nothing about training."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from robustlr._optional import require
from robustlr.reports.tables import RUN_LABELS
from robustlr.sim.records import RoundRecord


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (files only, no display); names the extra when
    matplotlib is missing."""
    matplotlib = require("matplotlib", extra="sim", feature="robustlr's figures")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str | Path, title: str = "", dpi: int = 100) -> Path:
    """Title a figure (when given), write it as a PNG and close it; the path written."""
    if title:
        fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_runs(runs: dict[str, Sequence[RoundRecord]], path: str | Path, title: str = "") -> Path:
    """Backdoor and validation accuracy per evaluated round, one line per run, saved as a PNG."""
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for key, records in runs.items():
        evaluated = [r for r in records if r.evaluated]
        rounds = [r.round for r in evaluated]
        label, colour = label_in_words(key), _colour(method_of(key))
        axes[0].plot(rounds, [100 * r.backdoor_acc for r in evaluated], marker="o", ms=3, label=label, color=colour)
        axes[1].plot(rounds, [100 * r.val_acc for r in evaluated], marker="o", ms=3, label=label, color=colour)
    axes[0].set_title("backdoor accuracy")
    axes[1].set_title("validation accuracy")
    for ax in axes:
        ax.set_xlabel("round")
        ax.set_ylabel("%")
        ax.grid(alpha=0.3)
        _integer_rounds(ax)
    axes[0].set_ylim(-2, 102)
    axes[0].legend(loc="best", fontsize=9)
    return _save(plt, fig, path, title, dpi=110)


# One colour per method throughout: the unattacked baseline grey, FedAvg blue, RLR orange; other
# rules take the next tab10 colours. Rows of one method differ by line style.
METHOD_COLOURS = {"fedavg_clean": "tab:gray", "fedavg": "tab:blue", "rlr": "tab:orange", "comed": "tab:green",
                  "sign": "tab:purple", "foolsgold": "tab:brown"}
LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "^", "s")  # the fifth row of one method changes marker
METRIC_TITLES = {"val_acc": "validation accuracy", "base_acc": "base-class accuracy",
                 "backdoor_acc": "backdoor accuracy", "flipped_fraction": "RLR: coordinates flipped",
                 "backdoor_loss": "backdoor loss",
                 "corrupt_outvoted": "corrupt agents' sign vote lost",
                 "honest_outvoted": "honest agents' sign vote lost"}


#: how a row label's words read in a legend or a title ("rlr_switch_theta7" -> "FedAvg + RLR, switched on,
#: theta 7"); a label of a suite's own is kept, its underscores read as ", "
_WORDS = {"fedavg": "FedAvg", "rlr": "FedAvg + RLR", "clean": "no attack", "attack": "attack", "comed": "comed",
          "sign": "sign", "foolsgold": "FoolsGold", "negated": "negated loss", "switch": "switched on", "dba": "DBA",
          "clipnoise": "clip + noise",
          "plus": "plus", "square": "square", "copyright": "copyright", "apple": "Apple logo"}


def label_in_words(label: str) -> str:
    """A row label as words for figures (``fedavg_clean`` -> ``FedAvg, no attack``).

    Example:
        >>> label_in_words("fedavg_clean"), label_in_words("rlr_switch_theta7"), label_in_words("rlr_20")
        ('FedAvg, no attack', 'FedAvg + RLR, switched on, theta 7', 'FedAvg + RLR, 20 % corrupt')
    """
    if label in RUN_LABELS:
        return RUN_LABELS[label]
    head, _, rest = label.partition(" ")
    words = []
    for token in head.split("_"):
        if token.startswith("theta") and token[5:].isdigit():
            words.append(f"theta {token[5:]}")
        elif token.isdigit() and words:
            words.append(f"{token} % corrupt")
        else:
            words.append(_WORDS.get(token, token))
    return ", ".join(words) + (f" ({rest})" if rest else "")


def _grid(plt, n: int, width: float, height: float, max_cols: int = 3, **kw):
    """A figure of ``n`` panels wrapped in rows of at most ``max_cols`` (a page is ~800 px wide);
    returns the figure and the ``n`` axes in order (the unused cells are hidden)."""
    rows = -(-n // max_cols)
    cols = -(-n // rows)  # balanced: 4 panels are 2 x 2, 5 are 3 + 2
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), constrained_layout=True,
                             squeeze=False, **kw)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _integer_rounds(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def method_of(label: str) -> str:
    """The method a row label names: its longest known prefix (``rlr_20`` -> ``rlr``)."""
    head = label.split(" ")[0]
    if head in METHOD_COLOURS:
        return head
    for m in sorted(METHOD_COLOURS, key=len, reverse=True):
        if head.startswith(m):
            return m
    return head


def _colour(method: str, _cache: dict = {}):  # noqa: B006 - a per-process colour table
    if method in METHOD_COLOURS:
        return METHOD_COLOURS[method]
    import matplotlib.pyplot as plt

    extra = [c for c in plt.get_cmap("tab10").colors]
    return _cache.setdefault(method, extra[(len(_cache) + 6) % 10])


def plot_curves(series: dict[str, dict[str, list[tuple[int, float]]]], path: str | Path, title: str,
                metrics: Sequence[str] = ("val_acc", "base_acc", "backdoor_acc", "flipped_fraction"),
                switch_rounds: dict[str, int] | None = None) -> Path:
    """One panel per metric (percent per round), one line per row; a dashed vertical line where a
    row switched RLR on."""
    plt = pyplot()

    fig, flat = _grid(plt, len(metrics), 4.3, 3.6)
    axes = [flat]
    styles: dict[str, int] = {}
    for row, curves in series.items():
        method = method_of(row)
        i = styles.setdefault(method, 0)
        style = LINE_STYLES[i % len(LINE_STYLES)]
        marker = MARKERS[(i // len(LINE_STYLES)) % len(MARKERS)]
        styles[method] += 1
        for ax, key in zip(axes[0], metrics):
            pts = curves.get(key, [])
            if pts:
                ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], style, marker=marker, ms=3,
                        color=_colour(method), label=label_in_words(row))
            switch = (switch_rounds or {}).get(row)
            if switch is not None:
                ax.axvline(switch, color=_colour(method), ls="--", lw=1, alpha=0.7)
    for ax, key in zip(axes[0], metrics):
        ax.set_title(METRIC_TITLES.get(key, key))
        ax.set_xlabel("round")
        ax.set_ylabel("%")
        ax.grid(alpha=0.3)
        _integer_rounds(ax)
        if key == "backdoor_acc":
            ax.set_ylim(-2, 102)
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(loc="best", fontsize=8)
    suffix = "; dashed vertical line: the round RLR was switched on" if switch_rounds else ""
    return _save(plt, fig, path, title + suffix, dpi=100)


def plot_panels(panels: list[tuple[str, dict[str, list[tuple[int, float]]]]], path: str | Path, title: str) -> Path:
    """The paper's Figures 2 and 3: one panel per run (a method, with or without clip + noise), each
    with validation, base-class and backdoor accuracy per round."""
    plt = pyplot()

    colours = {"val_acc": "tab:green", "base_acc": "tab:blue", "backdoor_acc": "tab:red"}
    fig, flat = _grid(plt, len(panels), 4.2, 3.6, sharey=True)
    for ax, (name, curves) in zip(flat, panels):
        for key, colour in colours.items():
            pts = curves.get(key, [])
            if pts:
                ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", ms=3, color=colour,
                        label=METRIC_TITLES[key])
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("round")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        _integer_rounds(ax)
    for ax in flat[::3]:
        ax.set_ylabel("accuracy %")
    flat[0].legend(loc="center right", fontsize=8)
    return _save(plt, fig, path, title, dpi=100)


def plot_grid_finals(finals: dict[str, dict[str, float]], path: str | Path, title: str,
                     paper: dict[str, dict[str, float]] | None = None) -> Path:
    """Final backdoor and validation accuracy of every table row of a grid suite: x is the grid point,
    one marker series per method (a horizontal line for a row without grid point, such as the
    unattacked baseline)."""
    plt = pyplot()

    points: list[str] = []
    by_method: dict[str, dict[str, dict[str, float]]] = {}
    for row, vals in finals.items():
        method, _, point = row.partition(" ")
        by_method.setdefault(method, {})[point] = vals
        if point and point not in points:
            points.append(point)
    fig, axes = plt.subplots(2, 1, figsize=(max(8.0, 0.5 * len(points) + 3), 7.5), constrained_layout=True,
                             sharex=True)
    x = {p: i for i, p in enumerate(points)}
    for ax, key in zip(axes, ("backdoor_acc", "val_acc")):
        for method, rows in by_method.items():
            if "" in rows and len(rows) == 1 and rows[""].get(key) is not None:
                ax.axhline(100 * rows[""][key], color=_colour(method), ls="--", lw=1.2, label=method)
                continue
            pts = [(x[p], 100 * v[key]) for p, v in rows.items() if p in x and v.get(key) is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", ms=7, color=_colour(method), label=method)
            ref = [(x[p], (paper or {}).get(f"{method} {p}", {}).get(key)) for p in rows if p in x]
            ref = [(i, v) for i, v in ref if v is not None]
            if ref:
                ax.plot([r[0] for r in ref], [100 * r[1] for r in ref], "o", ms=9, mfc="none", color=_colour(method),
                        label=f"{method}, paper")
        ax.set_title(f"final {METRIC_TITLES[key]}")
        ax.set_ylabel("%")
        ax.grid(alpha=0.3)
    axes[0].set_ylim(-2, 102)
    axes[0].legend(loc="best", fontsize=9)
    axes[1].set_xticks(range(len(points)))
    short = {"clip_norm": "M", "noise_sigma": "σ", "corrupt_fraction": "F", "rlr_threshold": "θ"}

    def label(point: str) -> str:  # "clip_norm=2 noise_sigma=0.001" -> "M 2\nσ 0.001"
        parts = [tok.partition("=") for tok in point.split(" ")]
        return "\n".join(f"{short[k]} {v}" if k in short else (v if k == "trojan" else f"{k}={v}")
                         for k, _, v in parts)

    axes[1].set_xticklabels([label(p) for p in points], fontsize=8)
    axes[1].set_xlabel("grid point")
    return _save(plt, fig, path, title, dpi=100)


def plot_row_finals(finals: dict[str, dict[str, float | None]], spreads: dict[str, dict[str, float | None]],
                    path: str | Path, title: str, paper: dict[str, dict[str, float]] | None = None) -> Path:
    """Final backdoor and validation accuracy of each table row of a suite without grid points (too
    many rows for curves): one horizontal bar per row (the mean over seeds, the seeds' sd as an
    error bar), coloured by method, hatched where the row adds clipping and noise; the paper's value,
    where it has one, as a hollow diamond."""
    plt = pyplot()

    rows = list(finals)
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.42 * len(rows) + 1.6), constrained_layout=True, sharey=True)
    y = list(range(len(rows)))
    for ax, key in zip(axes, ("backdoor_acc", "val_acc")):
        legend = "the paper's (its budget)"  # on the first diamond only
        for i, row in enumerate(rows):
            mean = finals[row].get(key)
            if mean is None:
                continue
            sd = (spreads.get(row) or {}).get(key)
            ax.barh(i, 100 * mean, xerr=None if sd is None else 100 * sd, color=_colour(method_of(row)), alpha=0.85,
                    hatch="//" if "clipnoise" in row else None, edgecolor="white", capsize=3)
            ref = (paper or {}).get(row, {}).get(key)
            if ref is not None:
                ax.plot(100 * ref, i, "D", ms=7, mfc="none", mec="black", label=legend)
                legend = None
        ax.set_title(f"final {METRIC_TITLES[key]} (mean +- sd over seeds)")
        ax.set_xlabel("%")
        ax.set_xlim(0, 102)
        ax.grid(alpha=0.3, axis="x")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right", fontsize=8)
    axes[0].set_yticks(y, [label_in_words(r) for r in rows], fontsize=9)
    axes[0].invert_yaxis()
    return _save(plt, fig, path, title, dpi=100)


def plot_influence(panels: list[tuple[str, dict]], path: str | Path, title: str) -> Path:
    """The paper's Figure 4: per run (one column), the cumulative net influence (appendix B; rows:
    the printed definition, a product; the difference reading; and, where the attribution file
    has them, the authors' code's definition with their Fisher and with its slip fixed) with the
    backdoor loss per evaluated round on a second axis."""
    plt = pyplot()

    rows = [(key, label) for key, label in (
        ("net", "cumulative net influence\n(as printed: products)"),
        ("net_diff", "cumulative net influence\n(difference reading)"),
        ("authors", "authors' code: cumulative\nnet_hon - net_adv (their Fisher)"),
        ("authors_corrected", "authors' code, Fisher of\nlog-likelihood per sample"))
        if all(key in d for _, d in panels)]
    fig, axes = plt.subplots(len(rows), len(panels), figsize=(4.6 * len(panels), 3.6 * len(rows)),
                             constrained_layout=True, squeeze=False)
    for j, (name, d) in enumerate(panels):
        for i, (key, ylabel) in enumerate(rows):
            ax = axes[i][j]
            ax.plot(d["rounds"], d[key], color="tab:blue", marker="o", ms=3, label="cumulative I_hon - I_adv")
            ax.axhline(0, color="black", lw=0.8)
            ax.set_xlabel("round")
            _integer_rounds(ax)
            ax.set_ylabel(ylabel, color="tab:blue", fontsize=9)
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(name, fontsize=10)
            right = ax.twinx()
            right.plot(d["loss_rounds"], d["backdoor_loss"], color="tab:red", marker="s", ms=3,
                       label="backdoor loss")
            right.set_ylabel("backdoor loss (cross-entropy)", color="tab:red", fontsize=9)
            lines = ax.get_lines()[:1] + right.get_lines()
            ax.legend(lines, [ln.get_label() for ln in lines], loc="best", fontsize=7)
    return _save(plt, fig, path, title, dpi=100)


def plot_pivot(values: dict[str, dict[str, list[float | None]]], defenses: list[str], attacks: list[str],
               path: str | Path, title: str) -> Path:
    """Defense x attack heatmaps, one panel per metric: ``values[metric][f"{defense}.{attack}"]`` holds
    the mean final value (0..1, None where not run); each cell is annotated with its percent."""
    plt = pyplot()
    import numpy as np

    metrics = list(values)
    fig, axes = plt.subplots(1, len(metrics), figsize=(0.95 * len(attacks) * len(metrics) + 4, 0.42 * len(defenses) + 2.4),
                             constrained_layout=True, squeeze=False)
    for ax, key in zip(axes[0], metrics):
        grid = np.full((len(defenses), len(attacks)), np.nan)
        for i, d in enumerate(defenses):
            for j, a in enumerate(attacks):
                v = values[key].get(f"{d}.{a}")
                if v is not None:
                    grid[i, j] = 100 * v
        # backdoor over its whole range; validation from 50 %, where the defenses differ
        cmap, lo = ("Reds", 0) if key == "backdoor_acc" else ("Greens", 50)
        ax.imshow(grid, cmap=cmap, vmin=lo, vmax=100, aspect="auto")
        for i in range(len(defenses)):
            for j in range(len(attacks)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=8,
                            color="white" if grid[i, j] > 60 else "black")
        ax.set_xticks(range(len(attacks)))
        ax.set_xticklabels(attacks, rotation=35, ha="right", fontsize=8)
        ax.set_yticks(range(len(defenses)))
        ax.set_yticklabels(defenses, fontsize=8)
        ax.set_title(f"final {METRIC_TITLES.get(key, key)} (%)")
    return _save(plt, fig, path, title, dpi=100)


def plot_breakpoints(report, path: str | Path, title: str | None = None) -> Path:
    """The defense x attack heatmap of a breakpoint search
    (:class:`robustlr.experiments.breakpoint.BreakpointReport`, rows ``<defense>.<attack>``; other
    labels are one column each): each cell's colour is the seeds' mean breakpoint (a seed that held on
    the whole grid counts as one step beyond it, and the cell says so), annotated with mean +- sd."""
    plt = pyplot()
    import numpy as np

    rows = list(report.rows)
    split = [r.split(".", 1) if "." in r else [r, ""] for r in rows]
    defenses = list(dict.fromkeys(d for d, _ in split))
    attacks = list(dict.fromkeys(a for _, a in split))
    values = [float(v) for v in report.values]
    beyond = values[-1] + (values[-1] - values[-2] if len(values) > 1 else values[-1])
    grid = np.full((len(defenses), len(attacks)), np.nan)
    text: dict[tuple[int, int], str] = {}
    for row, (d, a) in zip(rows, split):
        points = [beyond if p is None else float(p) for p in report.breakpoints(row)]
        i, j = defenses.index(d), attacks.index(a)
        grid[i, j] = sum(points) / len(points)
        text[(i, j)] = report.summary(row).replace(" +- ", "\n+- ").replace(" (", "\n(")
    fig, ax = plt.subplots(figsize=(max(6.5, 1.5 * len(attacks) + 3), 0.7 * len(defenses) + 2.2),
                           constrained_layout=True)
    im = ax.imshow(grid, cmap="RdYlGn", vmin=values[0], vmax=beyond, aspect="auto")
    for (i, j), t in text.items():
        share = (grid[i, j] - values[0]) / (beyond - values[0]) if beyond > values[0] else 0.5
        ax.text(j, i, t, ha="center", va="center", fontsize=8,
                color="white" if share < 0.2 or share > 0.8 else "black")  # legible on the dark ends
    ax.set_xticks(range(len(attacks)))
    ax.set_xticklabels(attacks, rotation=25, ha="right", fontsize=9)
    ax.set_yticks(range(len(defenses)))
    ax.set_yticklabels(defenses, fontsize=9)
    what = METRIC_TITLES.get(report.metric, report.metric)
    sign = ">=" if report.direction == "above" else "<="
    fig.colorbar(im, ax=ax, label=f"breakpoint: smallest {report.key}")
    ax.set_title(title or f"{report.suite}: the smallest {report.key} at which {what} {sign} "
                 f"{100 * report.level:.0f} %\n(mean +- sd over seeds {', '.join(map(str, report.seeds))}; "
                 f"greener: the defense holds longer)", fontsize=9)
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_partition(counts, classes: Sequence[str], corrupt: Sequence[int], path: str | Path, title: str) -> Path:
    """The agents x classes heatmap of a partition: each cell the number of the agent's samples of
    that class (annotated when there are at most 40 agents and 20 classes); corrupt agents' rows
    are labelled in red."""
    plt = pyplot()
    import numpy as np

    counts = np.asarray(counts)
    k, c = counts.shape
    fig, ax = plt.subplots(figsize=(min(2.5 + 0.55 * c, 16), min(1.8 + 0.22 * k, 14)), constrained_layout=True)
    im = ax.imshow(counts, cmap="viridis", aspect="auto", interpolation="nearest")
    fig.colorbar(im, ax=ax, label="samples")
    if k <= 40 and c <= 20:
        top = counts.max() if counts.size else 0
        for i in range(k):
            for j in range(c):
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                        color="black" if counts[i, j] > 0.6 * top else "white")
    ax.set_xticks(range(c))
    ax.set_xticklabels([str(n) for n in classes], rotation=45, ha="right", fontsize=8)
    ax.set_xlabel("class")
    ax.set_ylabel("agent")
    step = max(1, k // 40)
    ax.set_yticks(range(0, k, step))
    bad = set(int(a) for a in corrupt)
    ax.set_yticklabels([f"{i}{' (corrupt)' if i in bad else ''}" for i in range(0, k, step)], fontsize=7)
    for tick, i in zip(ax.get_yticklabels(), range(0, k, step)):
        if i in bad:
            tick.set_color("red")
    ax.set_title(title)
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def layer_summary(records: Sequence[RoundRecord]) -> dict[str, dict[str, float | None]]:
    """Per array, the mean over rounds of RLR's flipped share (``flipped``) and, where the run
    recorded ``per_layer`` (``telemetry_per_layer``), of each group's agreement and update norm.
    Arrays in the model's order; a value no round recorded is None."""
    names: list[str] = []
    for r in records:
        for source in (r.flipped_per_layer or {}, r.per_layer or {}):
            names += [n for n in source if n not in names]
    out: dict[str, dict[str, float | None]] = {}
    for name in names:
        row: dict[str, float | None] = {}
        vals = [r.flipped_per_layer[name] for r in records if r.flipped_per_layer and name in r.flipped_per_layer]
        row["flipped"] = sum(vals) / len(vals) if vals else None
        for key in ("honest_agreement", "corrupt_agreement", "honest_norm", "corrupt_norm"):
            vals = [r.per_layer[name][key] for r in records
                    if r.per_layer and name in r.per_layer and r.per_layer[name].get(key) is not None]
            row[key] = sum(vals) / len(vals) if vals else None
        out[name] = row
    return out


def plot_layers(runs: dict[str, Sequence[RoundRecord]], path: str | Path, title: str = "") -> Path:
    """Vote telemetry per layer, one column per run: RLR's flipped share per array and round (a
    heatmap; runs without RLR show none), and, for runs with ``per_layer`` records, each group's
    agreement with the applied step per array (mean over rounds) and the corrupt agents' mean
    update norm over the honest agents' per array. The dashed line marks Theorem 1's p0 = 1/4."""
    plt = pyplot()
    import numpy as np

    has_flips = any(r.flipped_per_layer for recs in runs.values() for r in recs)
    has_layers = any(r.per_layer for recs in runs.values() for r in recs)
    if not has_flips and not has_layers:
        raise ValueError("these runs hold no per-layer telemetry: RLR's flipped_per_layer needs rlr_threshold > 0, "
                         "agreement and norms per layer need telemetry_per_layer = true")
    panels = (["flips"] if has_flips else []) + (["agreement", "norms"] if has_layers else [])
    n_arrays = max(len(layer_summary(recs)) for recs in runs.values())
    height = max(3.2, 0.11 * n_arrays + 1.2)
    fig, axes = plt.subplots(len(panels), len(runs), figsize=(4.8 * len(runs), height * len(panels)),
                             constrained_layout=True, squeeze=False)
    for j, (key, records) in enumerate(runs.items()):
        summary = layer_summary(records)
        names = list(summary)
        y = np.arange(len(names))
        for i, panel in enumerate(panels):
            ax = axes[i][j]
            if i == 0:
                ax.set_title(label_in_words(key), fontsize=10)
            if panel == "flips":
                rows = [r for r in records if r.flipped_per_layer]
                if not rows:
                    ax.text(0.5, 0.5, "no RLR in this run", ha="center", va="center", transform=ax.transAxes)
                    ax.set_axis_off()
                    continue
                trainable = [n for n in names if any(n in r.flipped_per_layer for r in rows)]
                grid = np.array([[r.flipped_per_layer.get(n, np.nan) for r in rows] for n in trainable])
                never = np.nan_to_num(grid, nan=0.0).max(axis=1) == 0
                grid[never] = np.nan  # arrays no round flipped (outside the vote's scope): grey, not "0 %"
                cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
                if never.any():
                    ax.set_title(f"{label_in_words(key)}\n(grey: never flipped, e.g. outside the vote's scope)",
                                 fontsize=10)
                im = ax.imshow(grid, aspect="auto", cmap=cmap, vmin=0, vmax=1, interpolation="nearest",
                               extent=(rows[0].round - 0.5, rows[-1].round + 0.5, len(trainable) - 0.5, -0.5))
                ax.set_yticks(range(len(trainable)), trainable, fontsize=5)
                ax.set_xlabel("round")
                _integer_rounds(ax)
                fig.colorbar(im, ax=ax, label="share of the array flipped", shrink=0.8)
            elif panel == "agreement":
                for group, colour in (("honest", "tab:blue"), ("corrupt", "tab:red")):
                    vals = [summary[n][f"{group}_agreement"] for n in names]
                    ax.plot([np.nan if v is None else v for v in vals], y, marker="o", ms=2, lw=0.8, color=colour,
                            label=f"{group} agents")
                if has_flips:
                    flips = [summary[n]["flipped"] for n in names]
                    ax.plot([np.nan if v is None else v for v in flips], y, marker="s", ms=2, lw=0.8,
                            color="tab:green", label="flipped share (RLR)")
                ax.axvline(0.25, color="black", ls="--", lw=0.8, label="p0 = 1/4 (Theorem 1)")
                ax.set_yticks(y, names, fontsize=5)
                ax.invert_yaxis()
                ax.set_xlim(0, 1)
                ax.set_xlabel("agreement with the applied step (mean over rounds)")
                ax.legend(fontsize=7, loc="lower right")
                ax.grid(alpha=0.3)
            else:
                ratio = [summary[n]["corrupt_norm"] / summary[n]["honest_norm"]
                         if summary[n]["corrupt_norm"] is not None and summary[n]["honest_norm"] else np.nan
                         for n in names]
                ax.barh(y, ratio, color="tab:purple")
                ax.axvline(1.0, color="black", lw=0.8)
                ax.set_yticks(y, names, fontsize=5)
                ax.invert_yaxis()
                ax.set_xlabel("corrupt / honest mean update norm")
                ax.grid(alpha=0.3, axis="x")
    return _save(plt, fig, path, title, dpi=110)
