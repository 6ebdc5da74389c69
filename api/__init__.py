"""The Flask API: app factory, one blueprint per resource, auth, errors."""
