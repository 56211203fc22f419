"""Shared services: errors, seeding, result store, executors, experiments, report, plotting, fitting."""
