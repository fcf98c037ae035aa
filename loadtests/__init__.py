"""Locust load tests and the post-run audit. Arrive with the load-test issue."""
