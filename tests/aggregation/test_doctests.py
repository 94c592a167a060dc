"""The docstring examples of robustlr.aggregation run and give the values they show."""

import doctest
import importlib

import pytest

MODULES = ["", ".base", ".rules", ".rlr", ".clip", ".foolsgold", ".layout", ".telemetry", ".robust", ".flame", ".screening", ".signguard", ".fltrust", ".fldetector",
           ".freqfed", ".deepsight"]


@pytest.mark.parametrize("suffix", MODULES)
def test_docstring_examples(suffix):
    module = importlib.import_module("robustlr.aggregation" + suffix)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0
    assert result.failed == 0


def test_every_public_rule_has_an_example():
    import robustlr.aggregation as agg

    for name in ["FedAvg", "CoordinateMedian", "SignAggregation", "FoolsGold", "ClipAndNoise", "RobustLR", "ParamLayout", "threshold_range",
                 "TrimmedMean", "Krum", "Bulyan", "GeometricMedian", "NormBounding", "Flame", "SignGuard", "FLTrust", "FLDetector",
                 "FreqFed", "DeepSight"]:
        doc = getattr(agg, name).__doc__
        assert doc and ">>>" in doc, name
