"""Everything HTTP and websocket: the application factory, routes, thin views, the OpenAI and
AUTOMATIC1111 routes, OpenAPI, security, middleware and request validation.

May import :mod:`sdxl_server.jobs` and the top-level modules; never imports torch or diffusers
(the engine is created through a factory that imports :mod:`sdxl_server.pipeline` lazily).
"""
