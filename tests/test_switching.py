"""Which models stay loaded and where (MODEL_CACHE on the device, MODEL_RAM_CACHE in CPU RAM),
with the moves a GPU needs; pipelines stand in for diffusers' (they only record .to())."""

from __future__ import annotations

from sdxl_server.pipeline.lora_files import LoraCatalog
from sdxl_server.pipeline.loras import LoraAdapters
from sdxl_server.pipeline.sources import ModelSource
from sdxl_server.pipeline.switching import LoadedModel, ModelCache


class RecordingPipe:
    def __init__(self) -> None:
        self.moves: list[str] = []

    def to(self, device: str) -> RecordingPipe:
        self.moves.append(device)
        return self


def model(name: str, tmp_path) -> LoadedModel:
    loras = LoraAdapters(LoraCatalog(tmp_path), cache_size=1)
    return LoadedModel(name, ModelSource("folder", f"/models/{name}", "MODELS_DIR"), loras, pipe=RecordingPipe(), where="cuda")


def test_on_a_gpu_the_least_recent_go_to_ram_then_are_freed(tmp_path):
    cache = ModelCache(on_device=2, in_ram=1, device="cuda", movable=True)
    a, b, c = (model(n, tmp_path) for n in "abc")
    pipes = {m.name: m.pipe for m in (a, b, c)}
    cache.put(a)
    assert cache.where() == {"a": "cuda"}  # one more may stay on the device beside the running one
    cache.put(b)
    assert cache.where() == {"a": "cpu", "b": "cuda"} and pipes["a"].moves == ["cpu"]
    cache.put(c)
    assert cache.where() == {"b": "cpu", "c": "cuda"} and a.pipe is None  # a was freed
    back = cache.take("b")
    assert back is b and pipes["b"].moves == ["cpu", "cuda"] and back.where == "cuda"
    assert cache.take("a") is None


def test_without_caches_nothing_stays(tmp_path):
    cache = ModelCache(on_device=1, in_ram=0, device="cuda", movable=True)
    a = model("a", tmp_path)
    cache.put(a)
    assert cache.where() == {} and a.pipe is None


def test_on_a_cpu_nothing_moves(tmp_path):
    cache = ModelCache(on_device=1, in_ram=2, device="cpu", movable=False)
    a = model("a", tmp_path)
    a.where = "cpu"
    pipe = a.pipe
    cache.put(a)
    assert cache.take("a") is a and pipe.moves == []
