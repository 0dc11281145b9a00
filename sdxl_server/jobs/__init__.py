"""Jobs: their states, the queue (order, positions, ETA, cancellation), events and their fan-out,
the SQLite job store, recovery and retention, output files, and the worker-side glue that runs a
job on the pipeline.

Never imports aiohttp; imports torch only on the worker thread (previews), never at import time.
"""
