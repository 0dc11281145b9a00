"""The diffusion side: where a model comes from, loading and memory options, schedulers, one
generation, previews, and the tiny and full-size random-weights models.

Runs on the worker thread that owns the pipeline. Never imports aiohttp.
"""
