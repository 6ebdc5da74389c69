"""``python -m simulator --host 127.0.0.1 --port 0``: serve until SIGTERM or SIGINT."""

from simulator.server import main

main()
