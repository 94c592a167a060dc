"""The bar chart of a suite with many rows and no grid points (Table 1's 11 rows): one bar per row
at its mean, the seeds' sd as the error bar, the paper's value as a marker; read back from the axes."""

import numpy as np

from robustlr.reports import plots
from robustlr.reports.plots import label_in_words, plot_row_finals


def test_bars_are_the_means_and_the_error_bars_the_sds(tmp_path, monkeypatch):
    finals = {"fedavg_attack": {"backdoor_acc": 0.9, "val_acc": 0.91},
              "rlr_attack": {"backdoor_acc": 0.2, "val_acc": 0.85},
              "comed_clipnoise": {"backdoor_acc": 0.05, "val_acc": None}}
    spreads = {"fedavg_attack": {"backdoor_acc": 0.04, "val_acc": None}, "rlr_attack": {"backdoor_acc": None}}
    drawn = []
    save = plots._save

    def keep(plt, fig, path, title="", dpi=100):
        for ax in fig.axes:
            drawn.append({"bars": [(b.get_width(), b.get_facecolor()[:3], b.get_hatch()) for b in ax.patches],
                          "errors": [np.asarray(c.get_segments()) for c in ax.collections],
                          "markers": [(line.get_xdata()[0], line.get_ydata()[0]) for line in ax.lines
                                      if line.get_marker() == "D"],
                          "ticks": [t.get_text() for t in ax.get_yticklabels()]})
        return save(plt, fig, path, title, dpi)

    monkeypatch.setattr(plots, "_save", keep)
    path = plot_row_finals(finals, spreads, tmp_path / "rows.png", "t", paper={"fedavg_attack": {"backdoor_acc": 0.995}})
    assert path.stat().st_size > 5_000
    backdoor, validation = drawn
    np.testing.assert_allclose([w for w, _, _ in backdoor["bars"]], [90.0, 20.0, 5.0])
    np.testing.assert_allclose([w for w, _, _ in validation["bars"]], [91.0, 85.0])  # no bar for a missing value
    colours = [c for _, c, _ in backdoor["bars"]]
    assert colours[0] != colours[1] and [h for _, _, h in backdoor["bars"]] == [None, None, "//"]
    (segment,) = backdoor["errors"][0]  # one error bar: fedavg_attack's 90 +- 4
    np.testing.assert_allclose(segment[:, 0], [86.0, 94.0])
    assert backdoor["markers"] == [(99.5, 0)] and validation["markers"] == []
    assert backdoor["ticks"] == [label_in_words(r) for r in finals]
    assert label_in_words("comed_clipnoise") == "comed, clip + noise"
