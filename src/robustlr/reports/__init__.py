"""Reports: tables, plots, the paper's reference numbers (``paper.toml``), the demo."""
