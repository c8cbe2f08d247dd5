"""Shipped scenario files (`fedsim list`)."""
