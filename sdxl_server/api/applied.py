"""What the compatible APIs do with every field of the requests they imitate.

A client written for AUTOMATIC1111 or OpenAI may send any field of their request models; a field
that would change the image and is silently dropped gives a picture the user did not ask for with
no hint why. So each field is listed here, per route, with what happens to it:

- ``APPLIED``: it changes the image (or the answer) as it does there;
- ``WARNED`` (A1111): not applied; when sent with a value that would change the image there it is
  named in ``info["warnings"]``, in the images' metadata (``warnings``) and in a WARNING log line;
- ``REFUSED`` (OpenAI, whose answer has no place for a warning): a 400 naming it, when its value
  asks for what this server cannot make (``background: "transparent"``);
- ``NO_EFFECT``: accepted; the image is the same whatever it says (``user``, ``save_images``,
  ``firstphase_width``...): OpenAI's are logged (INFO) when sent.

Field lists: A1111's ``modules/api/models.py`` (008a8e75) over ``modules/processing.py``
(0027ce1f, with 1.9's ``scheduler`` and ``hr_scheduler``); openai-python's
``types/image_generate_params.py`` (04448952), ``image_edit_params.py`` (01a7709e) and
``image_create_variation_params.py`` (04448952). tests/test_applied.py walks them all.
Never imports torch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ValidationFailed

log = logging.getLogger(__name__)

APPLIED, WARNED, REFUSED, NO_EFFECT = "applied", "warned", "refused", "no effect"
Asks = Callable[[Any, Mapping[str, Any]], bool]  # (the value sent, the whole body) -> asks for something


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _truthy(value: Any, body: Mapping[str, Any]) -> bool:
    return bool(value) and value not in ("None", "none", "false", "False", "0")


def _above(limit: float) -> Asks:
    return lambda value, body: (_number(value) or 0) > limit


def _other_than(*defaults: float) -> Asks:
    return lambda value, body: value is not None and _number(value) not in defaults


@dataclass(frozen=True)
class Rule:
    """A field's treatment; ``why`` says it to the client, ``asks`` whether a value sent asks for
    what is not done (WARNED, REFUSED; sending a default is no request)."""

    treatment: str
    why: str = ""
    asks: Asks = _truthy


def _rules(treatment: str, names: str, why: str = "") -> dict[str, Rule]:
    return {name: Rule(treatment, why) for name in names.split()}


# Options (override_settings) that change nothing here: where and how files are saved.
HARMLESS_OPTIONS = ("samples_format", "samples_save", "save_", "grid_", "outdir", "jpeg_quality", "export_for_4chan",
                    "enable_pnginfo", "do_not_add_watermark", "live_previews", "show_progress")
APPLIED_OPTIONS = ("sd_model_checkpoint", "CLIP_stop_at_last_layers")


def _unapplied_options(value: Any) -> list[str]:
    if not isinstance(value, dict):
        return []
    return [key for key in value if key not in APPLIED_OPTIONS and not str(key).startswith(HARMLESS_OPTIONS)]


# alwayson_scripts this server runs itself (ControlNet: api/a1111_controlnet.py), by lowercased name.
APPLIED_SCRIPTS = ("controlnet",)


def _enabled_scripts(value: Any) -> list[str]:
    """The ``alwayson_scripts`` entries that would run, and are not run here: args not empty, and
    not every unit disabled."""
    if not isinstance(value, dict):
        return []
    running = []
    for name, entry in value.items():
        args = entry.get("args") if isinstance(entry, dict) else entry
        if not args or str(name).lower() in APPLIED_SCRIPTS:
            continue
        units = [arg for arg in args if isinstance(arg, dict)] if isinstance(args, list) else []
        if units and len(units) == len(args) and not any(unit.get("enabled", True) for unit in units):
            continue
        running.append(str(name))
    return running


A1111_COMMON: dict[str, Rule] = {
    **_rules(APPLIED, "prompt negative_prompt seed sampler_name sampler_index scheduler batch_size n_iter steps cfg_scale "
                      "width height refiner_checkpoint refiner_switch_at send_images override_settings"),
    "styles": Rule(APPLIED),  # prompt styles (GET /sdapi/v1/prompt-styles)
    "subseed": Rule(NO_EFFECT, "only used with subseed_strength"),
    "subseed_strength": Rule(WARNED, "variation seeds are not supported", _above(0)),
    "seed_resize_from_h": Rule(WARNED, "resizing the seed is not supported", _above(0)),
    "seed_resize_from_w": Rule(WARNED, "resizing the seed is not supported", _above(0)),
    "restore_faces": Rule(WARNED, "face restoration is not available"),
    "tiling": Rule(WARNED, "tiling is not supported"),
    "eta": Rule(WARNED, "eta is not adjustable here (only 0 and 1, A1111's defaults, are taken)", _other_than(0, 1)),
    "s_min_uncond": Rule(WARNED, "sampler parameters are not adjustable", _other_than(0)),
    "s_churn": Rule(WARNED, "sampler parameters are not adjustable", _other_than(0)),
    "s_tmax": Rule(WARNED, "sampler parameters are not adjustable", _other_than(0)),
    "s_tmin": Rule(WARNED, "sampler parameters are not adjustable", _other_than(0)),
    "s_noise": Rule(WARNED, "sampler parameters are not adjustable", _other_than(1)),
    "disable_extra_networks": Rule(WARNED, "LoRA tags in the prompt are always applied"),
    "firstpass_image": Rule(WARNED, "a hires-fix first pass image is not supported"),
    "script_name": Rule(WARNED, "scripts are not available"),
    "alwayson_scripts": Rule(WARNED, "extensions' scripts are not available", lambda value, body: bool(_enabled_scripts(value))),
    "infotext": Rule(WARNED, "parameters are not read from an infotext"),
    **_rules(NO_EFFECT, "do_not_save_samples do_not_save_grid save_images", "every image is saved"),
    **_rules(NO_EFFECT, "override_settings_restore_afterwards comments force_task_id"),
    "script_args": Rule(NO_EFFECT, "only used with script_name"),
}
A1111_TXT2IMG: dict[str, Rule] = {
    **A1111_COMMON,
    # hires fix (api/a1111_hires.py); the hr_ fields and denoising_strength act with enable_hr
    **_rules(APPLIED, "enable_hr denoising_strength hr_scale hr_upscaler hr_second_pass_steps hr_resize_x hr_resize_y "
                      "hr_sampler_name hr_scheduler hr_prompt hr_negative_prompt"),
    "hr_checkpoint_name": Rule(WARNED, "the second pass runs on the first pass's model",
                               lambda value, body: str(value or "").strip().lower() not in ("", "none", "use same checkpoint")),
    **_rules(NO_EFFECT, "firstphase_width firstphase_height", "A1111 ignores them since 1.0 (hr_scale, hr_resize_x/y)"),
}
A1111_IMG2IMG: dict[str, Rule] = {
    **A1111_COMMON,
    **_rules(APPLIED, "init_images resize_mode denoising_strength mask mask_blur inpainting_fill inpaint_full_res "
                      "inpaint_full_res_padding inpainting_mask_invert include_init_images"),
    "image_cfg_scale": Rule(NO_EFFECT, "only instruct-pix2pix models use it"),
    "mask_blur_x": Rule(WARNED, "the mask is blurred by mask_blur on both axes",
                        lambda value, body: value is not None and _number(value) != _number(body.get("mask_blur", 4))),
    "mask_blur_y": Rule(WARNED, "the mask is blurred by mask_blur on both axes",
                        lambda value, body: value is not None and _number(value) != _number(body.get("mask_blur", 4))),
    "mask_round": Rule(WARNED, "the mask is always rounded", lambda value, body: value is False),
    "initial_noise_multiplier": Rule(WARNED, "the initial noise is not scaled", _other_than(1)),
    "latent_mask": Rule(WARNED, "a separate latent mask is not supported"),
}

_FACES = "face restoration is not available (no GFPGAN or CodeFormer here)"
A1111_EXTRAS: dict[str, Rule] = {  # extra-single-image and extra-batch-images (api/a1111_extras.py)
    **_rules(APPLIED, "image imageList resize_mode upscaling_resize upscaling_resize_w upscaling_resize_h upscaling_crop "
                      "upscaler_1 upscaler_2 extras_upscaler_2_visibility"),
    "gfpgan_visibility": Rule(WARNED, _FACES, _above(0)),
    "codeformer_visibility": Rule(WARNED, _FACES, _above(0)),
    "codeformer_weight": Rule(WARNED, _FACES, lambda value, body: (_number(body.get("codeformer_visibility")) or 0) > 0),
    "show_extras_results": Rule(NO_EFFECT, "the images are always answered, as A1111 does for these routes"),
    "upscale_first": Rule(NO_EFFECT, "without face restoration there is nothing to order the upscale against"),
}

_OPENAI_ANSWER: dict[str, Rule] = {
    **_rules(APPLIED, "prompt model n size response_format output_format output_compression stream partial_images"),
    "background": Rule(REFUSED, "transparent backgrounds cannot be made: ask for 'opaque' or 'auto'",
                       lambda value, body: value == "transparent"),
    "quality": Rule(NO_EFFECT, "echoed; the server's step count decides"),
    "moderation": Rule(NO_EFFECT, "this server moderates nothing"),
    "user": Rule(NO_EFFECT),
}
OPENAI_GENERATIONS: dict[str, Rule] = {**_OPENAI_ANSWER, "style": Rule(NO_EFFECT, "DALL-E 3's styles have no equivalent")}
OPENAI_EDITS: dict[str, Rule] = {
    **{name: rule for name, rule in _OPENAI_ANSWER.items() if name != "moderation"},
    **_rules(APPLIED, "image mask"),
    "images": Rule(REFUSED, "images by URL or file id cannot be fetched: send the image as a file", lambda value, body: True),
    "input_fidelity": Rule(NO_EFFECT, "the edit follows strength (0.75, 1 with a mask)"),
}
OPENAI_VARIATIONS: dict[str, Rule] = {
    **_rules(APPLIED, "image model n size response_format"), "user": Rule(NO_EFFECT),
}
TABLES: dict[str, dict[str, Rule]] = {
    "/sdapi/v1/txt2img": A1111_TXT2IMG, "/sdapi/v1/img2img": A1111_IMG2IMG, "/v1/images/generations": OPENAI_GENERATIONS,
    "/v1/images/edits": OPENAI_EDITS, "/v1/images/variations": OPENAI_VARIATIONS,
    "/sdapi/v1/extra-single-image": A1111_EXTRAS, "/sdapi/v1/extra-batch-images": A1111_EXTRAS,
}


def _said(name: str, value: Any) -> str:
    text = repr(value) if not isinstance(value, bool) else str(value).lower()
    return f"{name}: {text[:60]}"


def a1111_warnings(table: Mapping[str, Rule], body: Mapping[str, Any]) -> list[str]:
    """What ``body`` asks for that is not applied, one line per field (per script, per option)."""
    found = []
    for name, rule in table.items():
        if name not in body:
            continue
        value = body[name]
        if name == "override_settings":
            found += [f"override_settings.{key}: not applied (this option is not supported)" for key in _unapplied_options(value)]
        elif name == "alwayson_scripts" and rule.asks(value, body):
            found += [f"alwayson_scripts.{script}: not applied ({rule.why})" for script in _enabled_scripts(value)]
        elif rule.treatment == WARNED and rule.asks(value, body):
            found.append(f"{_said(name, value)} not applied ({rule.why})")
    if found:
        log.warning("A1111 request: not applied: %s", "; ".join(found))
    return found


def check_openai(table: Mapping[str, Rule], body: Mapping[str, Any]) -> None:
    """Refuse (400 naming it) the first field of ``body`` that asks for what cannot be made; log
    those accepted with no effect. OpenAI's answer has no place for a warning."""
    quiet = [name for name, rule in table.items() if rule.treatment == NO_EFFECT and body.get(name) not in (None, "")]
    if quiet:
        log.info("OpenAI images request: fields with no effect here: %s", ", ".join(quiet))
    for name, rule in table.items():
        if rule.treatment == REFUSED and name in body and rule.asks(body[name], body):
            raise ValidationFailed(f"{name}: {rule.why}", fields={name: [rule.why]})
