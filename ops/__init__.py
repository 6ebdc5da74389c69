"""Operational tooling: embedded servers for tests and benches, the dev stack, the CLI."""
