"""The charts' data, shared by the app's chart view, `carbontop compare` and `carbontop plot`.

series: what each chart draws, as plain numbers, from points and telemetry samples.
compare: one summary per run and the warnings that say when runs are not like for like.
matplotlib_files: the same charts written as SVG or PNG files (the optional `plot` extra).
"""
