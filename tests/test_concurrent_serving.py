"""One model served from many threads: every call returns what the same call returns alone,
adapter changes wait for the calls in flight, and training is refused while serving."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from peft import LoraConfig

from medadapt import ContinualVLM, DomainError, ServingError
from medadapt.tiny import tiny_base
from tests.conftest import build_tiny_vlm, make_image_list

pytestmark = pytest.mark.usefixtures("core_single_thread")

CLIP_DOMAINS = ["chest", "derm", "fundus", "histo", "knee"]


def _same(got, want) -> bool:
    if isinstance(want, torch.Tensor):
        return isinstance(got, torch.Tensor) and got.shape == want.shape and torch.equal(got, want)
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(_same(g, w) for g, w in zip(got, want))
    if hasattr(want, "probs"):  # RoutedPrediction
        return got.domain == want.domain and got.adapter == want.adapter and torch.equal(got.probs, want.probs)
    return got == want


def _wrong(call, reference) -> bool:
    """Whether ``call()`` does not return ``reference`` (an exception counts as a wrong result)."""
    try:
        return not _same(call(), reference)
    except Exception:  # noqa: BLE001 - e.g. another thread's adapter names reaching this call's layers
        return True


def _race(calls: list, threads: int, rounds: int = 1) -> list[int]:
    """Run every call from ``threads`` threads at once (each thread its own shuffled order, ``rounds``
    times) and return the indices of the calls whose result differed from the call run alone."""
    references = [call() for call in calls]
    barrier = threading.Barrier(threads)

    def worker(seed: int) -> list[int]:
        order = np.random.RandomState(seed).permutation(np.tile(np.arange(len(calls)), rounds))
        barrier.wait()
        return [int(i) for i in order if _wrong(calls[i], references[i])]

    with ThreadPoolExecutor(threads) as pool:
        return [i for wrong in pool.map(worker, range(threads)) for i in wrong]


def _routed_clip() -> tuple[ContinualVLM, list[np.ndarray]]:
    model = build_tiny_vlm("clip")
    rng = np.random.RandomState(0)
    shades = {d: (40 * k, 40 * k + 30) for k, d in enumerate(CLIP_DOMAINS)}
    train = {d: [rng.randint(lo, hi, (32, 32, 3), dtype=np.uint8) for _ in range(8)] for d, (lo, hi) in shades.items()}
    model.fit_router(train, threshold=0.99, fallback=None)
    return model, [imgs[0] for imgs in train.values()]


def _clip_calls(model: ContinualVLM, routed_images: list[np.ndarray], width: int = 3) -> list:
    """Calls of every kind on the tiny CLIP model, each on ``width`` images (mixed ones on twice that)."""
    images = make_image_list(6, seed=7)
    calls = []
    for i, domain in enumerate(CLIP_DOMAINS):  # one domain per call: the case of issue 21
        calls.append(lambda i=i, d=domain: model.predict_proba(images[i : i + width], d))
    for k in range(3):  # mixed-domain calls (gathered LoRA, prompt adapters, base rows)
        mixed = [CLIP_DOMAINS[(k + j) % 5] for j in range(2 * width)]
        calls.append(lambda m=mixed: model.predict_proba(images[: len(m)], m))
    calls.append(lambda: model.predict_proba(images[:width], "chest", adapter="generalist"))
    calls.append(lambda: model.predict_proba(routed_images[: 2 * width], "auto"))
    calls.append(lambda: model.embed_images(images[:2], adapter="chest"))
    calls.append(lambda: model.embed_images(images[:2]))
    calls.append(lambda: model.embed_images(images[:2], adapter="derm"))
    return calls


def test_four_threads_one_model_give_each_call_its_own_domain():
    """Issue 21, "Threads": predict_proba from 4 threads on one model returned other domains' results."""
    model, routed = _routed_clip()
    calls = _clip_calls(model, routed)
    assert _race(calls, threads=4, rounds=2) == []


