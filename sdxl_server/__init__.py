"""sdxl_server: a self-hosted Stable Diffusion XL text-to-image server (aiohttp + diffusers)."""
