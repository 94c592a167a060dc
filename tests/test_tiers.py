"""The test tiers' table (``TIER_OF`` in tests/conftest.py) and the Makefile agree, and every entry
names a file or test that exists (a renamed test would otherwise change tier silently)."""

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _conftest():
    spec = importlib.util.spec_from_file_location("robustlr_tests_conftest", ROOT / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_entry_of_the_tier_table_names_a_file_or_test_that_exists():
    conf = _conftest()
    for where, tier in conf.TIER_OF.items():
        assert tier in conf.TIERS, where
        path, _, test = where.partition("::")
        assert (ROOT / path).exists(), where
        if test:
            name = test.split("[")[0]
            assert re.search(rf"^def {re.escape(name)}\w*\(", (ROOT / path).read_text(), re.M), where


def test_the_makefile_runs_the_tiers_the_readme_says():
    conf = _conftest()
    make = (ROOT / "Makefile").read_text()
    slow = re.search(r"^SLOW_TIERS := (.+)$", make, re.M).group(1).split(" or ")
    assert sorted(slow) == sorted(conf.TIERS)  # `make test` leaves out every tier
    assert re.search(r"^test-all: .*\n\t\$\(PYTEST\) -m \"not long\"$", make, re.M)  # CI: all but long
    assert re.search(r"^test-long: .*\n\t\$\(PYTEST\) -m long$", make, re.M)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test-all" in ci and "make test-headline" in ci
    # the headline names one test of the long tier, which exists
    headline = re.search(r"^test-headline: .*\n\t\$\(PYTEST\) -m long \"([^\"]+)\"$", make, re.M).group(1)
    assert headline in conf.TIER_OF and conf.TIER_OF[headline] == "long"
