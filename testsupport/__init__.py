"""Helpers the tests and the benchmarks share: real daemons, fake providers."""
