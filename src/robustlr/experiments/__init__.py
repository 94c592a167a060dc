"""Experiment suites and the results store (land here next: the suites issue)."""
