"""Live measurements inside a training run: :class:`NoiseMonitor` (docs/monitor.md)."""

from noiseprobe.monitor import plots  # noqa: F401  (registers the report's figures of a monitor log directory)
from noiseprobe.monitor.monitor import NoiseMonitor

__all__ = ["NoiseMonitor"]
