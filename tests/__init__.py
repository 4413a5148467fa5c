"""The test suite (a package, so that benchmarks/ can import its oracle: `from tests.gaussian_oracle import ...`)."""
