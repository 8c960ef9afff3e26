"""The app's panes: run configuration, live telemetry, sweep progress, results."""
