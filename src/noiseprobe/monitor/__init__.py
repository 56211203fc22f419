"""Live measurements inside a training run: :class:`NoiseMonitor` (docs/monitor.md)."""

from noiseprobe.monitor.monitor import NoiseMonitor

__all__ = ["NoiseMonitor"]
