"""Runtimes: `flwr.serverapp.Grid` implementations that deliver Messages to fedsim's ClientApp."""

from fedsim.runtime.inline import InlineGrid

__all__ = ["InlineGrid"]
