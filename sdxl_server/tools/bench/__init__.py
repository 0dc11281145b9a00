"""``python -m sdxl_server.tools.bench``: what the server costs on top of the pipeline, measured.

It loads the model the server would load (``MODEL_ID`` and every other setting from the
environment and the server's own flags), serves it with the real application on a loopback port
(aiohttp's ``AppRunner`` on its own thread and event loop, in this process), and measures, as
client and server see them:

``overhead``
    ``POST /api/v1/generate`` end to end versus ``Engine.generate`` called directly on the same
    engine and worker thread with the same parameters; interleaved runs, median, IQR, min/max
    and the ratio. The server's extra work is HTTP, validation, the queue, the progress events
    and writing the PNG and its metadata.
``loop``
    ``GET /health`` latency (median, p99) while idle and while a generation runs: how well the
    event loop stays responsive while the worker thread computes.
``progress``
    Time from the step callback (a timestamp taken on the worker thread just before the
    server's ``on_step`` runs) to a websocket client receiving that step's ``progress`` event,
    with 1 and with ``--clients`` subscribers, and how much slower generation gets with them.
``memory``
    Resident memory of this process over ``--memory-jobs`` small generations through the
    server, growth per job (least-squares slope), and on CUDA the peak GPU memory of one
    generation at the benchmark size; it/s at that size everywhere.
``hires``
    Hires fix at x2 with a latent upscaler, Lanczos and an upscaler model (if the server has
    one): the whole request and its phases (first pass, upscale, second pass, decode), the
    steps, resident memory and on CUDA the peak GPU memory.
``coldstart``
    A fresh Python process, timed from its start: interpreter, imports (torch, diffusers and
    the server's modules), model load, first and second generation.

Prints a table; ``--json PATH`` writes every figure. Numbers are for this machine and model:
with ``MODEL_ID=tiny`` on a CPU the pipeline is tiny, so the server's fixed costs weigh far more
than they do next to real SDXL on a GPU.
"""