def _llava() -> ContinualVLM:
    model = ContinualVLM(tiny_base("tiny-llava"))
    torch.manual_seed(0)
    targets = model.family.default_lora_targets(model.base_model)
    for name, labels, question in (("cxr", ["no", "yes"], "Is there pneumonia?"), ("organ", ["head", "chest", "abdomen"], "Which organ?")):
        model.add_domain(name, labels, f"{question} {{}}", adapter=LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False))
    return model


def test_generative_predict_proba_and_generate_from_four_threads():
    """Issue 21, "Threads": tiny LLaVA predict_proba and generate from 4 threads."""
    model = _llava()
    images = [np.random.RandomState(i).randint(0, 255, (36, 40, 3), dtype=np.uint8) for i in range(4)]
    calls = [
        lambda: model.predict_proba(images[:2], "cxr"),
        lambda: model.predict_proba(images[:2], "organ"),
        lambda: model.predict_proba(images, ["cxr", "organ", "organ", "cxr"]),
        lambda: model.generate(images[:2], domain="cxr", max_new_tokens=4),
        lambda: model.generate(images[:2], domain="organ", max_new_tokens=4),
        lambda: model.generate(images, domain=["organ", "cxr", "cxr", "organ"], max_new_tokens=4),
        lambda: model.generate(images[:1], questions="What is shown?", max_new_tokens=4),
    ]
    refs = [c() for c in calls]
    assert not _same(refs[0], refs[1][:, :2]) and refs[3] != refs[4] or refs[3] != refs[5][:2]  # adapters differ
    assert _race(calls, threads=4, rounds=2) == []


def test_stress_eight_threads_with_hot_loads_and_removals(tmp_path):
    """8 threads x 200 mixed calls against sequential references, while another thread loads and
    removes stages: no wrong result, every hot-loaded stage serves at once, removed ones are gone."""
    model, routed = _routed_clip()
    model.save_pretrained(tmp_path / "save")
    calls = _clip_calls(model, routed, width=1)
    references = [call() for call in calls]
    images = make_image_list(3, seed=11)
    chest_ref = model.predict_proba(images, "chest")
    wrong: list[int] = []
    loaded: list[str] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def hot_loader() -> None:
        try:
            i = 0
            while not stop.is_set():
                name = f"hot{i}"
                model.load_adapter(tmp_path / "save", name="chest", as_name=name)
                assert torch.equal(model.predict_proba(images, name), chest_ref)  # new calls see the new stage
                loaded.append(name)
                if i % 2:
                    model.remove_domain(name)
                    with pytest.raises(DomainError):
                        model.predict_proba(images, name)
                i += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    def worker(seed: int) -> list[int]:
        rng = np.random.RandomState(seed)
        return [int(i) for i in rng.randint(0, len(calls), 200) if _wrong(calls[i], references[i])]

    start = time.perf_counter()
    loader = threading.Thread(target=hot_loader)
    loader.start()
    with ThreadPoolExecutor(8) as pool:
        for result in pool.map(worker, range(8)):
            wrong.extend(result)
    stop.set()
    loader.join(60)
    assert not errors, errors
    assert wrong == []
    assert len(loaded) >= 2, "the hot loader never got a turn between the calls"
    assert [n for n in loaded if n in model.domains] == loaded[::2]
    assert time.perf_counter() - start < 120


def _paused_call(model: ContinualVLM, domain: str) -> tuple[threading.Thread, threading.Event, dict]:
    """Start ``predict_proba`` in a thread and pause it inside the image tower's forward."""
    entered, release, out = threading.Event(), threading.Event(), {}

    def hook(module, args, output):
        if threading.current_thread() is thread:
            entered.set()
            release.wait(30)

    handle = model.vision_tower.register_forward_hook(hook)
    images = make_image_list(2, seed=3)

    def run() -> None:
        try:
            out["probs"] = model.predict_proba(images, domain)
        except BaseException as exc:  # noqa: BLE001
            out["error"] = exc
        finally:
            handle.remove()

    thread = threading.Thread(target=run)
    thread.start()
    assert entered.wait(30)
    out["images"] = images
    return thread, release, out


