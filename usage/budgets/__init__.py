"""Spend caps: budget periods and rules, the book the gateway checks on every request, and the
alerts sent when spend crosses a budget's thresholds."""
