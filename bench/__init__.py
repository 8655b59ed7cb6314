"""fastood benchmarks: `python -m bench SUITE` writes bench/results/SUITE-<device>.{json,md}."""
