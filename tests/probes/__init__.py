"""Tests of noiseprobe.probes (a package, so its test modules may share basenames with other test folders)."""
