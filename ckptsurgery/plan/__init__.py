"""Planners: rules and sources become a Plan (output entries), validated before any tensor data is read."""
