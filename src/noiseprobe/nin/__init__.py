"""Paper 001 (noise injection nodes): toy model, phases, NIN probes and trainers."""
