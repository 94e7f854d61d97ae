"""cold stage of Fig (see shared/DESIGN.md): prune Iceberg metadata, run work units, merge."""

from fig_server.cold.engine import ColdEngine
from fig_server.cold.executor import Executor, ProcessExecutor, ThreadExecutor
from fig_server.cold.units import ColdResult, ScanStats

__all__ = ["ColdEngine", "ColdResult", "Executor", "ProcessExecutor", "ScanStats",
           "ThreadExecutor"]
