"""Development and test stand-ins for the outside services the backend calls.

An OpenAI-compatible provider (chat completions, images) and Ahrefs keyword research, on
one HTTP server with fault injection, for tests, `make run` and the benchmarks. Production
code never imports this package (tests/test_layout.py checks), and neither the installed
package nor the Docker image carries it.
"""
