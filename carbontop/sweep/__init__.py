"""The sweep: the one layer that drives engines and telemetry together.

`runner.SweepRunner` turns a RunConfig into a workload, an engine child process, a telemetry
sampler and a run directory, and walks the batch sizes the search plan (core.search) asks for.
`events` is what a running sweep tells its viewer (the app, the headless CLI). The events live
here, beside the runner, rather than in core: they describe the sweep's own progress (started,
phase, point, boundary, finished), they are emitted only by the runner, and the layers above it
(cli, tui) are the only readers. core stays the pure vocabulary and arithmetic every layer shares,
with no knowledge that engines or telemetry exist.
"""
