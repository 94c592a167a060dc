"""Analyses that show why a defense works: parameter and feature attribution, vote telemetry
(land here next: the attribution issue)."""