def test_a_removal_waits_for_the_call_in_flight_which_finishes_on_its_own_set():
    model = build_tiny_vlm("clip")
    images = make_image_list(2, seed=3)
    reference = model.predict_proba(images, "chest")
    thread, release, out = _paused_call(model, "chest")
    remover = threading.Thread(target=model.remove_domain, args=("chest",))
    remover.start()
    time.sleep(0.3)
    assert remover.is_alive() and "chest" in model.domains  # waits for the call in flight
    release.set()
    thread.join(30)
    remover.join(30)
    assert "error" not in out and torch.equal(out["probs"], reference)
    assert "chest" not in model.domains
    with pytest.raises(DomainError):
        model.predict_proba(images, "chest")


def test_training_while_serving_is_refused_both_ways():
    model = build_tiny_vlm("clip")
    images = make_image_list(2, seed=3)
    thread, release, out = _paused_call(model, "histo")
    with pytest.raises(ServingError, match="cannot train this model while it serves"):
        model.set_trainable(["chest"])
    release.set()
    thread.join(30)
    assert "error" not in out

    model.set_trainable(["chest"])  # training in this thread
    model.predict_proba(images, "chest")  # its own evaluation is served
    seen: dict = {}

    def other() -> None:
        for what, call in (("serve", lambda: model.predict_proba(images, "chest")),
                           ("change", lambda: model.add_domain("new", ["a", "b"], "{}"))):
            try:
                call()
            except ServingError as exc:
                seen[what] = str(exc)

    t = threading.Thread(target=other)
    t.start()
    t.join(30)
    assert "trains in another thread" in seen.get("serve", "") and "trains in another thread" in seen.get("change", "")
    model.set_trainable([])
    t = threading.Thread(target=lambda: seen.update(after=model.predict_proba(images, "chest")))
    t.start()
    t.join(30)
    assert isinstance(seen["after"], torch.Tensor)


def test_changing_adapters_inside_a_served_call_is_a_clear_error():
    model = build_tiny_vlm("clip")
    handle = model.vision_tower.register_forward_hook(lambda *a: model.remove_domain("histo"))
    with pytest.raises(ServingError, match="from inside a served call"):
        model.predict_proba(make_image_list(1), "chest")
    handle.remove()
    assert "histo" in model.domains


def test_train_mode_is_refused_while_other_threads_serve_and_models_start_in_eval_mode():
    model = build_tiny_vlm("clip")
    assert not model.training  # served calls never flip module state on a fresh model
    thread, release, out = _paused_call(model, "chest")
    try:
        with pytest.raises(ServingError, match="switch the model to train mode"):
            model.train()
        assert not model.training
        model.eval()  # eval mode is what serving reads: allowed
    finally:
        release.set()
        thread.join(30)
    assert "error" not in out
    model.train()  # nobody serves now
    assert model.training and not model.base_model.training


def test_fit_router_waits_for_calls_in_flight_and_runs_alone():
    model = build_tiny_vlm("clip")
    rng = np.random.RandomState(0)
    train = {d: [rng.randint(40 * k, 40 * k + 30, (32, 32, 3), dtype=np.uint8) for _ in range(8)] for k, d in enumerate(CLIP_DOMAINS)}
    thread, release, out = _paused_call(model, "chest")
    fitter = threading.Thread(target=lambda: model.fit_router(train, fallback=None))
    fitter.start()
    time.sleep(0.3)
    assert fitter.is_alive() and "router" not in model.extras  # waits for the call in flight
    release.set()
    thread.join(30)
    fitter.join(60)
    assert "error" not in out and "router" in model.extras
