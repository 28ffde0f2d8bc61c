"""Read-only commands: inspect, diff, verify, and the dropped-tensors summary."""
