"""The response bodies of the catalog and extras routes (ControlNets, IP-Adapters, preprocessors,
upscalers, A1111's extras), as marshmallow schemas: documented only, as those of :mod:`.responses`
(whose rules they follow); :mod:`.openapi` registers them. Never imports torch."""

from __future__ import annotations

from marshmallow import Schema, fields, validate


class ControlNetSchema(Schema):
    """One ControlNet in CONTROLNET_DIR (``GET /api/v1/controlnets``)."""

    name = fields.String(metadata={"description": "What a unit's model calls it: the folder's name, or the file's without .safetensors."})
    file = fields.String(metadata={"description": "Path inside CONTROLNET_DIR."})
    layout = fields.String(metadata={"description": "folder (diffusers) or single_file."})
    type = fields.String(allow_none=True, metadata={"description": "Its control type as its name says (canny, depth, ...), union, or null."})
    union = fields.Boolean(metadata={"description": "A ControlNet-Union model: a unit chooses its type."})
    control_types = fields.List(fields.String(), metadata={"description": "A Union model's control types."})
    usable = fields.Boolean()
    problem = fields.String(allow_none=True, metadata={"description": "Why it cannot be used (not SDXL, not a ControlNet, unreadable)."})


class ControlNetListSchema(Schema):
    controlnet_dir = fields.String()
    max_controlnets = fields.Integer()
    controlnets = fields.List(fields.Nested(ControlNetSchema))


class ThresholdSchema(Schema):
    name = fields.String()
    default = fields.Float()
    min = fields.Float()
    max = fields.Float()


class PreprocessorSchema(Schema):
    name = fields.String()
    description = fields.String()
    available = fields.Boolean()
    annotator = fields.Boolean(metadata={"description": "Whether it runs an annotator model of ANNOTATOR_DIR (depth, pose, segmentation)."})
    problem = fields.String(allow_none=True, metadata={"description": "Why it cannot run here; null: it can."})
    thresholds = fields.List(fields.Nested(ThresholdSchema), metadata={"description": "What threshold_a and threshold_b mean for it."})


class PreprocessorListSchema(Schema):
    annotator_dir = fields.String(metadata={"description": "ANNOTATOR_DIR: where the annotator models are looked for."})
    preprocessors = fields.List(fields.Nested(PreprocessorSchema))


class PreprocessResponseSchema(Schema):
    module = fields.String()
    width = fields.Integer()
    height = fields.Integer()
    image = fields.String(metadata={"description": "The control map, PNG, base64."})


class IpAdapterSchema(Schema):
    """One IP-Adapter in IP_ADAPTER_DIR (``GET /api/v1/ip-adapters``)."""

    name = fields.String(metadata={"description": "What a unit's name calls it: the file's name without .safetensors."})
    file = fields.String()
    usable = fields.Boolean()
    problem = fields.String(allow_none=True, metadata={"description": "Why it cannot be used (not an IP-Adapter, no image encoder)."})


class IpAdapterListSchema(Schema):
    ip_adapter_dir = fields.String()
    max_ip_adapters = fields.Integer(metadata={"description": "Most IP-Adapter units one request may use."})
    ip_adapters = fields.List(fields.Nested(IpAdapterSchema))


class UpscalerSchema(Schema):
    name = fields.String(required=True)
    kind = fields.String(required=True, validate=validate.OneOf(["builtin", "model"]))
    scale = fields.Integer(allow_none=True, metadata={"description": "The model's own scale (null: a resampler, any scale)."})
    architecture = fields.String(allow_none=True, metadata={"description": "As spandrel detects it (ESRGAN, SwinIR, ...)."})
    file = fields.String(allow_none=True)
    size = fields.Integer(allow_none=True)
    broken = fields.String(allow_none=True, metadata={"description": "Why the file cannot be used (null: usable)."})


class UpscalerListSchema(Schema):
    upscalers_dir = fields.String(required=True)
    upscalers = fields.List(fields.Nested(UpscalerSchema), required=True)


class ExtrasSingleImageResponseSchema(Schema):
    html_info = fields.String(required=True, metadata={"description": "What was done (A1111's infotext as HTML), and warnings."})
    image = fields.String(required=True, metadata={"description": "The PNG, base64."})


class ExtrasBatchImagesResponseSchema(Schema):
    html_info = fields.String(required=True)
    images = fields.List(fields.String(), required=True, metadata={"description": "The PNGs, base64, in the request's order."})
