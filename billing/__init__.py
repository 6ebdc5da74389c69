"""The domain: every rule about credits, limits, statuses and models lives here."""
