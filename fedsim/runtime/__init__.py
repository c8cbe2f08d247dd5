"""Runtimes: `flwr.serverapp.Grid` implementations that deliver Messages to fedsim's ClientApp.

`InlineGrid` runs clients in this process; `RayGrid` (`fedsim.runtime.ray_grid`, imported on use) runs them
in a pool of Ray actors, locally or on an existing cluster.
"""

from fedsim.runtime.base import VirtualNodesGrid, node_id_of
from fedsim.runtime.inline import InlineGrid

__all__ = ["InlineGrid", "VirtualNodesGrid", "node_id_of"]
