"""A1111's prompt syntax: the examples of A1111's own doctests (modules/prompt_parser.py,
parse_prompt_attention), BREAK, and the <lora:...> tags taken out of the prompt."""

from __future__ import annotations

import pytest

from sdxl_server.pipeline.prompt_syntax import BREAK, attention_problem, extract_loras, parse_attention, plain_runs


def as_lists(runs):
    return [[text, weight] for text, weight in runs]


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        # A1111's doctests, verbatim.
        ("normal text", [["normal text", 1.0]]),
        ("an (important) word", [["an ", 1.0], ["important", 1.1], [" word", 1.0]]),
        ("(unbalanced", [["unbalanced", 1.1]]),
        ("\\(literal\\]", [["(literal]", 1.0]]),
        ("(unnecessary)(parens)", [["unnecessaryparens", 1.1]]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [
                ["a ", 1.0],
                ["house", 1.5730000000000004],
                [" ", 1.1],
                ["on", 1.0],
                [" a ", 1.1],
                ["hill", 0.55],
                [", sun, ", 1.1],
                ["sky", 1.4641000000000006],
                [".", 1.1],
            ],
        ),
    ],
)
def test_a1111_doctest_examples(prompt, expected):
    assert as_lists(parse_attention(prompt)) == expected


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("((word))", [["word", pytest.approx(1.21)]]),
        ("[word]", [["word", pytest.approx(1 / 1.1)]]),
        ("[[word]]", [["word", pytest.approx(1 / 1.21)]]),
        ("a (word:1.5) b", [["a ", 1.0], ["word", 1.5], [" b", 1.0]]),
        ("(word: 0.8 )", [["word", 0.8]]),
        ("(word:-1)", [["word", -1.0]]),
        ("closing) only]", [["closing) only]", 1.0]]),
        ("time: 10:30", [["time: 10:30", 1.0]]),
        ("a \\\\ b", [["a \\ b", 1.0]]),
        ("", [["", 1.0]]),
    ],
)
def test_weights_and_text(prompt, expected):
    assert as_lists(parse_attention(prompt)) == expected


def test_a_malformed_weight_never_raises():
    runs = parse_attention("(a:1.2.3) b")
    assert "".join(text for text, _ in runs) == "a:1.2.3) b"


def test_break_splits_and_only_as_a_word():
    assert as_lists(parse_attention("a cat BREAK (a dog:1.2)")) == [
        ["a cat", 1.0], [BREAK, -1.0], ["", 1.0], ["a dog", 1.2]
    ]
    assert as_lists(parse_attention("BREAKFAST break")) == [["BREAKFAST break", 1.0]]


def test_plain_keeps_everything_as_text():
    assert plain_runs("(word:1.5) [x] BREAK") == [("(word:1.5) [x] BREAK", 1.0)]


def test_lora_tags_are_taken_out():
    text, tags = extract_loras("a cat <lora:ink:0.8>, <lora:Film Grain> <LORA:x:abc>")
    assert text == "a cat ,  "
    assert [(t.name, t.weight) for t in tags] == [("ink", 0.8), ("Film Grain", 1.0), ("x", None)]
    assert tags[0].text == "<lora:ink:0.8>"


def test_a1111_extra_network_form_with_two_weights():
    # <lora:name:te_weight:unet_weight> (A1111 >= 1.5): the first number is the weight.
    text, tags = extract_loras("<lora:ink:0.6:0.4>x")
    assert text == "x" and [(t.name, t.weight) for t in tags] == [("ink", 0.6)]


OVERFLOWING = ["(x:" + "9" * 400 + ")", "(" * 1999 + "x" + ")" * 1999, "(x:11)", "[x:-11]" + "(y:-10.5)", "(" * 26 + "x"]


@pytest.mark.parametrize("prompt", OVERFLOWING)
def test_a_weight_beyond_the_range_or_nesting_beyond_the_bound_is_a_problem(prompt):
    assert attention_problem(prompt) is not None


@pytest.mark.parametrize("prompt", ["(x:10)", "(x:-10)", "((((((masterpiece))))))", "(" * 24 + "x", "([" * 16 + "x", "a (b:0) c"])
def test_weights_within_the_range_are_no_problem(prompt):
    assert attention_problem(prompt) is None


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
@pytest.mark.parametrize("text", OVERFLOWING[:2])
async def test_an_overflowing_weight_is_refused_before_queueing_on_every_route(make_client, settings, field, text):
    """It answered 200 with an all-black image (an infinite weight makes the embedding NaN)."""
    client = await make_client(settings.replace(max_prompt_length=4000))
    body = {"prompt": "a cat", field: text}
    for path, status in (("/api/v1/generate", 422), ("/sdapi/v1/txt2img", 422), ("/v1/images/generations", 400)):
        extension = {"negative_prompt": text} if path.startswith("/v1") and field == "negative_prompt" else {}
        resp = await client.post(path, json={**body, **extension})
        assert resp.status == status, (path, await resp.text())
        error = await resp.json()
        named = error["error"]["param"] if path.startswith("/v1") else list(error["fields"])
        assert field in named and "Cannot be encoded" in str(error), (path, error)
    assert (await (await client.get("/api/v1/jobs")).json())["jobs"] == []  # none was queued
