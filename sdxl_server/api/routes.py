"""Every URL the server answers, and the view that answers it."""

from __future__ import annotations

from aiohttp import web

from . import a1111, a1111_img2img, a1111_probes, keys, loras, models, openai, openai_edits, tokens, views, websocket


def add_routes(app: web.Application) -> None:
    router = app.router
    router.add_get("/", views.index)
    router.add_get("/health", views.health)
    router.add_get("/metrics", views.metrics)
    router.add_get("/openapi.json", views.openapi)
    router.add_get("/api/v1/info", views.server_info)
    router.add_post("/api/v1/generate", views.generate)
    router.add_post("/api/v1/jobs", views.submit_job)
    router.add_get("/api/v1/jobs", views.list_jobs)
    router.add_get("/api/v1/jobs/{job_id}", views.get_job)
    router.add_delete("/api/v1/jobs/{job_id}", views.cancel_job)
    router.add_get("/api/v1/ws", websocket.websocket)
    router.add_post("/v1/images/generations", openai.images_generations)
    router.add_get("/v1/models", openai.models)
    router.add_post("/sdapi/v1/txt2img", a1111.txt2img)
    router.add_get("/sdapi/v1/progress", a1111.progress)
    router.add_post("/sdapi/v1/interrupt", a1111.interrupt)
    router.add_get("/sdapi/v1/sd-models", a1111.sd_models)
    router.add_get("/sdapi/v1/samplers", a1111.samplers)
    router.add_get("/sdapi/v1/schedulers", a1111.schedulers)
    router.add_get("/sdapi/v1/options", a1111.get_options)
    router.add_post("/sdapi/v1/options", a1111.set_options)
    router.add_post("/api/v1/tokenize", tokens.tokenize)
    router.add_get("/api/v1/models", models.list_models)
    router.add_post("/api/v1/models/refresh", models.refresh_models)
    router.add_post("/sdapi/v1/refresh-checkpoints", models.a1111_refresh_checkpoints)
    router.add_get("/api/v1/loras", loras.list_loras)
    router.add_post("/api/v1/loras/refresh", loras.refresh_loras)
    router.add_get("/sdapi/v1/loras", loras.a1111_loras)
    router.add_post("/sdapi/v1/refresh-loras", loras.a1111_refresh_loras)
    router.add_post("/sdapi/v1/img2img", a1111_img2img.img2img)
    router.add_post("/v1/images/edits", openai_edits.edits)
    router.add_post("/v1/images/variations", openai_edits.variations)
    router.add_post("/sdapi/v1/skip", a1111.skip)
    router.add_get("/sdapi/v1/upscalers", a1111_probes.upscalers)
    router.add_get("/sdapi/v1/latent-upscale-modes", a1111_probes.latent_upscale_modes)
    router.add_get("/sdapi/v1/sd-vae", a1111_probes.sd_vae)
    router.add_get("/sdapi/v1/sd-modules", a1111_probes.empty_list)
    router.add_get("/sdapi/v1/face-restorers", a1111_probes.empty_list)
    router.add_get("/sdapi/v1/prompt-styles", a1111_probes.empty_list)
    router.add_get("/sdapi/v1/scripts", a1111_probes.scripts)
    router.add_get("/sdapi/v1/embeddings", a1111_probes.embeddings)
    router.add_get("/sdapi/v1/cmd-flags", a1111_probes.cmd_flags)
    router.add_get("/sdapi/v1/memory", a1111_probes.memory)
    router.add_post("/sdapi/v1/png-info", a1111_probes.png_info)
    router.add_get("/internal/ping", a1111_probes.ping)
    router.add_get("/outputs/images/{filename}", views.output_image)
    router.add_get("/outputs/metadata/{filename}", views.output_metadata)
    if app[keys.STATIC_DIR].is_dir():
        router.add_static("/static/", app[keys.STATIC_DIR], follow_symlinks=False)
