"""Capacity-planning simulators. Arrive with the simulators issue."""
