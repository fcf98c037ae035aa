"""Interop: connectors that import other systems' availability, and publishing."""
